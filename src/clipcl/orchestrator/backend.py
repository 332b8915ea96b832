"""The backend contract: what a coordinator hands a backend and what it gets back.

Owns :class:`ChainJob` (one chain to run in its run directory, with the
:class:`~clipcl.resources.Resources` it needs, re-exported here), the job states, the
:class:`JobHandle` and :class:`Backend` protocols (shaped like ``concurrent.futures`` /
submitit executors and jobs) and :class:`ChainFailed`. Backends run
the worker of :mod:`clipcl.workers` — as a subprocess or inside a framework's worker — which
reads ``run_dir/spec.json``; :func:`prepare_job` writes that file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from clipcl.durable import atomic_write_json
from clipcl.errors import ClipclError
from clipcl.resources import Resources

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
    """One chain for a backend: its id, run directory (holding ``spec.json``) and needs."""

    chain_id: str
    run_dir: Path
    resources: Resources = Resources()
    data_root: str | None = None


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


class Backend(Protocol):
    """Runs chains somewhere (like ``concurrent.futures.Executor``)."""

    name: str

    def submit(self, jobs: Sequence[ChainJob]) -> list[JobHandle]:
        """Start (or queue) every job; return one handle per job, in order."""
        ...

    def shutdown(self) -> None:
        """Release what the backend holds (running jobs are cancelled)."""
        ...


def prepare_job(
    spec: ChainSpec,
    run_dir: str | Path,
    resources: Resources | None = None,
    data_root: str | None = None,
) -> ChainJob:
    """Write ``run_dir/spec.json`` (unless it already holds this chain) and describe the job.

    Raises:
        ClipclError: ``run_dir`` holds another chain or cannot be written.
    """
    from clipcl.workers.spec import ChainSpec

    run_dir = Path(run_dir)
    spec_path = run_dir / "spec.json"
    if spec_path.is_file():
        try:
            other = ChainSpec.model_validate(json.loads(spec_path.read_text()))
        except ValueError as exc:
            raise ClipclError(f"{spec_path}: not a chain spec: {exc}") from None
        if other.chain_id != spec.chain_id:
            raise ClipclError(
                f"{run_dir} holds chain {other.chain_id}, not {spec.chain_id}; "
                "use another run directory"
            )
    else:
        try:
            atomic_write_json(spec_path, spec.model_dump(mode="json"))
        except OSError as exc:
            raise ClipclError(f"cannot write {spec_path}: {exc.strerror or exc}") from None
    return ChainJob(spec.chain_id, run_dir, resources or Resources(), data_root)
