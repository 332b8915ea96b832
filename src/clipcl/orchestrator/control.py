"""What ``clipcl status`` and ``clipcl cancel`` do, beside :mod:`~clipcl.orchestrator.plan`.

``plan`` starts from a sweep file; these start from a run root and its store (a sweep may be
named by its file or by its name, or not at all): :func:`standing` is a root's chains as they
stand now (the schedulers asked, the records ingested, states no live owner backs corrected),
and :func:`cancel_chains` stops chains wherever they run. The command line only prints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipcl.errors import ClipclError
from clipcl.orchestrator.state import TERMINAL

#: A chain shown with this label has records that cannot be read.
CORRUPT = "corrupt"


def sweep_target(target: str | None) -> tuple[str | None, Path | None]:
    """A sweep named by its file or by its name: ``(name, file)`` (``(None, None)``: none)."""
    if target is None:
        return None, None
    path = Path(target)
    if path.suffix in {".yaml", ".yml"} or path.is_file():
        from clipcl.sweeps import load_sweep

        return load_sweep(path).name, path
    return target, None


def run_root(target: str | None, root: Path | None) -> Path:
    """The run root of a command: ``--root``, else the sweep file's, else ``./runs``."""
    _, path = sweep_target(target)
    if path is not None:
        from clipcl.orchestrator.plan import use_sweep_store
        from clipcl.sweeps import load_sweep

        sweep = load_sweep(path)
        root = root if root is not None else sweep.run_root(path)
        use_sweep_store(sweep, path, root)
        return root
    return root if root is not None else Path("runs")


def _need_store(root: Path) -> None:
    from clipcl.results.store import store_exists

    if not store_exists(root):
        raise ClipclError(f"no results store under {root} (submit a sweep first, or pass --root)")


@dataclass(frozen=True)
class Standing:
    """A root's chains (of one sweep or all) as they stand.

    Attributes:
        root: The run root.
        sweep: The sweep's name (``None``: every chain of the root).
        rows: The store's rows (``ChainRow``), in the store's order.
        corrupt: chain id → why its records cannot be read.
        changed: Whether asking the schedulers changed a state.
        warning: Why the schedulers could not be asked (``None``: they were, or none was due).
    """

    root: Path
    sweep: str | None
    rows: list[Any] = field(default_factory=list)
    corrupt: dict[str, str] = field(default_factory=dict)
    changed: bool = False
    warning: str | None = None

    def label(self, row: Any) -> str:
        """The row's state, or ``corrupt``."""
        return CORRUPT if row.chain_id in self.corrupt else str(row.state)

    def counts(self) -> dict[str, int]:
        """Chains per label, sorted by label."""
        return dict(sorted(Counter(self.label(r) for r in self.rows).items()))

    @property
    def settled(self) -> bool:
        """Every chain has ended (or cannot be read): nothing more will change by itself."""
        return all(self.label(r) in TERMINAL | {CORRUPT} for r in self.rows)

    def corrupt_shown(self) -> list[tuple[str, str]]:
        """(chain id, problem) of the corrupt chains among the rows, by chain id."""
        shown = {r.chain_id for r in self.rows}
        return sorted((c, p) for c, p in self.corrupt.items() if c in shown)


def check_sweep_recorded(root: Path, sweep: str | None) -> None:
    """Raise ``ClipclError`` unless ``root`` has a store (and it records ``sweep``, if named)."""
    from clipcl.results.store import ResultsStore

    _need_store(root)
    if sweep is not None:
        with ResultsStore(root) as store:
            store.check_sweep(sweep)


def standing(root: Path, sweep: str | None = None, *, ask_backends: bool = True) -> Standing:
    """The chains of ``root`` (of ``sweep``, if named) as they stand now.

    Asks the schedulers about the chains the store says are queued or running (when
    ``ask_backends``), ingests every chain's records, and records as failed a chain the store
    says runs that no live coordinator or worker runs (:func:`~clipcl.orchestrator.plan.
    reconcile_store`).

    Raises:
        ClipclError: The root has no store.
    """
    from clipcl.orchestrator.backends import refresh_store
    from clipcl.orchestrator.plan import reconcile_store
    from clipcl.results.store import ResultsStore

    _need_store(root)
    changed, warning = False, None
    with ResultsStore(root) as store:
        if ask_backends:
            before = {r.chain_id: r.state for r in store.chain_progress()}
            try:
                refresh_store(store, root)
            except ClipclError as exc:
                warning = f"cannot ask the scheduler about job states: {exc}"
            else:
                changed = before != {r.chain_id: r.state for r in store.chain_progress()}
        store.ingest_root(root)
        reconcile_store(store, root)
        return Standing(
            root, sweep, store.chain_progress(sweep), dict(store.corrupt), changed, warning
        )


def chains_of(target: str, root: Path) -> list[str]:
    """The chains a target names: a chain id under ``root``, or a sweep's (file or name).

    Raises:
        ClipclError: It names neither (or the root has no store to look the sweep up in).
    """
    from clipcl.results.records import RunDir, check_chain_id
    from clipcl.results.store import ResultsStore

    try:
        if RunDir.of(root, check_chain_id(target)).path.is_dir():
            return [target]
    except ClipclError:
        pass  # not a chain id: a sweep
    _need_store(root)
    name, _ = sweep_target(target)
    with ResultsStore(root) as store:
        ids = [r.chain_id for r in store.chain_progress(name)]
    if not ids:
        raise ClipclError(f"'{target}' is neither a chain under {root} nor a recorded sweep")
    return ids


@dataclass(frozen=True)
class Cancelled:
    """What :func:`cancel_chains` did.

    Attributes:
        chains: The chains recorded as cancelled (those that were new, queued or running).
        via_coordinator: How many of them their coordinators were asked to stop.
        scheduler_jobs: How many scheduler jobs were cancelled (``scancel``).
    """

    chains: list[str]
    via_coordinator: int
    scheduler_jobs: int


def cancel_chains(root: Path, ids: set[str]) -> Cancelled:
    """Stop the chains ``ids`` of ``root`` wherever they run (their finished tasks are kept):
    their coordinators are asked through request files, their scheduler jobs cancelled, and
    each one not yet ended is recorded as cancelled."""
    from clipcl.orchestrator.backends import cancel_backend_jobs
    from clipcl.orchestrator.coordinators import cancel_coordinators
    from clipcl.results.store import ResultsStore

    stopped = cancel_coordinators(root, ids)
    with ResultsStore(root) as store:
        asked = cancel_backend_jobs(store, root, ids)
        store.ingest_root(root)
        active = [
            r.chain_id
            for r in store.chain_progress()
            if r.chain_id in ids and r.state in {"queued", "running", "new"}
        ]
        store.set_states(active, "cancelled")
    return Cancelled(active, stopped, asked)
