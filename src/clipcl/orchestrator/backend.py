"""The backend contract: what a coordinator hands a backend and what it gets back.

Owns :class:`ChainJob` (one chain to run in its run directory, with the
:class:`~clipcl.resources.Resources` it needs, re-exported here), the job states, the
:class:`JobHandle` and :class:`Backend` protocols (shaped like ``concurrent.futures`` /
submitit executors and jobs) and :class:`ChainFailed`. Backends run
the worker of :mod:`clipcl.workers` — as a subprocess or inside a framework's worker — which
reads the chain's ``spec.json``; :func:`prepare_job` writes that file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from clipcl.resources import Resources
from clipcl.results.records import RunDir

if TYPE_CHECKING:
    from clipcl.workers.spec import ChainSpec

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = get_args(JobState)
TERMINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})


class ChainFailed(Exception):
    """A chain's job ended without a result (worker error, crash, time-out or cancel)."""

    def __init__(self, chain_id: str, message: str) -> None:
        super().__init__(f"chain {chain_id}: {message}")
        self.chain_id = chain_id
        self.message = message


class ChainCancelled(ChainFailed):
    """A chain's job was cancelled before it finished."""


@dataclass(frozen=True)
class ChainJob:
    """One chain for a backend: its id, run directory (holding ``spec.json``) and needs.

    ``num_tasks`` and ``tasks_done`` (the chain's progress when it was planned) let a
    scheduler split the chain into per-task jobs; ``None`` when unknown.
    """

    chain_id: str
    run_dir: Path
    resources: Resources = Resources()
    data_root: str | None = None
    num_tasks: int | None = None
    tasks_done: int = 0


class JobHandle(Protocol):
    """A submitted chain (like ``concurrent.futures.Future`` / ``submitit.Job``)."""

    @property
    def job_id(self) -> str:
        """The backend's id of the job (e.g. ``local-<pid>``, a Ray task id)."""
        ...

    @property
    def chain_id(self) -> str:
        """The chain this job runs."""
        ...

    def state(self) -> JobState:
        """The job's current state (never blocks for long)."""
        ...

    def done(self) -> bool:
        """Whether the job reached a terminal state (done, failed or cancelled)."""
        ...

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the worker's result JSON.

        Raises:
            ChainFailed: The job failed or was cancelled (``ChainCancelled``).
            TimeoutError: ``timeout`` seconds passed first.
        """
        ...

    def cancel(self) -> None:
        """Stop the job; the chain stays resumable from its last finished task."""
        ...

    def records(self) -> list[dict[str, Any]]:
        """The scheduler jobs behind this handle, to keep in the store's jobs table (job_id,
        chain_id, backend, first_task, last_task, log_dir); ``[]`` for jobs that live only as
        long as their coordinator."""
        ...


class Backend(Protocol):
    """Runs chains somewhere (like ``concurrent.futures.Executor``).

    ``outlives_submitter``: the backend's jobs keep running when the submitting process exits
    (a scheduler such as Slurm); otherwise a coordinator process must stay with them.
    """

    name: str
    outlives_submitter: bool

    def submit(self, jobs: Sequence[ChainJob]) -> list[JobHandle]:
        """Start (or queue) every job; return one handle per job, in order."""
        ...

    def shutdown(self) -> None:
        """Release what the backend holds (running jobs are cancelled)."""
        ...


class CoordinatedBackend:
    """Base of backends whose jobs die with their coordinator (local, Ray): the coordinator
    records their states and ``clipcl cancel`` reaches them through it, so there is nobody
    else to ask and nothing else to cancel."""

    outlives_submitter = False

    @staticmethod
    def check_root(options: Any) -> None:
        """Before anything is recorded or submitted: refuse a run root the backend's workers
        cannot share (``ClipclError``). Here: nothing to check (one machine)."""

    @staticmethod
    def refresh(store: Any, root: Path, chain_ids: Any = None) -> dict[str, str]:
        """Nothing to ask: the coordinator records its jobs' states."""
        return {}

    @staticmethod
    def cancel_chains(store: Any, root: Path, chain_ids: Any) -> int:
        """Nothing to cancel here: see ``coordinators.cancel_coordinators``."""
        return 0


class SchedulerBackend(Backend, Protocol):
    """A backend whose jobs outlive the submitter (a scheduler): it checks a request before
    anything is submitted and describes a submission in one line."""

    def preflight(self) -> str:
        """Check the request with the scheduler; where the jobs go (e.g. the partition).

        Raises:
            ClipclError: The scheduler cannot run the request.
        """
        ...

    def describe(self, to_submit: int, live: int, handles: Sequence[JobHandle]) -> str:
        """One line: chains to submit, chains skipped (``live`` jobs), what was submitted."""
        ...


def prepare_job(
    spec: ChainSpec,
    run_dir: str | Path,
    resources: Resources | None = None,
    data_root: str | None = None,
    num_tasks: int | None = None,
) -> ChainJob:
    """Write ``run_dir/spec.json`` (unless it already holds this chain) and describe the job.

    Raises:
        ClipclError: ``run_dir`` holds another chain or cannot be written.
    """
    records = RunDir(run_dir)
    records.place_spec(spec, num_tasks)
    done = records.tasks_done()
    return ChainJob(
        spec.chain_id, Path(run_dir), resources or Resources(), data_root, num_tasks, done
    )
