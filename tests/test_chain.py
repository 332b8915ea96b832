"""The worker: a chain end to end, durability, resume after SIGKILL, corrupted checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipcl.errors import ClipclError
from clipcl.results.records import RunDir
from clipcl.workers import run_chain
from tests.helpers import tiny_spec

CLIPCL = [sys.executable, "-m", "clipcl.cli"]


def test_chain_records_full_matrix_and_zeroshot_row(tmp_path: Path) -> None:
    spec = tiny_spec()
    result = run_chain(spec, tmp_path / "run")
    assert result.tasks == ["colors", "shapes", "stripes"]
    assert result.matrix.shape == (3, 3) and not np.isnan(result.matrix).any()
    assert not np.isnan(result.zeroshot).any()
    assert set(result.metrics) >= {"transfer", "avg", "last"}
    rows = RunDir(tmp_path / "run").finished_rows()
    # 3 zero-shot rows + 3 trained tasks × 3 eval tasks; sample counts = test split sizes
    assert len(rows) == 12
    assert {r.total for r in rows} == {64}
    # The zero-shot pass is stored but is not a row of the matrix.
    assert sorted({r.trained_task for r in rows}) == [-1, 0, 1, 2]
    # Training on a task makes that task accurate (colour classification is easy).
    assert result.matrix[0, 0] > 80


def test_same_spec_same_numbers_and_rerun_trains_nothing(tmp_path: Path) -> None:
    spec = tiny_spec()
    a = run_chain(spec, tmp_path / "a")
    b = run_chain(spec, tmp_path / "b")
    np.testing.assert_array_equal(a.matrix, b.matrix)
    again = run_chain(spec, tmp_path / "a")
    assert again.trained_now == []
    np.testing.assert_array_equal(again.matrix, a.matrix)


def test_different_seed_gives_different_chain(tmp_path: Path) -> None:
    # (the same spec giving the same id across processes is the golden chain-id test's job)
    assert tiny_spec(seed=0).chain_id != tiny_spec(seed=1).chain_id


def test_corrupted_checkpoint_is_detected_and_its_task_recomputed(tmp_path: Path) -> None:
    spec = tiny_spec()
    run_dir = tmp_path / "run"
    first = run_chain(spec, run_dir)
    records = RunDir(run_dir)
    last = records.checkpoint_path(2)
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the middle
    last.write_bytes(bytes(data))

    second = run_chain(spec, run_dir)
    assert second.trained_now == [2]  # only the corrupted task was recomputed
    np.testing.assert_array_equal(second.matrix, first.matrix)
    events = records.load_state().events
    assert events[-1]["event"] == "bad_checkpoint" and events[-1]["task"] == 2


def test_missing_checkpoints_fall_back_to_earlier_task(tmp_path: Path) -> None:
    spec = tiny_spec()
    run_dir = tmp_path / "run"
    first = run_chain(spec, run_dir)
    records = RunDir(run_dir)
    records.checkpoint_path(2).unlink()
    records.checkpoint_path(1).write_bytes(b"truncated")
    second = run_chain(spec, run_dir)
    # Task 0's checkpoint was pruned (keep_checkpoints=2), so the chain restarts from scratch.
    assert second.trained_now == [0, 1, 2]
    np.testing.assert_array_equal(second.matrix, first.matrix)


def test_torn_last_row_line_is_ignored(tmp_path: Path) -> None:
    spec = tiny_spec()
    run_dir = tmp_path / "run"
    first = run_chain(spec, run_dir)
    with open(run_dir / "rows.jsonl", "a") as f:
        f.write('{"chain_id": "x", "trained_ta')  # a crash in the middle of a write
    np.testing.assert_array_equal(RunDir(run_dir).matrix(3)[0], first.matrix)
    assert run_chain(spec, run_dir).trained_now == []


def test_run_dir_of_another_chain_is_refused(tmp_path: Path) -> None:
    run_chain(tiny_spec(iterations=2), tmp_path / "run")
    with pytest.raises(ClipclError, match="holds chain"):
        run_chain(tiny_spec(iterations=3), tmp_path / "run")


def test_cil_protocol_evaluates_seen_tasks_among_seen_classes(tmp_path: Path) -> None:
    result = run_chain(tiny_spec(benchmark="test-cil"), tmp_path / "run")
    m = result.matrix
    assert np.isnan(m[np.triu_indices(3, k=1)]).all()  # unseen tasks are not evaluated
    assert not np.isnan(m[np.tril_indices(3)]).any()
    assert set(result.metrics) >= {"avg", "last", "forgetting", "bwt"}
    # After task 1 only 4 classes are seen; colour classification is then easy.
    assert m[0, 0] > 80
    rows = RunDir(tmp_path / "run").finished_rows()
    zs = [r for r in rows if r.trained_task == -1]
    assert len(zs) == 3  # the zero-shot pass covers every task, among all 12 classes


def _wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_sigkill_after_first_task_then_rerun_gives_identical_matrix(tmp_path: Path) -> None:
    args = [
        "chain",
        "run",
        "--model",
        "tiny",
        "--benchmark",
        "smoke",
        "--method",
        "finetune",
        "--set",
        "train.iterations=40",
        "--json",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = subprocess.run(
        [*CLIPCL, *args, "--root", str(tmp_path / "ref")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    ref = json.loads(reference.stdout)

    root = tmp_path / "killed"
    state = root / "chains" / ref["chain_id"] / "state.json"

    def finished() -> set[str]:
        try:
            return set(json.loads(state.read_text())["completed"])
        except (OSError, json.JSONDecodeError):
            return set()

    proc = subprocess.Popen(
        [*CLIPCL, *args, "--root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert _wait_for(lambda: "0" in finished(), timeout_s=120), "task 1 never finished"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert finished() != {"0", "1", "2"}, "killed too late to exercise resume"

    resumed = subprocess.run(
        [*CLIPCL, *args, "--root", str(root)], capture_output=True, text=True, env=env, check=True
    )
    assert "resuming after task" in resumed.stderr
    assert json.loads(resumed.stdout) == ref
