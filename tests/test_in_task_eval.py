"""``eval.interval_steps`` (issue 20): rows every N steps inside a task, kept apart from the
task rows (``intask.jsonl``, the store's ``intask_rows``) so no metric reads them; training is
bit-identical with and without them; ``interval_tasks: all``; a resumed chain gives the same
rows; chain ids at the default unchanged; bad values are one error line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipcl.models import load_checkpoint
from clipcl.results.records import RunDir
from clipcl.results.rows import ChainRecord
from clipcl.results.store import ResultsStore
from clipcl.workers import ChainSpec, run_chain
from tests.helpers import assert_same, clipcl_inprocess, tiny_spec


def _spec(benchmark: str = "smoke", method: dict | None = None, **eval_kw) -> ChainSpec:
    spec = tiny_spec(benchmark=benchmark, iterations=5)
    data = spec.model_dump(mode="json")
    if method is not None:
        data["method"] = method
    return ChainSpec.build({**data, "eval": {**data["eval"], **eval_kw}})


def test_rows_every_n_steps_of_the_current_task_and_training_unchanged(tmp_path: Path) -> None:
    # LoRA with dropout: were the model left in eval mode after an in-task evaluation, the
    # later steps would train without dropout and the weights would differ
    lora = {"name": "lora", "dropout": 0.5}
    plain, every2 = _spec(method=lora), _spec(method=lora, interval_steps=2)
    runs = {}
    for name, spec in (("plain", plain), ("every2", every2)):
        run = RunDir.of(tmp_path / name, spec.chain_id)
        runs[name] = (run, run_chain(spec, run.path, until_task=2))
    (p_run, p_res), (e_run, e_res) = runs["plain"], runs["every2"]
    np.testing.assert_array_equal(p_res.matrix, e_res.matrix)  # same training, same rows after
    assert_same(
        load_checkpoint(p_run.checkpoint_path(1), None)["model"],
        load_checkpoint(e_run.checkpoint_path(1), None)["model"],
        "model",
    )
    assert p_run.read_rows() and not p_run.read_intask_rows()
    assert sorted((r.trained_task, r.step, r.eval_task) for r in e_run.read_intask_rows()) == [
        (0, 2, 0),
        (0, 4, 0),
        (1, 2, 1),
        (1, 4, 1),
    ]  # steps 2 and 4 of 5 (step 5 is the task's own evaluation), the current task only
    assert {(r.trained_task, r.eval_task) for r in e_run.read_rows()} == {
        (r.trained_task, r.eval_task) for r in p_run.read_rows()
    }
    row = e_run.read_intask_rows()[0]
    assert row.correct5 is not None and 0 <= row.correct <= row.correct5 <= row.total
    # the step-2 row of task 0 differs from the task's final row: it is the model mid-way
    final = {(r.trained_task, r.eval_task): r for r in e_run.read_rows()}
    assert any(
        (r.correct, r.correct5)
        != (final[(r.trained_task, r.eval_task)].correct,)
        + (final[(r.trained_task, r.eval_task)].correct5,)
        for r in e_run.read_intask_rows()
    )


def test_all_tasks_and_the_store_keeps_them_apart_from_the_metrics(tmp_path: Path) -> None:
    spec = _spec(interval_steps=3, interval_tasks="all")
    run = RunDir.of(tmp_path, spec.chain_id)
    result = run_chain(spec, run.path)
    tasks = result.matrix.shape[0]
    rows = run.read_intask_rows()
    assert sorted({(r.trained_task, r.step) for r in rows}) == [(k, 3) for k in range(tasks)]
    assert len(rows) == tasks * tasks  # every task of this task-incremental benchmark
    with ResultsStore(tmp_path) as store:
        store.record_sweep(
            "s", None, {}, [ChainRecord.from_spec(spec.chain_id, run.read_spec())], {}
        )
        store.ingest_root(tmp_path)
        frame = store.intask_rows_frame("s")
        main = store.eval_rows_frame("s")
    assert len(frame) == len(rows) and set(frame["step"]) == {3}
    by_key = {(r.trained_task, r.step, r.eval_task): r for r in rows}
    for _, f in frame.iterrows():
        r = by_key[(f["trained_task"], f["step"], f["eval_task"])]
        assert (f["correct"], f["total"], f["correct5"]) == (r.correct, r.total, r.correct5)
        assert f["top1"] == pytest.approx(r.top1) and f["trained_name"] == r.trained_name
    assert len(main) == result.matrix.size + result.zeroshot.size  # no in-task row there
    from clipcl.results import load_results

    assert len(load_results(tmp_path, sweep="s", in_task=True)) == len(rows)


def test_cil_in_task_rows_are_among_the_seen_classes(tmp_path: Path) -> None:
    spec = _spec("test-cil", interval_steps=2, interval_tasks="all")
    run = RunDir.of(tmp_path, spec.chain_id)
    run_chain(spec, run.path, until_task=2)
    rows = run.read_intask_rows()
    assert sorted({(r.trained_task, r.eval_task) for r in rows}) == [(0, 0), (1, 0), (1, 1)]


def test_a_resumed_chain_writes_the_same_in_task_rows(tmp_path: Path) -> None:
    spec = _spec(interval_steps=2)
    straight = RunDir.of(tmp_path / "a", spec.chain_id)
    run_chain(spec, straight.path, until_task=2)
    resumed = RunDir.of(tmp_path / "b", spec.chain_id)
    run_chain(spec, resumed.path, until_task=1)
    run_chain(spec, resumed.path, until_task=2)

    def key(r):
        return (r.trained_task, r.step, r.eval_task, r.correct, r.total, r.correct5)

    assert sorted(map(key, straight.read_intask_rows())) == sorted(
        map(key, resumed.read_intask_rows())
    )


def test_chain_ids_stay_at_the_default_and_bad_values_are_errors(tmp_path: Path) -> None:
    assert _spec().chain_id == tiny_spec(iterations=5).chain_id
    assert _spec(interval_tasks="current").chain_id == _spec().chain_id
    assert _spec(interval_steps=2).chain_id != _spec().chain_id
    root = tmp_path / "root"
    for value, expected in (("0", "greater than or equal to 1"), ("x", "eval.interval_steps")):
        res = clipcl_inprocess(
            "chain", "run", "--model", "tiny", "--benchmark", "smoke", "--method", "finetune",
            "--root", root, "--set", f"eval.interval_steps={value}",
        )  # fmt: skip
        assert res.returncode == 2 and res.stdout == "", res.stdout
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0]
        assert "eval.interval_steps" in lines[0]
    assert not root.exists()


def test_in_task_row_file_skips_a_torn_last_line_and_names_a_bad_one(tmp_path: Path) -> None:
    """Last write wins per (task, step, set); a torn last line is skipped; a line before it that
    is not an in-task row (bad JSON, or a row without its step) is corrupt, named by number."""
    from clipcl.results.records import CorruptRecords, EvalRow

    run = RunDir(tmp_path / "c")
    run.path.mkdir(parents=True)

    def row(step: int | None, correct: int) -> str:
        return EvalRow("c", 0, "t0", 0, "t0", correct, 10, step=step).to_json()

    lines = [row(2, 1), row(4, 2), row(2, 3), '{"chain_id": "c", "trai']
    run.intask_path.write_text("".join(line + "\n" for line in lines))
    got = sorted((r.step, r.correct) for r in run.read_intask_rows())
    assert got == [(2, 3), (4, 2)]
    for bad in ("not json", row(None, 5)):
        run.intask_path.write_text("".join(x + "\n" for x in [row(2, 1), bad, row(4, 2)]))
        with pytest.raises(CorruptRecords, match="line 2 is not an in-task evaluation row"):
            run.read_intask_rows()
    run.intask_path.unlink()
    assert run.read_intask_rows() == []
