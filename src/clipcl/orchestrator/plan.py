"""``plan(sweep_file, root) -> Plan``: what a sweep's chains have done and what is left to do.

The plan expands the sweep, reads each chain's progress from its records on disk, finds the
chains a live coordinator or a live scheduler job owns, and judges each chain's state with
:func:`~clipcl.orchestrator.state.reconcile`. ``clipcl plan``, ``submit``, ``retry`` and
``sbatch`` print or act on a plan; the detached coordinator is handed the plan's chains;
``status`` and ``cancel`` start from a run root instead (:mod:`~clipcl.orchestrator.control`,
with this module's :func:`judge` and :func:`reconcile_store`).
Planning never writes anything unless asked to refresh what schedulers say (``ask_backends``).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipcl.errors import ClipclError
from clipcl.orchestrator.state import ACTIVE, Reconciled, reconcile
from clipcl.results.records import RunDir

#: Sweeps with more chains than this are submitted only when the user confirms (``--yes``).
CONFIRM_ABOVE_CHAINS = 20_000

#: Store states that stand in for a job nobody is asked about (the plan shows them).
_REMEMBERED = frozenset({"running", "queued", "failed", "cancelled"})


@dataclass(frozen=True)
class PlannedChain:
    """One chain of a plan.

    Attributes:
        entry: The chain as the sweep expands it (spec, method, benchmark, seed, settings).
        state: Its state, judged from its records and what the store remembers of its jobs.
        owner: Who runs it now: ``coordinator pid N`` or ``<backend> job ID`` (``None``: nobody).
        owner_kind: ``coordinator`` or ``scheduler`` (``None``: nobody).
        problem: Why its records cannot be read (``None``: they can); such a chain is never
            dispatched until the user moves its directory away.
    """

    entry: Any  # ChainEntry
    state: Reconciled
    owner: str | None = None
    owner_kind: str | None = None
    problem: str | None = None

    @property
    def label(self) -> str:
        """The state for tables: ``corrupt`` when its records cannot be read."""
        return "corrupt" if self.problem else self.state.label

    @property
    def chain_id(self) -> str:
        return str(self.entry.chain_id)

    @property
    def num_tasks(self) -> int:
        return int(self.state.num_tasks or 0)

    @property
    def tasks_done(self) -> int:
        return self.state.tasks_done

    @property
    def finished(self) -> bool:
        return self.state.finished

    @property
    def to_dispatch(self) -> bool:
        """Unfinished, owned by nobody and with readable records."""
        return not self.finished and self.owner is None and self.problem is None


@dataclass(frozen=True)
class WorkLeft:
    """Training still to do: task trainings, iterations and task-epochs."""

    tasks: int = 0
    iterations: int = 0
    epochs: int = 0

    def describe(self) -> str:
        amounts = [f"{self.tasks} task trainings"]
        if self.iterations or not self.epochs:
            amounts.append(f"{self.iterations} iterations")
        if self.epochs:
            amounts.append(f"{self.epochs} task-epochs")
        return ", ".join(amounts)


@dataclass
class Plan:
    """A sweep's chains with their progress and owners, under one run root."""

    sweep: Any  # SweepFile
    source: str
    root: Path
    chains: list[PlannedChain] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.sweep.name)

    @property
    def unfinished(self) -> list[PlannedChain]:
        return [c for c in self.chains if not c.finished]

    @property
    def todo(self) -> list[PlannedChain]:
        """The chains to dispatch: unfinished and owned by nobody."""
        return [c for c in self.chains if c.to_dispatch]

    def owned(self, kind: str) -> list[PlannedChain]:
        """Unfinished chains owned by a ``coordinator`` or a ``scheduler`` job."""
        return [c for c in self.unfinished if c.owner_kind == kind]

    def counts(self) -> dict[str, int]:
        """Chains per state word (``done``, ``new``, ``partial``, ``failed``, ...)."""
        return dict(sorted(Counter(c.label.split(" ")[0] for c in self.chains).items()))

    @property
    def corrupt(self) -> list[PlannedChain]:
        """Chains whose records cannot be read."""
        return [c for c in self.chains if c.problem]

    def work_left(self) -> WorkLeft:
        """Training left in every unfinished chain of a method that trains."""
        tasks = iters = epochs = 0
        for c in self.chains:
            if c.entry.spec.method_name == "zeroshot" or c.problem:
                continue
            left = c.num_tasks - c.tasks_done
            tasks += left
            iters += left * (c.entry.spec.train.iterations or 0)
            epochs += left * (c.entry.spec.train.epochs or 0)
        return WorkLeft(tasks, iters, epochs)

    def cost_ahead(self) -> Any:
        """The time the unfinished chains still need (``CostAhead``), estimated from the
        throughput finished tasks recorded in the run root's store (none: nothing measured)."""
        from clipcl.orchestrator.estimate import estimate, left_of, measured_from
        from clipcl.results.store import ResultsStore, store_exists

        measured: list[Any] = []
        if store_exists(self.root):
            with ResultsStore(self.root) as store:
                measured = measured_from(store.measured_tasks())
        resources = self.sweep.resources
        return estimate([left_of(c, resources) for c in self.chains], measured)

    def records(self) -> list[Any]:
        """Every chain as the store records it (``ChainRecord``)."""
        return [chain_record(c.entry) for c in self.chains]

    def run_dir(self, chain: PlannedChain) -> RunDir:
        return RunDir.of(self.root, chain.chain_id)


