"""Speed of the results path: the summary table, the status query and ingestion.

What it measures, on synthetic data (random accuracies, nothing is trained):

* table: ``clipcl.results.tables.summarize`` over 1 000 000 evaluation rows (10 000 TIL chains
  of 10 x 10 tasks: 4 methods x 25 learning rates x 100 seeds), from an in-memory frame, and
  end to end: ``ResultsStore.eval_rows_frame`` (SQLite → pandas) + ``summarize`` + ``render``.
* status: ``ResultsStore.chain_progress`` for the same 10 000 chains.
* ingest: ``ResultsStore.ingest_root`` of 1 000 chain run directories written with the real
  ``RunDir`` API (10 tasks, 110 rows each incl. the zero-shot pass), chains recorded by a
  sweep first, as ``clipcl submit`` does; then again with nothing changed (all skipped).

With ``--store postgresql://...`` (or ``$CLIPCL_STORE``) every figure is measured a second
time on that PostgreSQL store (each root its own schema there; the bench's schemas are dropped
at the end), its lines marked ``[postgresql]``.

The 10 000-chain store is filled with direct SQL inserts (building 10 000 run directories would
only measure the file system). Each timing is the best of ``--repeats`` after one untimed
warm-up call (the first ingestion is timed once, cold). Ratios are to the goals
(table < 3 s, status < 1 s); below 1 meets the goal. No asserts.

    python bench/results_table.py [--chains 10000] [--tasks 10] [--ingest 1000] [--repeats 3]
                                  [--store URL]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clipcl.results.records import EvalRow, RunDir
from clipcl.results.store import ChainRecord, ResultsStore
from clipcl.results.tables import render, summarize

METHODS = ("finetune", "lwf", "zscl", "ewc")
LRS = tuple(float(x) for x in np.geomspace(1e-6, 1e-3, 25))


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), fn()  # untimed warm-up (page cache, imports)
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _records(n_chains: int, n_tasks: int) -> list[ChainRecord]:
    recs = []
    for k in range(n_chains):
        method, lr, seed = METHODS[k % 4], LRS[(k // 4) % 25], k // 100
        spec = {"benchmark": "synthetic", "method": {"name": method}, "train": {"lr": lr}}
        spec["seed"] = seed
        recs.append(
            ChainRecord(
                f"{k:012x}", method, "synthetic", "til", seed, {"train.lr": lr}, spec, n_tasks
            )
        )
    return recs


def _fill(store: ResultsStore, recs: list[ChainRecord], n_tasks: int) -> int:
    """Insert every chain's full T x T matrix (and finished tasks) with direct SQL."""
    rng = np.random.default_rng(0)
    names = [f"task{i}" for i in range(n_tasks)]
    conn = store._conn  # bench only: bulk insert without run directories
    if store.postgres:
        return _fill_pg(store, recs, n_tasks)
    conn.execute("BEGIN")
    for rec in recs:
        acc = rng.integers(0, 101, size=(n_tasks, n_tasks))
        conn.executemany(
            "INSERT INTO eval_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (rec.chain_id, t, i, names[t], names[i], int(acc[t, i]), 100, float(acc[t, i]))
                + (min(100, int(acc[t, i]) + 10),)  # correct5
                for t in range(n_tasks)
                for i in range(n_tasks)
            ],
        )
        conn.executemany(
            "INSERT INTO tasks (chain_id, task_index, name, finished_at, seconds) "
            "VALUES (?, ?, ?, ?, ?)",
            [(rec.chain_id, t, names[t], time.time(), 1.0) for t in range(n_tasks)],
        )
    labels = json.dumps({str(i): name for i, name in enumerate(["zeroshot", *names], start=-1)})
    conn.execute("UPDATE chains SET task_names_json = ?", (labels,))
    conn.execute("COMMIT")
    return len(recs) * n_tasks * n_tasks


def _fill_pg(store: ResultsStore, recs: list[ChainRecord], n_tasks: int) -> int:
    """:func:`_fill` on PostgreSQL, with COPY (row-by-row inserts would time the setup)."""
    rng = np.random.default_rng(0)
    names = [f"task{i}" for i in range(n_tasks)]
    raw = store._conn._raw
    labels = json.dumps({str(i): name for i, name in enumerate(["zeroshot", *names], start=-1)})
    with raw.transaction(), raw.cursor() as cur:
        with cur.copy("COPY eval_rows FROM STDIN") as copy:
            for rec in recs:
                acc = rng.integers(0, 101, size=(n_tasks, n_tasks))
                for t in range(n_tasks):
                    for i in range(n_tasks):
                        a = int(acc[t, i])
                        row = (rec.chain_id, t, i, names[t], names[i], a, 100, float(a))
                        copy.write_row((*row, min(100, a + 10)))  # correct5 last
        cols = "chain_id, task_index, name, finished_at, seconds"
        with cur.copy(f"COPY tasks ({cols}) FROM STDIN") as copy:
            for rec in recs:
                for t in range(n_tasks):
                    copy.write_row((rec.chain_id, t, names[t], time.time(), 1.0))
        cur.execute("UPDATE chains SET task_names_json = %s", (labels,))
    raw.execute("ANALYZE")
    return len(recs) * n_tasks * n_tasks


