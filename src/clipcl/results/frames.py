"""The pandas view of the results store: every eval row joined with its chain's description.

Owns :func:`eval_rows_frame` (what :func:`clipcl.results.load_results` returns and
:mod:`clipcl.results.tables` consumes) and its column names. pandas and numpy are imported on
first use, so importing the store stays light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipcl.results.schema import TASK_RECORD_COLUMNS, Conn, concat, sweep_filter

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = [
    "CHAIN_COLUMNS",
    "ROW_COLUMNS",
    "eval_rows_frame",
    "heldout_rows_frame",
    "intask_rows_frame",
    "task_seconds_frame",
]

# Core columns of eval_rows_frame(); a setting with one of these names is not repeated.
ROW_COLUMNS = (
    *("trained_task", "trained_name", "eval_task", "eval_name", "correct", "total", "top1"),
    *("correct5", "top5"),
)
CHAIN_COLUMNS = ("chain_id", "sweep", "method", "benchmark", "protocol", "seed")
_CORE = frozenset((*CHAIN_COLUMNS, *ROW_COLUMNS, "num_tasks", "config"))
_FIRST_SWEEP = "(SELECT MIN(s.sweep) FROM sweep_chains s WHERE s.chain_id = c.chain_id)"
# One eval row as one int64: tasks in 11 bits each (trained_task + 1), correct/total in 20.
_PACK = "((trained_task + 1) * 2048 + eval_task) * 1099511627776 + correct * 1048576 + total"
_FITS = (
    "trained_task BETWEEN -1 AND 2046 AND eval_task BETWEEN 0 AND 2047 "
    "AND correct BETWEEN 0 AND 1048575 AND total BETWEEN 0 AND 1048575 "
    "AND (correct5 IS NULL OR correct5 BETWEEN 0 AND 1048575)"
)
# The same row's top-5 count as a second int64: the tasks again, then correct5 + 1 (0: NULL).
_PACK5 = "((trained_task + 1) * 2048 + eval_task) * 2097152 + COALESCE(correct5, -1) + 1"


def _flat_settings(text: str) -> dict[str, Any]:
    """Settings as column values: lists and mappings become JSON text (hashable)."""
    return {
        k: json.dumps(v, sort_keys=True) if isinstance(v, list | dict) else v
        for k, v in json.loads(text).items()
    }


def _chains_frame(
    conn: Conn, path: Path | str, sweep: str | None
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """The chain columns of :func:`eval_rows_frame` (a row per chain, by id), task names."""
    import pandas as pd

    where, params = sweep_filter(conn, path, sweep)
    label = "?" if sweep is not None else _FIRST_SWEEP
    fetched = conn.execute(
        f"SELECT c.chain_id, {label}, c.method, c.benchmark, c.protocol, c.seed, "
        "c.num_tasks, c.config_hash, c.settings_json, c.task_names_json "
        f"FROM chains c {where} ORDER BY c.chain_id",
        params * 2,
    ).fetchall()
    cols = list(zip(*fetched, strict=True)) or [()] * 10
    frame = pd.DataFrame({k: pd.Series(cols[i], dtype=object) for i, k in enumerate(CHAIN_COLUMNS)})
    frame["seed"] = pd.array(cols[5], dtype="Int64")
    settings = pd.DataFrame([_flat_settings(text) for text in cols[8]], index=frame.index)
    frame = pd.concat([frame, settings[[k for k in sorted(settings) if k not in _CORE]]], axis=1)
    frame["num_tasks"] = pd.array(cols[6], dtype="Int64")
    frame["config"] = pd.Series(cols[7], dtype=object)
    return frame, [json.loads(text) for text in cols[9]]


def _row_arrays(
    conn: Conn, path: Path | str, sweep: str | None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Chain ids (sorted), rows per chain and the rows as int64 (n, 5): trained_task,
    eval_task, correct, total, correct5 (-1: none recorded), chain after chain.

    Each row is packed into two integers inside SQLite (a string per chain instead of a
    Python tuple per row: ~5x faster); values too large to pack use plain rows.
    """
    import numpy as np

    where, params = sweep_filter(conn, path, sweep, alias="e", check=False)
    first = concat(conn, f"CASE WHEN {_FITS} THEN {_PACK} END", " ")
    second = concat(conn, f"CASE WHEN {_FITS} THEN {_PACK5} END", " ")
    got = conn.execute(
        f"SELECT chain_id, COUNT(*), {first}, {second} "
        f"FROM eval_rows e {where} GROUP BY chain_id ORDER BY chain_id",
        params,
    ).fetchall()
    ids, counts = [r[0] for r in got], np.array([r[1] for r in got], dtype=np.int64)
    packed = np.fromstring(" ".join(r[2] for r in got if r[2]), dtype=np.int64, sep=" ")
    packed5 = np.fromstring(" ".join(r[3] for r in got if r[3]), dtype=np.int64, sep=" ")
    if len(packed) == len(packed5) == counts.sum():
        mask = (1 << 20) - 1
        rest = packed >> 40
        chain = np.repeat(np.arange(len(ids), dtype=np.int64) << 22, counts)
        order, order5 = chain + rest, chain + (packed5 >> 21)
        if not np.array_equal(order, order5):  # the aggregates listed a chain's rows apart
            packed = packed[np.argsort(order, kind="stable")]
            packed5 = packed5[np.argsort(order5, kind="stable")]
            rest = packed >> 40
        correct5 = (packed5 & ((1 << 21) - 1)) - 1
        cols = ((rest >> 11) - 1, rest & 2047, (packed >> 20) & mask, packed & mask, correct5)
        return ids, counts, np.stack(cols, axis=1)
    rows = conn.execute(
        "SELECT chain_id, trained_task, eval_task, correct, total, COALESCE(correct5, -1) "
        f"FROM eval_rows e {where} ORDER BY chain_id",
        params,
    ).fetchall()
    return ids, counts, np.array([r[1:] for r in rows], dtype=np.int64).reshape(-1, 5)