def chain_record(entry: Any) -> Any:
    """The store's record of a sweep entry (``ChainRecord``)."""
    from clipcl.data import benchmark_info
    from clipcl.results.store import ChainRecord

    info = benchmark_info(entry.benchmark)
    return ChainRecord(
        entry.chain_id,
        entry.method,
        entry.benchmark,
        info.protocol,
        entry.seed,
        dict(entry.settings),
        entry.spec.model_dump(mode="json"),
        len(info.task_names),
    )


def load_entries(sweep_file: Path, root: Path | None = None) -> tuple[Any, list[Any], Path]:
    """(sweep, its expanded entries, the run root) of a sweep file."""
    from clipcl.sweeps import expand, load_sweep

    sweep = load_sweep(sweep_file)
    entries = expand(sweep, str(sweep_file))
    root = Path(root) if root is not None else sweep.run_root(sweep_file)
    use_sweep_store(sweep, sweep_file, root)
    return sweep, entries, root


def use_sweep_store(sweep: Any, sweep_file: Path | str, root: Path) -> None:
    """A sweep file's ``store:`` (a PostgreSQL URL) is the store of ``root`` in this process."""
    from clipcl.results import pg

    if sweep.store is not None:
        pg.remember(root, pg.check_url(sweep.store, f"{sweep_file}: store"))


def _remembered(root: Path) -> dict[str, Any]:
    """chain id → the store's row, if the root has a store (planning never creates one)."""
    from clipcl.results.store import ResultsStore, store_exists

    if not store_exists(root):
        return {}
    with ResultsStore(root) as store:
        return {row.chain_id: row for row in store.chain_progress()}


def _chain_dirs(root: Path) -> set[str] | None:
    """Names in the run root's chains folder (empty if it has none; ``None``: it cannot be
    listed, so every chain's directory is looked at)."""
    try:
        return {entry.name for entry in os.scandir(RunDir.chains_dir(root))}
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except OSError:
        return None


def _refresh_backends(root: Path) -> None:
    """Ask the schedulers the store names about its active chains (this writes the store)."""
    from clipcl.orchestrator.backends import refresh_store
    from clipcl.results.store import ResultsStore, store_exists

    if store_exists(root):
        with ResultsStore(root) as store:
            refresh_store(store, root)


