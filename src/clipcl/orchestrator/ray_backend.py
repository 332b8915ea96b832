"""``RayBackend``: one Ray task per chain, on a local Ray or a cluster.

Owns everything Ray: starting or joining Ray, the task that runs a chain inside a Ray worker
(:func:`clipcl.workers.__main__.run_chain_dir`), and the job handle around its ``ObjectRef``.
Ray retries a task whose worker or node died (``max_retries``); the retried chain resumes from
its last verified checkpoint because ``run_chain`` resumes. Exceptions are never retried: a bad
spec or a bug fails the job. This is the only module of clipcl that imports ray (lazily).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipcl.orchestrator.backend import (
    TERMINAL_STATES,
    ChainCancelled,
    ChainFailed,
    ChainJob,
    CoordinatedBackend,
    JobHandle,
    JobState,
)
from clipcl.orchestrator.backends import BackendOptions
from clipcl.results.records import RunDir


def _ray() -> Any:
    import ray

    return ray


def chain_task(run_dir: str, data_root: str | None, threads: int, gpus: int) -> dict[str, Any]:
    """The body of a chain's Ray task: run or resume the chain, progress to ``worker.log``.

    Args:
        run_dir: The chain's run directory (holding ``spec.json``).
        data_root: Benchmark data root (``None``: default).
        threads: Torch CPU threads (the job's ``cpus``).
        gpus: GPUs Ray assigned (0: force CPU).

    Returns:
        The chain's result JSON.

    A SIGTERM (a node drained) stops the chain after its step with a snapshot; the worker
    process then exits with ``EXIT_PREEMPTED``, which Ray treats as a dead worker and retries
    (``max_retries``) — the retry resumes at that step.
    """
    from clipcl.workers.__main__ import StreamProgress, run_chain_dir
    from clipcl.workers.stop import EXIT_PREEMPTED, Preempted

    device = "cpu" if gpus == 0 else None
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(RunDir(run_dir).log_path, "a", encoding="utf-8") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"--- {stamp} ray worker pid {os.getpid()}", file=log, flush=True)
        try:
            return run_chain_dir(
                run_dir, data_root, device, threads=threads, progress=StreamProgress(log)
            )
        except Preempted as exc:
            print(f"{exc}; exiting for Ray to retry", file=log, flush=True)
            os._exit(EXIT_PREEMPTED)


def _pid_snapshot(run_dir: Path) -> tuple[int, str] | None:
    """(mtime in ns, content) of the chain's PID file, or ``None`` when absent."""
    return RunDir(run_dir).pid_snapshot()


def _describe(exc: BaseException) -> str:
    """One line for a failed task: the worker's own exception rather than Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        from clipcl.errors import ClipclError

        if isinstance(cause, ClipclError):
            return f"error: {cause}"
        return f"{type(cause).__name__}: {cause}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class RayJob:
    """Handle of one chain's Ray task (see ``JobHandle``).

    ``queued`` until the chain's worker writes a fresh ``worker.pid`` (Ray gives no cheap
    "started" signal without its dashboard), then ``running`` until the ``ObjectRef`` is ready.
    """

    def __init__(self, ref: Any, job: ChainJob, pid_before: tuple[int, str] | None) -> None:
        self._ref = ref
        self.job = job
        self._pid_before = pid_before
        self._state: JobState = "queued"
        self._started_at: float | None = None
        self._cancel_requested = False
        self._timed_out = False
        self._result: dict[str, Any] | None = None
        self._error = ""

    @property
    def job_id(self) -> str:
        """The Ray task id (hex)."""
        return str(self._ref.task_id().hex())

    @property
    def chain_id(self) -> str:
        """The chain this job runs."""
        return self.job.chain_id

    @property
    def object_ref(self) -> Any:
        """The task's ``ray.ObjectRef``."""
        return self._ref

    def state(self) -> JobState:
        """The job's state; also enforces the job's time limit."""
        if self._state in TERMINAL_STATES:
            return self._state
        ready, _ = _ray().wait([self._ref], timeout=0)
        if ready:
            self._collect()
            return self._state
        if self._state == "queued" and _pid_snapshot(self.job.run_dir) != self._pid_before:
            self._state = "running"
            self._started_at = time.monotonic()
        started = self._started_at
        if started is not None and time.monotonic() - started > self.job.resources.timeout_s:
            self._timed_out = True
            self.cancel()
        return self._state

    def done(self) -> bool:
        """Whether the job reached a terminal state."""
        return self.state() in TERMINAL_STATES

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the chain's result JSON (``ChainFailed`` if it failed)."""
        if self._state not in TERMINAL_STATES:
            ready, _ = _ray().wait([self._ref], timeout=timeout)
            if not ready:
                raise TimeoutError(f"chain {self.chain_id} unfinished after {timeout} s")
            self._collect()
        if self._state == "cancelled":
            raise ChainCancelled(self.chain_id, self._error)
        if self._state == "failed" or self._result is None:
            raise ChainFailed(self.chain_id, self._error)
        return dict(self._result)

    def cancel(self) -> None:
        """Cancel the task, killing its worker process if it runs (``force=True``)."""
        if self._state in TERMINAL_STATES or self._cancel_requested:
            return
        self._cancel_requested = True
        _ray().cancel(self._ref, force=True)

    def records(self) -> list[dict[str, Any]]:
        """None: a Ray task lives only as long as its coordinator's Ray driver."""
        return []

    def _collect(self) -> None:
        """Fetch the ready task's outcome into the handle's state."""
        ray = _ray()
        try:
            self._result = ray.get(self._ref)
            self._state = "done"
        except ray.exceptions.TaskCancelledError:
            self._set_stopped("cancelled")
        except ray.exceptions.RayError as exc:
            if self._cancel_requested:
                self._set_stopped(_describe(exc))
            else:
                self._state, self._error = "failed", _describe(exc)

    def _set_stopped(self, detail: str) -> None:
        if self._timed_out:
            self._state = "failed"
            self._error = f"timed out after {self.job.resources.timeout_min} min"
        else:
            self._state, self._error = "cancelled", detail


