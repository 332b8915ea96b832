"""Training curves (``train.jsonl``, issue 18): what a chain writes, and that a resumed chain's
curve holds every step once with no point of a lost attempt. The mid-task resumes (SIGKILL,
signals, bad snapshots) compare their curves with an undisturbed run in test_snapshots.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipcl.results.curves import POINTS_PER_TASK, TrainLog, TrainPoint, every_for, read_points
from clipcl.results.records import CorruptRecords, RunDir
from clipcl.workers import run_chain
from clipcl.workers.train import lr_at
from tests.helpers import tiny_spec


def _point(task: int, step: int, loss: float = 1.0) -> str:
    return TrainPoint(task, step, 4, loss, 0.1, float(step), {"ce": loss}).to_json()


def _start(task: int, step: int) -> str:
    return json.dumps({"task": task, "start": step})


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _steps(points: list[TrainPoint]) -> list[tuple[int, int, float]]:
    return [(p.task, p.step, p.loss) for p in points]


def test_a_start_line_drops_the_lost_attempts_points(tmp_path: Path) -> None:
    lines = [_start(0, 0), *(_point(0, s) for s in range(1, 5))]
    lines += [_start(1, 0), _point(1, 1, 9.0), _point(1, 2, 9.0), _point(1, 3, 9.0)]
    # task 1 resumed from a snapshot at step 2: its step 3 (flushed, snapshot lost) is void
    lines += [_start(1, 2), _point(1, 3), _point(1, 4)]
    got = read_points(_write(tmp_path / "train.jsonl", lines))
    expected = [(0, s, 1.0) for s in range(1, 5)] + [(1, 1, 9.0), (1, 2, 9.0)]
    assert _steps(got) == expected + [(1, 3, 1.0), (1, 4, 1.0)]
    # task 0 retrained (its checkpoint was bad): task 0's and every later task's points go
    lines += [_start(0, 0), _point(0, 1, 5.0)]
    assert _steps(read_points(_write(tmp_path / "train.jsonl", lines))) == [(0, 1, 5.0)]


def test_torn_last_line_is_skipped_and_a_bad_line_before_it_is_corrupt(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.jsonl", [_start(0, 0), _point(0, 1), '{"task": 0, "st'])
    assert _steps(read_points(path)) == [(0, 1, 1.0)]
    _write(path, [_start(0, 0), "not json", _point(0, 1)])
    with pytest.raises(CorruptRecords, match="line 2 is not a training point"):
        read_points(path)
    assert read_points(tmp_path / "missing.jsonl") == []


def test_train_log_spacing_and_flush(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    assert every_for(10) == 1 and every_for(1000) == 1000 // POINTS_PER_TASK
    log = TrainLog(path, 0, 120)
    due = [s for s in range(1, 121) if log.due(s)]
    assert due == list(range(2, 121, 2))  # 60 points: every 2 steps (120 // 50)
    log.record(2, 1.5, 0.01, {"ce": 1.0, "extra": 0.5})
    assert read_points(path) == []  # buffered until flushed
    log.flush()
    (point,) = read_points(path)
    assert (point.step, point.steps, point.loss, point.terms) == (
        2,
        120,
        1.5,
        {"ce": 1.0, "extra": 0.5},
    )
    resumed = TrainLog(path, 0, 120, first_step=2)
    assert resumed.offset_s == point.seconds  # the seconds go on from the snapshot's point


def test_a_chain_writes_loss_terms_lr_and_seconds(tmp_path: Path) -> None:
    spec = tiny_spec("l2", iterations=6, l2=1.0)
    run_chain(spec, tmp_path, until_task=2)
    points = read_points(RunDir(tmp_path).train_path)
    assert [(p.task, p.step) for p in points] == [(k, s) for k in range(2) for s in range(1, 7)]
    for p in points:
        assert p.terms.keys() == {"ce", "extra", "l2"}  # l2: ZSCL's named term
        assert p.terms["extra"] == p.terms["l2"]
        assert p.loss == pytest.approx(p.terms["ce"] + p.terms["extra"], rel=1e-5, abs=1e-6)
        assert p.lr == lr_at(spec.train, p.step - 1, spec.train.lr, 6)
    for k in range(2):
        seconds = [p.seconds for p in points if p.task == k]
        assert seconds == sorted(seconds) and seconds[0] >= 0


def test_a_lost_task_trained_again_replaces_its_points(tmp_path: Path) -> None:
    """Task 1 finished but its state entry was lost (a crash before ``state.json``): the rerun
    trains it again and its points replace the first attempt's (here made recognisable)."""
    spec = tiny_spec("finetune", iterations=4)
    run_chain(spec, tmp_path, until_task=2)
    records = RunDir(tmp_path)
    reference = read_points(records.train_path)
    state = records.load_state()
    del state.completed[1]
    records.save_state(state)
    lines = [json.loads(line) for line in records.train_path.read_text().splitlines()]
    for line in lines:
        if line["task"] == 1 and "loss" in line:
            line["loss"] = 999.0  # the first attempt's points
    records.train_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert any(p.loss == 999.0 for p in read_points(records.train_path))
    result = run_chain(spec, tmp_path, until_task=2)
    assert result.trained_now == [1]
    again = read_points(records.train_path)
    assert [(p.task, p.step, p.loss, p.lr) for p in again] == [
        (p.task, p.step, p.loss, p.lr) for p in reference
    ]


def test_zscl_records_its_named_terms(tmp_path: Path) -> None:
    """ZSCL's extra loss is its ``l2`` and ``distill`` terms, recorded one by one."""
    spec = tiny_spec("zscl", iterations=3, reference_size=64, reference_batch_size=8)
    run_chain(spec, tmp_path, until_task=1)
    points = read_points(RunDir(tmp_path).train_path)
    assert [p.step for p in points] == [1, 2, 3]
    for p in points:
        assert p.terms.keys() == {"ce", "extra", "l2", "distill"}
        assert p.terms["extra"] == pytest.approx(p.terms["l2"] + p.terms["distill"], rel=1e-6)
        assert p.loss == pytest.approx(p.terms["ce"] + p.terms["extra"], rel=1e-5)
