"""Ingesting the chains' durable records into the results store, idempotently.

:mod:`clipcl.results.records` stays the source of truth: ingesting a chain again always
converges the store to its records (rows of tasks no longer finished leave), and a root is
re-ingested only where a chain's records changed since (a signature of its state and rows
files). The functions here work on a store's connection; :class:`ResultsStore` calls them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

from clipcl.errors import ClipclError
from clipcl.results.records import ZEROSHOT, EvalRow, RunDir, TaskRecord
from clipcl.results.rows import ChainRecord
from clipcl.results.schema import TASK_RECORD_COLUMNS, Conn, upsert_chain, write

__all__ = ["ingest_chain", "ingest_root", "signature"]


def signature(records: RunDir) -> str:
    """Changes whenever the chain's state, rows, in-task or held-out rows change (atomic
    replace, append); a chain without the later two files keeps the signature it had before
    they existed."""
    parts = []
    for path in (records.state_path, records.rows_path):
        try:
            st = path.stat()
            parts.append(f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
        except FileNotFoundError:
            parts.append("-")
    for path in (records.intask_path, records.heldout_path):  # only there when used
        try:
            st = path.stat()
            parts.append(f"{path.name}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
        except FileNotFoundError:
            pass
    return "|".join(parts)


def ingest_chain(conn: Conn, chain_id: str, run_dir: Path) -> int:
    """Upsert a chain's finished eval rows and tasks from its run directory.

    Rows of tasks no longer finished (a recomputed task) are removed, so the store always
    mirrors :meth:`RunDir.finished_rows`. A chain unknown to the store is recorded
    from its ``spec.json``. When every task is finished (the number of tasks from the store,
    else from the chain's records) the chain becomes ``done``.

    Returns:
        The number of eval rows stored for the chain.

    Raises:
        ClipclError: If the run directory's records cannot be read.
    """
    records = RunDir(run_dir)
    sig = signature(records)  # before reading: a later write changes it again
    try:
        state = records.verified_state()  # one snapshot of the finished tasks
        rows = records.read_rows(state)  # a superseded attempt's rows never count
        intask = records.read_intask_rows()
        heldout = records.read_heldout_rows(state)
        known = conn.execute("SELECT 1 FROM chains WHERE chain_id = ?", (chain_id,))
        spec = None if known.fetchone() else json.loads(records.spec_path.read_text())
    except (OSError, ValueError) as exc:
        msg = f"cannot read the records of chain {chain_id} in {run_dir}: {exc}"
        raise ClipclError(msg) from None
    completed = state.completed
    done = set(completed) | ({ZEROSHOT} if state.zeroshot_done else set())
    rows = [r for r in rows if r.trained_task in done]
    heldout = [r for r in heldout if r.trained_task in done]
    with write(conn) as c:
        if spec is not None:
            upsert_chain(c, ChainRecord.from_spec(chain_id, spec), replace=False)
        _put_rows(c, chain_id, completed, rows, done)
        _put_intask_rows(c, chain_id, intask)
        _put_heldout_rows(c, chain_id, heldout)
        last = max((v.finished_at or 0 for v in completed.values()), default=0)
        stored = c.execute("SELECT num_tasks FROM chains WHERE chain_id = ?", (chain_id,))
        num_tasks = stored.fetchone()[0]
        num_tasks = num_tasks if num_tasks is not None else state.num_tasks
        if num_tasks is not None and len(completed) >= num_tasks:
            c.execute(
                "UPDATE chains SET state = 'done', finished = ?, error = NULL, "
                "num_tasks = COALESCE(num_tasks, ?) WHERE chain_id = ? AND state != 'done'",
                (last or time.time(), num_tasks, chain_id),
            )
        else:  # a chain recorded done whose records no longer say so (rows lost): not done
            c.execute(
                "UPDATE chains SET state = 'failed', error = ? WHERE chain_id = ? "
                "AND state = 'done'",
                (
                    f"only {len(completed)} tasks have their rows in {records.rows_path}; "
                    "submit again to recompute the rest",
                    chain_id,
                ),
            )
        # every worker start is an attempt (Ray retries and Slurm requeues included)
        c.execute(
            "UPDATE chains SET ingest_sig = ?, attempts = CASE WHEN attempts > ? THEN attempts "
            "ELSE ? END WHERE chain_id = ?",
            (sig, records.newest_attempt(), records.newest_attempt(), chain_id),
        )
        query = "SELECT COUNT(*) FROM eval_rows WHERE chain_id = ?"
        return int(c.execute(query, (chain_id,)).fetchone()[0])


def _put_rows(
    c: Conn,
    chain_id: str,
    completed: Mapping[int, TaskRecord],
    rows: list[EvalRow],
    done: set[int],
) -> None:
    """Upsert tasks, eval rows and task names; drop those of tasks no longer finished."""
    names = {r.eval_task: r.eval_name for r in rows}
    names.update({r.trained_task: r.trained_name for r in rows})
    extra = [name for name, _ in TASK_RECORD_COLUMNS]
    updated = ("name", "finished_at", "seconds", *extra)
    updates = ", ".join(f"{col} = excluded.{col}" for col in updated)
    c.executemany(
        "INSERT INTO tasks (chain_id, task_index, name, finished_at, seconds, "
        f"{', '.join(extra)}) VALUES ({', '.join('?' * (5 + len(extra)))}) "
        f"ON CONFLICT (chain_id, task_index) DO UPDATE SET {updates}",
        [
            (chain_id, k, names.get(k), v.finished_at, v.seconds)
            + tuple(getattr(v, name) for name in extra)
            for k, v in completed.items()
        ],
    )
    c.executemany(
        "INSERT INTO eval_rows (chain_id, trained_task, eval_task, trained_name, eval_name, "
        "correct, total, top1, correct5) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (chain_id, trained_task, eval_task) DO UPDATE SET "
        "trained_name = excluded.trained_name, eval_name = excluded.eval_name, "
        "correct = excluded.correct, total = excluded.total, top1 = excluded.top1, "
        "correct5 = excluded.correct5",
        [
            (chain_id, r.trained_task, r.eval_task, r.trained_name, r.eval_name)
            + (r.correct, r.total, r.top1 if r.total else None, r.correct5)
            for r in rows
        ],
    )
    # rows of tasks no longer finished leave (plain statements: the same SQL on PostgreSQL)
    have = c.execute("SELECT task_index FROM tasks WHERE chain_id = ?", (chain_id,)).fetchall()
    gone = [(chain_id, k) for (k,) in have if k not in completed]
    c.executemany("DELETE FROM tasks WHERE chain_id = ? AND task_index = ?", gone)
    query = "SELECT DISTINCT trained_task FROM eval_rows WHERE chain_id = ?"
    gone = [(chain_id, k) for (k,) in c.execute(query, (chain_id,)).fetchall() if k not in done]
    c.executemany("DELETE FROM eval_rows WHERE chain_id = ? AND trained_task = ?", gone)
    stored = c.execute("SELECT task_names_json FROM chains WHERE chain_id = ?", (chain_id,))
    merged = json.loads((stored.fetchone() or ("{}",))[0] or "{}")
    for k, v in sorted(names.items()):  # a JSON merge patch: a null name removes the key
        if v is None:
            merged.pop(str(k), None)
        else:
            merged[str(k)] = v
    c.execute(
        "UPDATE chains SET task_names_json = ? WHERE chain_id = ?",
        (json.dumps(merged, separators=(",", ":")), chain_id),
    )


def _put_intask_rows(c: Conn, chain_id: str, rows: list[EvalRow]) -> None:
    """The chain's in-task rows become exactly ``rows`` (its records are the truth)."""
    c.execute("DELETE FROM intask_rows WHERE chain_id = ?", (chain_id,))
    c.executemany(
        "INSERT INTO intask_rows (chain_id, trained_task, step, eval_task, eval_name, correct, "
        "total, correct5) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (chain_id, r.trained_task, r.step, r.eval_task, r.eval_name, r.correct, r.total)
            + (r.correct5,)
            for r in rows
        ],
    )