def eval_rows_frame(conn: Conn, path: Path | str, sweep: str | None = None) -> pd.DataFrame:
    """Every stored eval row joined with its chain's description.

    Columns: chain_id, sweep (None for chains of no sweep; the first sweep by name when
    ``sweep`` is None and a chain is in several), method, benchmark, protocol, seed, one
    column per dotted setting, num_tasks, config (hash of the spec without seed),
    trained_task (-1: zero-shot), trained_name, eval_task, eval_name, correct, total, top1,
    correct5, top5 (top-5 count and accuracy; <NA> / NaN in rows recorded without them).
    Rows are sorted by chain, trained task and eval task.

    Args:
        conn: The store's connection.
        path: The database file (named in errors).
        sweep: Only the chains of this sweep.

    Raises:
        ClipclError: If ``sweep`` is given and unknown.
    """
    import numpy as np
    import pandas as pd

    chains, names = _chains_frame(conn, path, sweep)
    ids, counts, arr = _row_arrays(conn, path, sweep)
    key = np.repeat(np.arange(len(ids)) << 22, counts) + ((arr[:, 0] + 1) << 11) + arr[:, 1]
    if len(key) and not (np.diff(key) > 0).all():  # SQLite gives them sorted in practice
        arr = arr[np.argsort(key, kind="stable")]
    at = np.repeat(pd.Index(chains["chain_id"]).get_indexer(ids), counts)
    width = 2 + max((int(k) for n in names for k in n), default=0)
    table = np.full((len(names), width), None, dtype=object)  # column k + 1: task k
    for i, mapping in enumerate(names):
        for k, name in mapping.items():
            table[i, int(k) + 1] = name
    frame = chains.take(at).reset_index(drop=True)
    tt, et, correct, total, correct5 = arr.T
    frame["trained_task"], frame["trained_name"] = tt, table[at, tt + 1]
    frame["eval_task"], frame["eval_name"] = et, table[at, et + 1]
    frame["correct"], frame["total"] = correct, total
    known = correct5 >= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        frame["top1"] = np.where(total > 0, 100.0 * correct / total, np.nan)
        frame["correct5"] = pd.array(np.where(known, correct5, 0), dtype="Int64")
        frame.loc[~known, "correct5"] = pd.NA
        frame["top5"] = np.where(known & (total > 0), 100.0 * correct5 / total, np.nan)
    return frame


