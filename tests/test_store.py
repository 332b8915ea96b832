"""The SQLite results store: ingestion from durable records, states, progress, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from clipcl.durable import atomic_write_json
from clipcl.errors import ClipclError
from clipcl.results import provenance as provenance_module
from clipcl.results.records import EvalRow, RunDir
from clipcl.results.store import ChainRecord, ResultsStore, collect_provenance, config_hash

NAMES = ("a", "b", "c")
MATRIX = [[80, 30, 20], [70, 90, 25], [60, 80, 70]]


def spec_of(seed: int = 0, method: str = "finetune", lr: float = 1e-5) -> dict[str, Any]:
    return {"benchmark": "smoke", "method": {"name": method}, "seed": seed, "train": {"lr": lr}}


def write_chain(
    root: Path,
    chain_id: str,
    finished: int = 3,
    seed: int = 0,
    matrix: list[list[int]] = MATRIX,
    spec: dict[str, Any] | None = None,
) -> RunDir:
    """A fake run directory: spec.json, zero-shot rows and ``finished`` tasks (correct of 100)."""
    records = RunDir(root / "chains" / chain_id)
    records.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(records.spec_path, spec or spec_of(seed))
    zero = [EvalRow(chain_id, -1, "zeroshot", i, n, 10 + i, 100) for i, n in enumerate(NAMES)]
    records.append_rows(zero)
    state: dict[str, Any] = {"completed": {}, "zeroshot_done": True}
    for t in range(finished):
        row = matrix[t]
        records.append_rows(
            [EvalRow(chain_id, t, NAMES[t], i, n, row[i], 100) for i, n in enumerate(NAMES)]
        )
        state["completed"][str(t)] = {"checkpoint": None, "seconds": 2.5, "finished_at": 100.0 + t}
    records.save_state(state)
    return records


def record(chain_id: str, seed: int = 0, **settings: Any) -> ChainRecord:
    return ChainRecord(chain_id, "finetune", "smoke", "til", seed, settings, spec_of(seed), 3)


def rows_of(store: ResultsStore, chain_id: str) -> list[tuple[Any, ...]]:
    return store._conn.execute(
        "SELECT chain_id, trained_task, eval_task, trained_name, eval_name, correct, total, top1 "
        "FROM eval_rows WHERE chain_id = ? ORDER BY trained_task, eval_task",
        (chain_id,),
    ).fetchall()


def test_open_creates_wal_database(tmp_path: Path) -> None:
    root = tmp_path / "new" / "root"
    with ResultsStore(root) as store:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 30_000
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"sweeps", "chains", "sweep_chains", "tasks", "eval_rows", "provenance"} <= tables
    assert (root / "clipcl.sqlite").is_file()
    ResultsStore(root).close()  # reopening an existing store is fine


def test_ingest_is_idempotent(tmp_path: Path) -> None:
    write_chain(tmp_path, "c0")
    with ResultsStore(tmp_path) as store:
        assert store.ingest_chain("c0", tmp_path / "chains" / "c0") == 12
        first = rows_of(store, "c0")
        assert store.ingest_chain("c0", tmp_path / "chains" / "c0") == 12
        assert rows_of(store, "c0") == first
        assert store.ingest_root() == 0  # unchanged since the last ingestion: skipped
        frame = store.eval_rows_frame()
    assert len(frame) == 12 and frame["top1"].tolist()[3:6] == [80.0, 30.0, 20.0]
    assert (0, 1, "a", "b", 30, 100, 30.0) in [r[1:] for r in first]


def test_unrecorded_chain_is_recorded_from_its_spec(tmp_path: Path) -> None:
    write_chain(tmp_path, "c0", seed=7)
    write_chain(tmp_path, "c1", finished=1)
    (tmp_path / "chains" / "not-a-chain").mkdir()
    with ResultsStore(tmp_path) as store:
        assert store.ingest_root(tmp_path) == 2
        chain = store.chain("c0")
        assert chain is not None
        assert (chain.method, chain.benchmark, chain.seed) == ("finetune", "smoke", 7)
        assert (chain.protocol, chain.num_tasks, chain.state) == ("til", 3, "done")
        assert chain.finished == 102.0 and chain.settings == {}
        assert store.chain("c1").state == "new"  # type: ignore[union-attr]
        assert set(store.eval_rows_frame()["sweep"]) == {None}


def test_rewritten_row_last_write_wins(tmp_path: Path) -> None:
    records = write_chain(tmp_path, "c0")
    with ResultsStore(tmp_path) as store:
        store.ingest_root()
        records.append_rows([EvalRow("c0", 1, "b", 2, "c", 33, 100)])  # re-evaluated
        assert store.ingest_root() == 1
        frame = store.eval_rows_frame()
    cell = frame[(frame["trained_task"] == 1) & (frame["eval_task"] == 2)]
    assert cell["correct"].tolist() == [33] and len(frame) == 12


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    records = write_chain(tmp_path, "c0")
    with open(records.rows_path, "a") as f:
        f.write('{"chain_id": "c0", "trained_task": 2, "eval_ta')  # crash mid-append
    with ResultsStore(tmp_path) as store:
        assert store.ingest_chain("c0", records.run_dir) == 12
        assert rows_of(store, "c0")[-1][1:] == (2, 2, "c", "c", 70, 100, 70.0)


def test_rows_of_unfinished_or_recomputed_tasks_leave(tmp_path: Path) -> None:
    records = write_chain(tmp_path, "c0")
    records.append_rows([EvalRow("c0", 3, "d", 0, "a", 1, 100)])  # task in progress
    with ResultsStore(tmp_path) as store:
        assert store.ingest_chain("c0", records.run_dir) == 12
        state = records.load_state()
        del state.completed[2]  # task 2's checkpoint was bad: it will be recomputed
        records.save_state(state)
        assert store.ingest_chain("c0", records.run_dir) == 9
        assert store.chain_progress()[0].tasks_done == 2


def test_frame_with_values_too_large_to_pack(tmp_path: Path) -> None:
    records = write_chain(tmp_path, "c0")
    records.append_rows([EvalRow("c0", 0, "a", 1, "b", 1_500_000, 3_000_000)])
    with ResultsStore(tmp_path) as store:
        store.ingest_root()
        frame = store.eval_rows_frame()
    big = frame[frame["total"] > 100]
    assert big[["trained_task", "eval_task", "correct"]].values.tolist() == [[0, 1, 1_500_000]]
    assert big["top1"].tolist() == [50.0] and len(frame) == 12
    assert frame["trained_name"].tolist()[:4] == ["zeroshot"] * 3 + ["a"]


def test_state_transitions(tmp_path: Path) -> None:
    with ResultsStore(tmp_path) as store:
        store.record_sweep("s", "s.yaml", {"a": 1}, [record("c0"), record("c1")], provenance={})
        assert store.chain("c0").state == "new"  # type: ignore[union-attr]
        store.set_states(["c0", "c1"], "queued", backend="local")
        c0 = store.chain("c0")
        assert c0 and c0.state == "queued" and c0.backend == "local" and c0.submitted
        store.set_state("c0", "running", job_id="pid-1", count_attempt=True)
        c0 = store.chain("c0")
        assert c0 and c0.started and c0.job_id == "pid-1" and c0.backend == "local"
        store.set_state("c0", "failed", error="CUDA out of memory")
        c0 = store.chain("c0")
        assert c0 and c0.error == "CUDA out of memory" and c0.finished >= c0.started
        store.set_state("c0", "queued")
        store.set_state("c0", "running", count_attempt=True)
        c0 = store.chain("c0")
        assert c0 and c0.attempts == 2 and c0.error is None and c0.finished is None
        store.set_state("c0", "done")
        assert store.chain("c0").finished is not None  # type: ignore[union-attr]
        with pytest.raises(ClipclError, match="unknown chain state 'finished'"):
            store.set_state("c0", "finished")
        with pytest.raises(ClipclError, match="unknown chain 'nope'"):
            store.set_states(["c1", "nope"], "running")
        assert store.chain("c1").state == "queued"  # type: ignore[union-attr]  # rolled back


def test_record_sweep_is_idempotent(tmp_path: Path) -> None:
    with ResultsStore(tmp_path) as store:
        store.record_sweep("s", "s.yaml", {"x": 1}, [record("c0", lr=1e-5)], provenance={"k": 1})
        store.set_state("c0", "running", count_attempt=True)
        created = store.sweeps()[0].created
        time.sleep(0.01)
        chains = [record("c0", lr=1e-5), record("c1", seed=1, lr=1e-5)]
        store.record_sweep("s", "s.yaml", {"x": 1}, chains, provenance={"k": 2})
        store.record_sweep("t", "t.yaml", {}, chains[:1], provenance={})
        sweeps = store.sweeps()
        assert [(s.name, s.chains) for s in sweeps] == [("s", 2), ("t", 1)]
        assert sweeps[0].created == created < sweeps[0].updated
        assert [(r.chain_id, r.state, r.attempts) for r in store.chain_progress("s")] == [
            ("c0", "running", 1),
            ("c1", "new", 0),
        ]
        assert store.chain_progress("t")[0].settings == {"lr": 1e-5}
        assert store.provenance("sweep", "s") == {"k": 2}
        count = store._conn.execute("SELECT COUNT(*) FROM chains").fetchone()[0]
    assert count == 2


def test_record_sweep_refuses_a_second_file_with_the_same_name(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")
    with ResultsStore(tmp_path) as store:
        store.record_sweep("s", a, {"x": 1}, [record("c0")], provenance={})
        with pytest.raises(ClipclError) as info:
            store.record_sweep("s", b, {"x": 2}, [record("c1")], provenance={})
        message = str(info.value)
        assert a in message and b in message and "rename" in message, message
        assert [r.chain_id for r in store.chain_progress("s")] == ["c0"]  # nothing merged
        store.record_sweep("s", a, {"x": 1}, [record("c0")], provenance={})  # re-submission
        store.record_sweep("s", a, {"x": 3}, [record("c0"), record("c2")], provenance={})  # edit
        store.record_sweep("s", b, {"x": 3}, [record("c0")], provenance={})  # a copy of it
        assert [r.chain_id for r in store.chain_progress("s")] == ["c0", "c2"]


def test_chain_progress_counts(tmp_path: Path) -> None:
    for k, finished in enumerate([0, 1, 3]):
        write_chain(tmp_path, f"c{k}", finished=finished, seed=k)
    with ResultsStore(tmp_path) as store:
        store.record_sweep("s", None, {}, [record("c0"), record("c1", seed=1)], provenance={})
        store.ingest_root()
        everything = store.chain_progress()
        assert [(r.chain_id, r.tasks_done, r.num_tasks) for r in everything] == [
            ("c0", 0, 3),
            ("c1", 1, 3),
            ("c2", 3, 3),
        ]
        assert [r.state for r in everything] == ["new", "new", "done"]
        assert [r.chain_id for r in store.chain_progress("s")] == ["c0", "c1"]
        assert store.chain_progress("unknown") == []


def test_eval_rows_frame_columns_and_sweep_filter(tmp_path: Path) -> None:
    write_chain(tmp_path, "c0")
    write_chain(tmp_path, "c1", seed=1)
    with ResultsStore(tmp_path) as store:
        chains = [record("c0", **{"train.lr": 1e-5, "method.grid": [1, 2]}), record("c1")]
        store.record_sweep("lr-sweep", None, {}, chains, provenance={})
        store.ingest_root()
        frame = store.eval_rows_frame("lr-sweep")
        with pytest.raises(ClipclError, match="unknown sweep.*'lr-swep'.*did you mean 'lr-sweep'"):
            store.eval_rows_frame("lr-swep")
    assert list(frame.columns) == [
        *("chain_id", "sweep", "method", "benchmark", "protocol", "seed"),
        *("method.grid", "train.lr", "num_tasks", "config"),
        *("trained_task", "trained_name", "eval_task", "eval_name", "correct", "total", "top1"),
        *("correct5", "top5"),  # issue 20: top-5 beside top-1
    ]
    assert set(frame["sweep"]) == {"lr-sweep"} and len(frame) == 24
    assert frame.loc[0, "train.lr"] == 1e-5 and frame.loc[0, "method.grid"] == "[1, 2]"
    assert frame["train.lr"].isna().sum() == 12
    assert frame["config"].nunique() == 1  # equal but for the seed


def _ingest_worker(root: str, prefix: str, n: int) -> int:
    """Run in another process (spawned: this module keeps its imports light for it): record a
    sweep and ingest its chains into the shared store."""
    with ResultsStore(Path(root)) as store:
        ids = [f"{prefix}{k}" for k in range(n)]
        store.record_sweep(prefix, None, {}, [record(c) for c in ids], provenance={})
        store.set_states(ids, "running", count_attempt=True)
        for _ in range(2):  # more overlapping write transactions
            for c in ids:
                store.ingest_chain(c, Path(root) / "chains" / c)
        return sum(store.ingest_chain(c, Path(root) / "chains" / c) for c in ids)


def test_processes_write_concurrently(tmp_path: Path) -> None:
    prefixes = ["p", "q", "r", "s"]
    for prefix in prefixes:
        for k in range(6):
            write_chain(tmp_path, f"{prefix}{k}")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(prefixes)) as pool:  # the store file does not exist yet
        counts = pool.starmap(_ingest_worker, [(str(tmp_path), p, 6) for p in prefixes])
    assert counts == [72] * 4
    with ResultsStore(tmp_path) as store:
        progress = store.chain_progress()
        assert len(progress) == 24 and {r.state for r in progress} == {"done"}
        assert len(store.eval_rows_frame()) == 288


def test_provenance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provenance_module, "_PACKAGE_DIR", tmp_path)  # not a git checkout
    info = collect_provenance({"b": 1, "a": [1, 2]})
    assert json.loads(json.dumps(info)) == info  # plain JSON
    assert info["git_commit"] is None and info["git_dirty"] is None
    assert info["versions"]["clipcl"] and set(info["versions"]) >= {"torch", "open_clip_torch"}
    assert info["config_hash"] == collect_provenance({"a": [1, 2], "b": 1})["config_hash"]
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    with ResultsStore(tmp_path) as store:
        store.record_sweep("s", None, {"b": 1, "a": [1, 2]}, [record("c0")])
        assert store.provenance("sweep", "s")["config_hash"] == info["config_hash"]
        store.record_provenance("chain", "c0", {"host": "n1", "device": "H100"})
        assert store.provenance("chain", "c0") == {"device": "H100", "host": "n1"}
    assert config_hash(spec_of(0)) == config_hash(spec_of(1)) != config_hash(spec_of(0, lr=1))


def test_load_results(tmp_path: Path) -> None:
    import clipcl
    from clipcl.results import load_results
    from clipcl.results.tables import summarize

    write_chain(tmp_path, "c0")
    write_chain(tmp_path, "c1", seed=1, matrix=[[82, 34, 22], [72, 88, 28], [62, 78, 74]])
    with ResultsStore(tmp_path) as store:
        store.record_sweep("s", None, {}, [record("c0")], provenance={})
    frame = clipcl.load_results(tmp_path)  # ingests rows written since
    assert len(frame) == 24 and summarize(frame)["seeds"].tolist() == [2]
    assert summarize(frame)["transfer_mean"].tolist() == pytest.approx([27.875])
    assert set(load_results(tmp_path, sweep="s")["chain_id"]) == {"c0"}
    with pytest.raises(ClipclError, match="no run root"):
        load_results(tmp_path / "missing")


def test_import_clipcl_stays_light() -> None:
    code = (
        "import sys, clipcl, clipcl.results; assert clipcl.__version__;"
        "heavy = {'pandas', 'torch', 'numpy'} & set(sys.modules); assert not heavy, heavy;"
        "assert callable(clipcl.load_results)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_schema_from_newer_clipcl_is_refused(tmp_path: Path) -> None:
    ResultsStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "clipcl.sqlite") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(ClipclError, match="schema version 99"):
        ResultsStore(tmp_path)


def test_spec_json_is_required_to_record_unknown_chains(tmp_path: Path) -> None:
    records = write_chain(tmp_path, "c0")
    records.spec_path.write_text("{not json")
    with ResultsStore(tmp_path) as store, pytest.raises(ClipclError, match="chain c0"):
        store.ingest_chain("c0", records.run_dir)