def _write_run_dirs(root: Path, recs: list[ChainRecord], n_tasks: int) -> None:
    rng = np.random.default_rng(1)
    names = [f"task{i}" for i in range(n_tasks)]
    for rec in recs:
        records = RunDir.of(root, rec.chain_id)
        records.run_dir.mkdir(parents=True)
        records.spec_path.write_text("{}")
        acc = rng.integers(0, 101, size=(n_tasks + 1, n_tasks))
        label = ["zeroshot", *names]
        records.append_rows(
            [
                EvalRow(rec.chain_id, t, label[t + 1], i, names[i], int(acc[t + 1, i]), 100)
                for t in range(-1, n_tasks)
                for i in range(n_tasks)
            ]
        )
        done = {
            str(t): {"checkpoint": None, "seconds": 1.0, "finished_at": 0.0} for t in range(n_tasks)
        }
        records.save_state({"completed": done, "zeroshot_done": True})


def _line(what: str, seconds: float, goal: float | None = None) -> str:
    ratio = f"   {seconds / goal:.3f} x goal (< {goal:g} s)" if goal else ""
    return f"{what:<58} {seconds:8.3f} s{ratio}"


def measure(tmp: Path, args: argparse.Namespace, url: str | None) -> list[str]:
    """The figures on one store (None: SQLite in the root; else the PostgreSQL URL)."""
    big, small = tmp / "big", tmp / "small"
    recs = _records(args.chains, args.tasks)
    kind = "postgresql" if url else "sqlite"
    with ResultsStore(big, url or "sqlite") as store:
        store.record_sweep("bench", None, {}, recs, provenance={})
        n_rows = _fill(store, recs, args.tasks)
        load_s, df = _best(store.eval_rows_frame, args.repeats)
        table_s, summary = _best(lambda: summarize(df), args.repeats)
        full_s, _ = _best(lambda: render(summarize(store.eval_rows_frame()), "md"), args.repeats)
        status_s, progress = _best(store.chain_progress, args.repeats)
    few = recs[: args.ingest]
    with ResultsStore(small, url or "sqlite") as store:
        store.record_sweep("bench", None, {}, few, provenance={})
        _write_run_dirs(small, few, args.tasks)
        t0 = time.perf_counter()
        ingested = store.ingest_root()
        ingest_s = time.perf_counter() - t0
        again_s, _ = _best(store.ingest_root, args.repeats)
    if url:
        _drop_schemas(url, (big, small))
    tag = f"[{kind}] "
    return [
        f"{tag}{n_rows:,} eval rows, {args.chains:,} chains, {len(summary)} summary rows",
        _line(f"{tag}summarize() of {len(df):,} rows (in-memory frame)", table_s, 3.0),
        _line(f"{tag}eval_rows_frame() alone ({kind} -> pandas)", load_s),
        _line(f"{tag}table end to end: eval_rows_frame + summarize + render md", full_s, 3.0),
        _line(f"{tag}chain_progress() of {len(progress):,} chains", status_s, 1.0),
        _line(f"{tag}ingest_root() of {ingested:,} new chain directories", ingest_s),
        _line(f"{tag}ingest_root() again, {args.ingest:,} unchanged chains", again_s),
    ]


def _drop_schemas(url: str, roots: tuple[Path, ...]) -> None:
    import psycopg

    from clipcl.results.pg import root_schema

    with psycopg.connect(url, autocommit=True) as conn:
        for root in roots:
            conn.execute(f"DROP SCHEMA IF EXISTS {root_schema(root)} CASCADE")
            conn.execute("DELETE FROM clipcl.roots WHERE schema_name = %s", (root_schema(root),))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chains", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--ingest", type=int, default=1_000, help="run directories to ingest")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--store",
        default=os.environ.get("CLIPCL_STORE"),
        help="also measure on this PostgreSQL store (default: $CLIPCL_STORE)",
    )
    args = parser.parse_args()
    for url in (None, args.store) if args.store else (None,):
        with tempfile.TemporaryDirectory() as tmp:
            for line in measure(Path(tmp), args, url):
                print(line, flush=True)


if __name__ == "__main__":
    main()
