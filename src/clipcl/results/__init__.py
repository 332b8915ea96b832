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


def load_results(root: str | Path, sweep: str | None = None) -> pd.DataFrame:
    """All evaluation rows under a run root as one DataFrame.

    Opens ``<root>/clipcl.sqlite``, ingests chain records that workers wrote since the last
    ingestion, and returns :meth:`~clipcl.results.store.ResultsStore.eval_rows_frame`.

    Args:
        root: The run root (holding ``chains/`` and ``clipcl.sqlite``).
        sweep: Only the chains of this sweep.

    Returns:
        One row per (chain, trained task, eval task); see ``eval_rows_frame`` for the columns.

    Raises:
        ClipclError: If the root does not exist or the sweep is unknown.
    """
    from clipcl.results.store import ResultsStore

    root = Path(root)
    if not root.is_dir():
        raise ClipclError(f"no run root at {root} (expected a directory holding chains/)")
    with ResultsStore(root) as store:
        store.ingest_root()
        return store.eval_rows_frame(sweep)
