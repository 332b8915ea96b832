"""Cost ahead: what each finished task records of its throughput, the store's copy (and the
upgrade of older stores), the estimate built from it and `clipcl plan`'s lines."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from clipcl.orchestrator.estimate import Measured, _Left, duration, estimate
from clipcl.results.records import RunDir
from clipcl.results.schema import SCHEMA_VERSION
from clipcl.results.store import ResultsStore
from clipcl.workers import run_chain
from tests.helpers import clipcl_inprocess, tiny_spec


def _measured(**kw) -> Measured:
    base = dict(
        method="finetune",
        arch="tiny",
        precision="fp32",
        device="cpu",
        benchmark="b",
        task_index=0,
        batch_size=32,
        epochs=None,
        steps=10,
        samples=320,
        train_seconds=3.2,
        eval_seconds=1.0,
        eval_samples=100,
        startup_seconds=None,
    )
    return Measured(**{**base, **kw})


def _left(**kw) -> _Left:
    base = dict(
        chain_id="c",
        method="finetune",
        trains=True,
        arch="tiny",
        precision="fp32",
        benchmark="b",
        batch_size=32,
        iterations=20,
        epochs=None,
        tasks=range(0, 2),
        kind="cpu",
        units=2,
    )
    return _Left(**{**base, **kw})


def test_estimate_is_samples_times_the_measured_rates() -> None:
    measured = [
        _measured(task_index=0, train_seconds=3.2, samples=320, eval_seconds=1.0, eval_samples=100),
        _measured(task_index=1, train_seconds=6.4, samples=320, eval_seconds=3.0, eval_samples=200),
        _measured(task_index=1, method="zscl", train_seconds=99.0, startup_seconds=5.0),
        _measured(task_index=0, device="NVIDIA H200", train_seconds=0.1, eval_seconds=0.01),
    ]
    cost = estimate([_left()], measured)
    # training: 9.6 s / 640 samples = 0.015 s per sample; evaluation: 4 s / 300 samples (the cpu
    # tasks of tiny; zscl's counts too, its 1 s / 100); startup: 5 s (zscl's, same model+device)
    per_train = (3.2 + 6.4) / 640
    per_eval = (1.0 + 3.0 + 1.0) / 400
    expected = 2 * 20 * 32 * per_train + (100 + 200) * per_eval + 5.0
    (chain,) = cost.chains
    assert chain.seconds == pytest.approx(expected)
    assert cost.device_hours() == {"cpu": pytest.approx(2 * expected / 3600)}
    assert cost.based_on == {"tiny on cpu": 3}  # the H200 task is another device type
    # on a GPU the H200 task alone is the measurement: no finetune rate elsewhere
    gpu = estimate([_left(kind="gpu", units=1)], measured).chains[0]
    assert gpu.seconds == pytest.approx(2 * 20 * 32 * 0.1 / 320 + 100 * 0.01 / 100 + 200 * 0.0001)


def test_the_startup_of_the_chains_own_benchmark_comes_first() -> None:
    free = dict(train_seconds=0.0, eval_seconds=0.0)  # only the startups cost anything
    measured = [
        _measured(benchmark="b", startup_seconds=5.0, **free),
        _measured(benchmark="b2", startup_seconds=50.0, **free),
        _measured(benchmark="b3", startup_seconds=None, **free),
    ]
    one = range(0, 1)
    got = [
        estimate([_left(benchmark=b, tasks=one)], measured).chains[0].seconds for b in ["b", "b3"]
    ]
    assert got == [5.0, pytest.approx(27.5)]  # b3 has none: the mean over every benchmark


def test_what_cannot_be_estimated_says_why() -> None:
    measured = [_measured(task_index=0), _measured(task_index=1)]
    cases = {
        "no task of nsp2 measured for tiny (fp32) on CPU": _left(method="nsp2"),
        "no evaluation measured for ViT-B-16 (fp32) on CPU": _left(arch="ViT-B-16"),
        "no evaluation measured for tiny (fp16) on GPU": _left(kind="gpu", precision="fp16"),
        "no finished task 2 of b to count its evaluation": _left(tasks=range(1, 3)),
        "no finished task 0 of b at batch size 32 to count its 3 epochs' steps": _left(
            iterations=None, epochs=3
        ),
    }
    for why, left in cases.items():
        (chain,) = estimate([left], measured).chains
        assert (chain.seconds, chain.why) == (None, why)
    # epochs: the steps a finished run of the same task and batch size recorded
    epochs = [_measured(task_index=k, epochs=3, steps=30, samples=960) for k in (0, 1)]
    (chain,) = estimate([_left(iterations=None, epochs=3)], epochs).chains
    assert chain.seconds == pytest.approx(2 * 30 * 32 * 3.2 / 960 + 2 * 100 * 0.01)
    # a method that never trains costs its evaluations only; a finished chain nothing
    zeroshot = estimate([_left(method="zeroshot", trains=False)], measured).chains[0]
    assert zeroshot.seconds == pytest.approx(2 * 100 * 0.01)
    done = estimate([_left(tasks=())], []).chains[0]
    assert done.seconds == 0.0
    lines = estimate([_left(), _left(chain_id="d", method="nsp2")], measured).lines()
    assert lines[0].startswith("time left: 0.01 CPU-hours for 1 of 2 unfinished chains")
    assert lines[1] == (
        "time left unknown for 1 chains: no task of nsp2 measured for tiny (fp32) on CPU (1 chains)"
    )
    assert [duration(s) for s in (45, 750, 3 * 3600)] == ["45 s", "12.5 min", "3.0 h"]


def test_each_task_records_its_throughput_and_the_store_keeps_it(tmp_path: Path) -> None:
    spec = tiny_spec(iterations=6)
    run_dir = tmp_path / "run"
    run_chain(spec, run_dir, until_task=2, started_at=time.time() - 3.0)
    run_chain(spec, run_dir)  # the resumed attempt: its first task records a startup too
    records = RunDir(run_dir)
    state = records.load_state()
    rows = records.read_rows()
    assert len(state.completed) == 3
    for k, task in state.completed.items():
        assert task.device == "cpu" and task.steps == 6 and task.samples == 6 * 32
        assert task.eval_samples == sum(r.total for r in rows if r.trained_task == k) > 0
        assert task.train_seconds > 0 and task.eval_seconds > 0
        assert task.train_seconds + task.eval_seconds <= task.seconds + 0.01
    starts = {k: t.startup_seconds for k, t in state.completed.items()}
    assert starts[0] is not None and starts[0] >= 3.0  # from the given start of the attempt
    assert starts[1] is None and starts[2] is not None  # the second attempt began at task 2
    with ResultsStore(tmp_path / "root") as store:
        store.ingest_chain(spec.chain_id, run_dir)
        got = store.task_seconds_frame()
        measured = store.measured_tasks()
    assert list(got["device"]) == ["cpu"] * 3 and list(got["steps"]) == [6] * 3
    assert list(got["eval_samples"]) == [state.completed[k].eval_samples for k in range(3)]
    assert [m["spec"]["method"]["name"] for m in measured] == ["finetune"] * 3
    assert measured[0]["startup_seconds"] == starts[0]


def test_an_older_store_gains_the_throughput_columns(tmp_path: Path) -> None:
    """A schema-2 file: its tasks table gains the columns, its rows are kept (NULL until the
    chain is ingested again)."""
    tmp_path.joinpath("root").mkdir()
    conn = sqlite3.connect(tmp_path / "root" / "clipcl.sqlite")
    conn.executescript(
        "CREATE TABLE tasks (chain_id TEXT NOT NULL, task_index INTEGER NOT NULL, name TEXT, "
        "finished_at REAL, seconds REAL, PRIMARY KEY (chain_id, task_index)) WITHOUT ROWID;"
        "INSERT INTO tasks VALUES ('old', 0, 't0', 1.0, 2.5); PRAGMA user_version = 2;"
    )
    conn.close()
    with ResultsStore(tmp_path / "root"):
        pass
    conn = sqlite3.connect(tmp_path / "root" / "clipcl.sqlite")
    columns = [r[1] for r in conn.execute("PRAGMA table_info(tasks)")]
    assert columns[:5] == ["chain_id", "task_index", "name", "finished_at", "seconds"]
    assert {"device", "steps", "samples", "train_seconds", "eval_samples"} <= set(columns)
    assert "startup_seconds" in columns
    assert conn.execute("SELECT seconds, device FROM tasks").fetchall() == [(2.5, None)]
    # issue 20 moved the store to schema 4 (top-5, in-task and held-out rows)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


@pytest.mark.slow
def test_plan_estimates_the_chains_left_from_a_finished_one(tmp_path: Path) -> None:
    base = "benchmarks: [smoke]\ntrain: {iterations: 4}\nroot: runs\n"
    one = tmp_path / "one.yaml"
    one.write_text("name: one\nmethods: {finetune: {}}\nseeds: [0]\n" + base)
    more = tmp_path / "more.yaml"
    more.write_text(
        "name: more\nmethods: {finetune: {}, lwf: {}}\nseeds: [0, 1, 2]\n"
        "resources: {cpus: 2}\n" + base
    )
    before = clipcl_inprocess("plan", more)
    assert before.returncode == 0, before.stderr
    assert "time left unknown for 6 chains: no evaluation measured for tiny (fp32) on CPU" in (
        before.stdout
    )
    ran = clipcl_inprocess("submit", one, "--backend", "local", "--follow")
    assert ran.returncode == 0, ran.stderr
    after = clipcl_inprocess("plan", more)
    text = " ".join(after.stdout.split())
    assert "time left: " in text and "CPU-hours for 2 of 5 unfinished chains" in text, text
    assert "measured on 3 tasks of tiny on cpu" in text
    assert "time left unknown for 3 chains: no task of lwf measured for tiny (fp32) on CPU" in text
    with ResultsStore(tmp_path / "runs") as store:
        tasks = store.measured_tasks()
    per_sample = sum(t["train_seconds"] for t in tasks) / sum(t["samples"] for t in tasks)
    per_eval = sum(t["eval_seconds"] for t in tasks) / sum(t["eval_samples"] for t in tasks)
    startup = sum(t["startup_seconds"] or 0 for t in tasks)  # the first task's only
    chain = sum(4 * 32 * per_sample + t["eval_samples"] * per_eval for t in tasks) + startup
    hours = f"{2 * 2 * chain / 3600:.2f} CPU-hours"  # 2 chains × 2 CPUs each
    assert f"time left: {hours}" in text, (hours, text)
