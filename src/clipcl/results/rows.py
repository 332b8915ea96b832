"""The typed rows that cross the results store's boundary.

Owns :class:`ChainRecord` (what a caller tells the store about a chain before it runs) and the
frozen rows the store hands back: :class:`ChainRow` (a chain's progress), :class:`ChainDetail`
(everything the store knows about one chain), :class:`SweepRow` and :class:`JobRow`. Nothing
here touches SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clipcl.errors import ClipclError

__all__ = ["ChainDetail", "ChainRecord", "ChainRow", "JobRow", "SweepRow"]


@dataclass(frozen=True)
class ChainRecord:
    """What the store knows about a chain before it runs.

    Attributes:
        chain_id: The chain's id (its run directory is ``<root>/chains/<chain_id>``).
        method: Method name.
        benchmark: Benchmark name.
        protocol: ``"til"`` or ``"cil"`` (None when the benchmark is unknown here).
        seed: The chain's seed.
        settings: The varied non-seed settings, dotted key → value.
        spec: The resolved ChainSpec as JSON data.
        num_tasks: Number of tasks of the benchmark (None when unknown).
    """

    chain_id: str
    method: str
    benchmark: str
    protocol: str | None
    seed: int | None
    settings: Mapping[str, Any] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)
    num_tasks: int | None = None

    @classmethod
    def from_spec(
        cls, chain_id: str, spec: Mapping[str, Any], settings: Mapping[str, Any] | None = None
    ) -> ChainRecord:
        """Build a record from a ``spec.json`` mapping (protocol and tasks from the registry)."""
        from clipcl.data import benchmark_info  # imports torch: only when really needed

        method = spec.get("method", {})
        benchmark = str(spec.get("benchmark", "?"))
        try:
            info = benchmark_info(benchmark)
            protocol, num_tasks = info.protocol, len(info.task_names)
        except ClipclError:
            protocol, num_tasks = None, None
        seed = spec.get("seed")
        return cls(
            chain_id=chain_id,
            method=str(method.get("name", "?") if isinstance(method, Mapping) else method),
            benchmark=benchmark,
            protocol=protocol,
            seed=None if seed is None else int(seed),
            settings=dict(settings or {}),
            spec=dict(spec),
            num_tasks=num_tasks,
        )


@dataclass(frozen=True)
class ChainRow:
    """One chain's progress, as :meth:`ResultsStore.chain_progress` lists it.

    Attributes:
        chain_id: The chain's id.
        method: Method name.
        benchmark: Benchmark name.
        seed: The chain's seed (None when unknown).
        settings: The varied non-seed settings, dotted key → value.
        state: One of :data:`~clipcl.results.schema.STATES`.
        tasks_done: Finished tasks ingested from the chain's records.
        num_tasks: Tasks of the benchmark (None when unknown).
        attempts: How many times the chain started running.
        backend: The backend that last ran it (``local``, ``ray``, ``slurm``), if any.
        job_id: The backend's id of its last job, if any.
        error: Why it failed or was cancelled (None otherwise).
        hosts: The hosts its finished tasks ran on, comma-separated (None: none recorded).
    """

    chain_id: str
    method: str
    benchmark: str
    seed: int | None
    settings: Mapping[str, Any]
    state: str
    tasks_done: int
    num_tasks: int | None
    attempts: int
    backend: str | None
    job_id: str | None
    error: str | None
    hosts: str | None


@dataclass(frozen=True)
class ChainDetail(ChainRow):
    """Everything the store knows about one chain (:meth:`ResultsStore.chain`).

    Attributes:
        protocol: ``"til"`` or ``"cil"`` (None when unknown).
        spec: The resolved ChainSpec as JSON data.
        config_hash: :func:`~clipcl.results.provenance.config_hash` of the spec.
        task_names: Task index (-1: zero-shot) → task name, as ingested.
        submitted: When it was last queued (epoch seconds), if queued since it was new.
        started: When it last started running, if it did.
        finished: When it last ended, if it did.
    """

    protocol: str | None
    spec: Mapping[str, Any]
    config_hash: str | None
    task_names: Mapping[int, str]
    submitted: float | None
    started: float | None
    finished: float | None


@dataclass(frozen=True)
class SweepRow:
    """One recorded sweep (:meth:`ResultsStore.sweeps`).

    Attributes:
        name: The sweep's name.
        source: The sweep file it was recorded from, if any.
        created: When it was first recorded (epoch seconds).
        updated: When it was last recorded.
        chains: How many chains it has.
    """

    name: str
    source: str | None
    created: float
    updated: float
    chains: int


@dataclass(frozen=True)
class JobRow:
    """One scheduler job of a chain (:meth:`ResultsStore.jobs`).

    Attributes:
        job_id: The scheduler's job id (Slurm: ``<array>_<index>`` or a plain id).
        chain_id: The chain it runs.
        backend: The backend that submitted it.
        first_task: The first task it runs (None: the chain's next unfinished task).
        last_task: The last task it runs (None: through the last task).
        log_dir: Where its stdout/stderr files are, if known.
        state: Its last known state (``queued``, ``running``, ``done``, ``failed``, ...).
        submitted: When it was recorded (epoch seconds).
        updated: When its state was last updated.
    """

    job_id: str
    chain_id: str
    backend: str
    first_task: int | None
    last_task: int | None
    log_dir: str | None
    state: str
    submitted: float
    updated: float | None