def _put_heldout_rows(c: Conn, chain_id: str, rows: list[EvalRow]) -> None:
    """The chain's held-out rows become exactly ``rows`` (of finished tasks)."""
    c.execute("DELETE FROM heldout_rows WHERE chain_id = ?", (chain_id,))
    c.executemany(
        "INSERT INTO heldout_rows (chain_id, trained_task, eval_task, trained_name, dataset, "
        "correct, total, correct5) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (chain_id, r.trained_task, r.eval_task, r.trained_name, r.eval_name, r.correct)
            + (r.total, r.correct5)
            for r in rows
        ],
    )


def ingest_root(conn: Conn, root: Path, corrupt: dict[str, str] | None = None) -> int:
    """Ingest every chain directory with a ``spec.json`` under ``<root>/chains/``.

    Chains whose records did not change since their last ingestion are skipped. With
    ``corrupt``, a chain whose records cannot be read is put there (chain id → why) and the
    others are ingested; without, it raises.

    Returns:
        The number of chains (re)ingested.
    """
    chains_dir = RunDir.chains_dir(root)
    if not chains_dir.is_dir():
        return 0
    sigs = dict(conn.execute("SELECT chain_id, ingest_sig FROM chains").fetchall())
    count = 0
    for run_dir in sorted(chains_dir.iterdir()):
        records = RunDir(run_dir)
        if not records.has_spec():
            continue
        if run_dir.name in sigs and sigs[run_dir.name] == signature(records):
            continue
        try:
            ingest_chain(conn, run_dir.name, run_dir)
        except ClipclError as exc:  # one chain's bad records never take the root down
            if corrupt is None:
                raise
            corrupt[run_dir.name] = str(exc)
            continue
        count += 1
    return count