def heldout_rows_frame(conn: Conn, path: Path | str, sweep: str | None = None) -> pd.DataFrame:
    """The held-out sets' rows (``eval.extra``), which the matrix never holds: columns
    chain_id, trained_task (-1: zero-shot), trained_name, eval_task (the set's position in
    eval.extra), dataset, correct, total, top1, correct5, top5; sorted by chain, task, set.

    Raises:
        ClipclError: If ``sweep`` is given and unknown.
    """
    import numpy as np
    import pandas as pd

    where, params = sweep_filter(conn, path, sweep, alias="h")
    got = conn.execute(
        "SELECT h.chain_id, h.trained_task, h.trained_name, h.eval_task, h.dataset, h.correct, "
        f"h.total, h.correct5 FROM heldout_rows h {where} "
        "ORDER BY h.chain_id, h.trained_task, h.eval_task",
        params,
    ).fetchall()
    columns = ["chain_id", "trained_task", "trained_name", "eval_task", "dataset", "correct"]
    frame = pd.DataFrame([tuple(r) for r in got], columns=[*columns, "total", "correct5"])
    frame["correct5"] = pd.array(frame["correct5"].tolist(), dtype="Int64")
    total = frame["total"].to_numpy(np.float64)
    c5 = frame["correct5"].to_numpy(np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        frame["top1"] = np.where(total > 0, 100.0 * frame["correct"] / total, np.nan)
        frame["top5"] = np.where(total > 0, 100.0 * c5 / total, np.nan)
    return frame


def intask_rows_frame(conn: Conn, path: Path | str, sweep: str | None = None) -> pd.DataFrame:
    """The in-task evaluations (``eval.interval_steps``), which no metric reads: columns
    chain_id, method, benchmark, seed, trained_task, trained_name, step, eval_task, eval_name,
    correct, total, top1, correct5, top5; sorted by chain, task, step and eval task.

    Raises:
        ClipclError: If ``sweep`` is given and unknown.
    """
    import numpy as np
    import pandas as pd

    where, params = sweep_filter(conn, path, sweep, alias="i")
    got = conn.execute(
        "SELECT i.chain_id, c.method, c.benchmark, c.seed, i.trained_task, c.task_names_json, "
        "i.step, i.eval_task, i.eval_name, i.correct, i.total, i.correct5 FROM intask_rows i "
        f"JOIN chains c ON c.chain_id = i.chain_id {where} "
        "ORDER BY i.chain_id, i.trained_task, i.step, i.eval_task",
        params,
    ).fetchall()
    columns = ["chain_id", "method", "benchmark", "seed", "trained_task", "trained_name"]
    columns += ["step", "eval_task", "eval_name", "correct", "total", "correct5"]
    rows = [list(r) for r in got]
    for r in rows:  # the trained task's name from the chain's task names
        r[5] = json.loads(r[5] or "{}").get(str(r[4]))
    frame = pd.DataFrame(rows, columns=columns)
    frame["correct5"] = pd.array(frame["correct5"].tolist(), dtype="Int64")
    total = frame["total"].to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        frame["top1"] = np.where(total > 0, 100.0 * frame["correct"] / total, np.nan)
        c5 = frame["correct5"].to_numpy(np.float64, na_value=np.nan)
        frame["top5"] = np.where(total > 0, 100.0 * c5 / total, np.nan)
    return frame


def task_seconds_frame(conn: Conn, path: Path | str, sweep: str | None = None) -> pd.DataFrame:
    """The finished tasks' wall times and throughput: columns chain_id, task_index, seconds,
    device, steps, samples, train_seconds, eval_seconds, eval_samples (None where the records
    had none), sorted by chain and task.

    Raises:
        ClipclError: If ``sweep`` is given and unknown.
    """
    import pandas as pd

    where, params = sweep_filter(conn, path, sweep, alias="t")
    columns = ["chain_id", "task_index", "seconds", *(c for c, _ in TASK_RECORD_COLUMNS)]
    rows = conn.execute(
        f"SELECT {', '.join(columns)} FROM tasks t {where} ORDER BY chain_id, task_index",
        params,
    ).fetchall()
    return pd.DataFrame(rows, columns=columns)
