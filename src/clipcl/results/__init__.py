"""Results: durable chain records, metrics, the SQLite results store and paper tables.

Importing this package is cheap; :func:`load_results` imports pandas on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clipcl.errors import ClipclError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["load_results"]


def load_results(
    root: str | Path | None = None,
    sweep: str | None = None,
    store: str | None = None,
    in_task: bool = False,
    held_out: bool = False,
) -> pd.DataFrame:
    """Evaluation rows as one DataFrame: of one run root, or of every root a PostgreSQL store
    holds.

    With ``root``, opens the root's store (its SQLite file, or the PostgreSQL store it uses;
    ``store`` names one), ingests chain records that workers wrote since the last ingestion,
    and returns :meth:`~clipcl.results.store.ResultsStore.eval_rows_frame`. With ``store``
    and no ``root``, every root of that PostgreSQL store (:func:`clipcl.results.pg.roots`)
    is read, a ``root`` column first: roots whose directory is on this machine are ingested
    first, the others are read as the store has them.

    Args:
        root: The run root (holding ``chains/``).
        sweep: Only the chains of this sweep.
        store: A PostgreSQL store URL (``postgresql://USER@HOST[:PORT]/DB``).
        in_task: The root's in-task evaluations instead (``eval.interval_steps``; see
            ``intask_rows_frame``), which no metric reads.
        held_out: The root's held-out sets' rows instead (``eval.extra``; see
            ``heldout_rows_frame``).

    Returns:
        One row per (chain, trained task, eval task); see ``eval_rows_frame`` for the columns.

    Raises:
        ClipclError: If the root does not exist, the store cannot be opened, or the sweep is
            unknown (across roots: in every root).
    """
    from clipcl.results.store import ResultsStore

    if root is None:
        if store is None:
            raise ClipclError("load_results needs a run root, or store= a PostgreSQL URL")
        if in_task or held_out:
            raise ClipclError("load_results(in_task=/held_out=True) needs a run root")
        from clipcl.results.store import all_rows_frame

        return all_rows_frame(store, sweep)
    root = Path(root)
    if not root.is_dir():
        raise ClipclError(f"no run root at {root} (expected a directory holding chains/)")
    with ResultsStore(root, store) as the_store:
        the_store.ingest_root()
        if held_out:
            return the_store.heldout_rows_frame(sweep)
        return the_store.intask_rows_frame(sweep) if in_task else the_store.eval_rows_frame(sweep)