class RayBackend(CoordinatedBackend):
    """Runs each chain as a Ray task.

    Args:
        address: A Ray cluster to join (``"auto"``, ``"ray://host:10001"``, ...); ``None``:
            start a private local Ray (no dashboard, workers' logs kept off the console).
            If Ray is already initialised in this process, it is used as is.
        max_retries: How often Ray re-runs a chain whose worker or node died.
        ray_init_kwargs: Extra keyword arguments for ``ray.init`` (override the defaults).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        max_retries: int = 3,
        ray_init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        ray = _ray()
        self.max_retries = max_retries
        self._handles: list[RayJob] = []
        self._remote: Any = None
        self.started_ray = False
        if not ray.is_initialized():
            ray.init(**self._init_kwargs(address, ray_init_kwargs or {}))
            self.started_ray = True

    @staticmethod
    def check_root(options: BackendOptions) -> None:
        """A cluster (``--ray-address``): every node must see the run root (a probe task per
        node, :func:`check_shared_root`); a private local Ray needs no check."""
        if options.ray_address and options.root is not None:
            check_shared_root(options.ray_address, Path(options.root))

    @classmethod
    def from_options(cls, options: BackendOptions) -> RayBackend:
        """The backend for a submission: join ``options.ray_address`` or start a local Ray."""
        return cls(address=options.ray_address)

    @staticmethod
    def _init_kwargs(address: str | None, extra: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"log_to_driver": False}
        if address is None:
            kwargs.update(
                address="local",  # never join a cluster by accident
                num_cpus=os.cpu_count() or 1,
                include_dashboard=False,
                object_store_memory=256 * 2**20,  # chains return small dicts
                _temp_dir=f"/tmp/clipcl-ray-{os.getuid()}",
            )
        else:
            kwargs["address"] = address
        kwargs.update(extra)
        return kwargs

    def submit(self, jobs: Sequence[ChainJob]) -> list[JobHandle]:
        """Submit one Ray task per job, asking for the job's CPUs and GPUs."""
        ray = _ray()
        if self._remote is None:
            self._remote = ray.remote(chain_task)
        handles: list[JobHandle] = []
        for job in jobs:
            res = job.resources
            task = self._remote.options(
                num_cpus=res.cpus,
                num_gpus=res.gpus,
                max_retries=self.max_retries,
                retry_exceptions=False,
                name=f"chain-{job.chain_id}",
            )
            before = _pid_snapshot(job.run_dir)
            data_root = str(Path(job.data_root).resolve()) if job.data_root else None
            # Absolute paths: a Ray worker's working directory is not the driver's.
            ref = task.remote(str(Path(job.run_dir).resolve()), data_root, res.cpus, res.gpus)
            handle = RayJob(ref, job, before)
            self._handles.append(handle)
            handles.append(handle)
        return handles

    def shutdown(self) -> None:
        """Cancel unfinished jobs; stop Ray if this backend started it."""
        ray = _ray()
        for handle in self._handles:
            if not handle.done():
                handle.cancel()
        if self.started_ray and ray.is_initialized():
            ray.shutdown()
        self.started_ray = False

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _probe_task(probe_dir: str, token: str) -> dict[str, Any]:
    """On one node: write ``<probe_dir>/<token>-<pid>.txt`` naming this node; say where."""
    import socket

    from clipcl.results.provenance import where_this_runs

    where = where_this_runs()
    path = Path(probe_dir) / f"{token}-{where['pid']}-{socket.gethostname()}.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{where['host']}\n")
    except OSError as exc:
        return {**where, "path": str(path), "error": exc.strerror or str(exc)}
    return {**where, "path": str(path), "error": None}


def check_shared_root(address: str, root: Path, timeout_s: float = 120.0) -> int:
    """Before a sweep goes to the Ray cluster at ``address``: one probe task on every alive node
    writes a file into ``root``, and this process reads it back; return the number of nodes.

    Raises:
        ClipclError: A node could not write there, or wrote a file this process cannot see (the
            run root is not on a filesystem the node shares), naming the node and the path;
            nothing was submitted. The probe's files (and a root it created) are removed.
    """
    import uuid

    from clipcl.errors import ClipclError

    ray = _ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False)
    root = Path(root).resolve()
    created = not root.exists()
    probe_dir = root / ".clipcl-probe"
    token = uuid.uuid4().hex[:12]
    try:
        probe_dir.mkdir(parents=True, exist_ok=True)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = ray.remote(_probe_task)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [
            remote.options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                max_retries=0,
            ).remote(str(probe_dir), token)
            for n in nodes
        ]
        answers = ray.get(refs, timeout=timeout_s)
        for node, answer in zip(nodes, answers, strict=True):
            name = f"{answer['host']} ({node.get('NodeManagerAddress')})"
            if answer["error"] is not None:
                raise ClipclError(
                    f"node {name} cannot write the run root {root}: {answer['error']}; put "
                    "the run root on a filesystem every node shares (nothing was submitted)"
                )
            if not Path(answer["path"]).is_file():
                raise ClipclError(
                    f"node {name} does not share the run root {root}: the file it wrote there "
                    f"({answer['path']}) is not visible here; put the run root on a filesystem "
                    "every node shares (nothing was submitted)"
                )
        return len(nodes)
    finally:
        for path in probe_dir.glob(f"{token}-*.txt"):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            probe_dir.rmdir()
            if created:
                root.rmdir()
        if started:
            ray.shutdown()