def plan(
    sweep_file: Path,
    root: Path | None = None,
    *,
    ask_backends: bool = False,
    confirmed: bool = True,
) -> Plan:
    """The plan of a sweep file under ``root`` (default: the sweep's own).

    Args:
        sweep_file: The sweep (YAML).
        root: The run root.
        ask_backends: First ask schedulers (Slurm) about the chains the store says are queued
            or running, so chains with a live job count as owned (records their answers).
        confirmed: False: refuse a sweep of more than :data:`CONFIRM_ABOVE_CHAINS` chains
            right after expanding it, before anything is read or written.

    Raises:
        ClipclError: The sweep is invalid, or it is too large and not ``confirmed``.
    """
    from clipcl.orchestrator.coordinators import live_coordinators

    sweep, entries, root = load_entries(sweep_file, root)
    if not confirmed and len(entries) > CONFIRM_ABOVE_CHAINS:
        raise ClipclError(
            f"{sweep_file}: the sweep expands to {len(entries)} chains (more than "
            f"{CONFIRM_ABOVE_CHAINS}); pass --yes to submit them all"
        )
    if ask_backends:
        _refresh_backends(root)
    stored = _remembered(root)
    coordinators = live_coordinators(root)
    on_disk = _chain_dirs(root)
    chains: list[PlannedChain] = []
    for e in entries:
        row = stored.get(e.chain_id)
        # a chain without a directory has no records, lock or problem: skip the file checks
        listed = on_disk is None or e.chain_id in on_disk
        run_dir = RunDir.of(root, e.chain_id) if listed else None
        active = row is not None and row.state in ACTIVE
        locked = run_dir is not None and active and run_dir.locked()
        judged = judge(
            row.state if row else None,
            row.backend if row else None,
            run_dir.tasks_done() if run_dir else 0,
            e.spec_tasks,
            active and (e.chain_id in coordinators or locked),
        )
        owner = kind = None
        if e.chain_id in coordinators:
            owner, kind = f"coordinator pid {coordinators[e.chain_id]}", "coordinator"
        elif row is not None and row.state in ACTIVE and _outlives(row.backend):
            owner, kind = f"{row.backend} job {row.job_id}", "scheduler"
        problem = run_dir.problem() if run_dir else None
        chains.append(PlannedChain(e, judged, owner, kind, problem))
    return Plan(sweep, str(sweep_file), root, chains)


def judge(
    stored: str | None,
    backend: str | None,
    tasks_done: int,
    num_tasks: int | None,
    alive: bool,
) -> Reconciled:
    """A chain's state from what the store remembers, its records and whether anything runs it.

    The store's ``queued``/``running`` is believed for a scheduler's job (the scheduler was
    asked); for a job that dies with its coordinator it is believed only while a live
    coordinator owns the chain or a worker holds its lock (``alive``): otherwise that job is
    gone (its coordinator was killed or interrupted).
    """
    job = stored if stored in _REMEMBERED else None
    if job in ACTIVE and not _outlives(backend) and not alive:
        job = "gone"
    return reconcile(job, tasks_done, num_tasks)


GONE = (
    "no live coordinator or worker runs it (the coordinator was killed or interrupted); "
    "submit again to resume"
)


def reconcile_store(store: Any, root: Path) -> int:
    """Correct the store's ``queued``/``running`` chains that nothing runs any more (see
    :func:`judge`); how many were changed."""
    coordinators: dict[str, int] | None = None
    changed = 0
    for row in store.chain_progress():
        if row.state not in ACTIVE or _outlives(row.backend):
            continue
        if coordinators is None:
            from clipcl.orchestrator.coordinators import live_coordinators

            coordinators = live_coordinators(root)
        run_dir = RunDir.of(root, row.chain_id)
        alive = row.chain_id in coordinators or run_dir.locked()
        judged = judge(row.state, row.backend, run_dir.tasks_done(), row.num_tasks, alive)
        if judged.state != row.state:
            store.set_state(row.chain_id, judged.state, error=GONE)
            changed += 1
    return changed


def _outlives(backend: str | None) -> bool:
    """Whether the named backend's jobs run without a coordinator (a scheduler's)."""
    from clipcl.orchestrator.backends import BACKEND_NAMES, backend_class

    return backend in BACKEND_NAMES and bool(backend_class(str(backend)).outlives_submitter)
