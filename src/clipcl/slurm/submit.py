"""Submitting chains to Slurm through submitit — the only module of clipcl that imports it.

``chain_mode: whole``: chains go out as job arrays (one element per chain, throttled with
``%N``, split at the cluster's ``MaxArraySize``). Each element runs :class:`ChainTask`, a
submitit ``Checkpointable``: ``signal_delay_s`` before the time limit (or on preemption) Slurm
sends USR2, the worker finishes its step and writes a mid-task snapshot, submitit requeues the
job, and the restarted job resumes at that step. Requeues after progress do not count against
``max_requeues``, so a task longer than the time limit finishes over several jobs.

``chain_mode: per-task``: one job per task. Chains that start at the same task and have the
same number of tasks form a group; the group's task-k array depends on its task-(k-1) array
with ``aftercorr`` (element i waits for element i only; ``afterok`` for a group of one) and
``--kill-on-invalid-dep`` so a failed task cancels what follows instead of leaving it pending.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from clipcl.resources import Resources
from clipcl.slurm.commands import SlurmError
from clipcl.slurm.settings import SlurmSettings, submitit_parameters
from clipcl.slurm.track import BACKEND_NAME

if TYPE_CHECKING:
    from clipcl.workers.stop import StopRequest

#: USR2 earlier than this before the end time cannot be the time-limit warning (which Slurm
#: may send up to a minute early): it is a preemption notice, acted on at once.
WARNING_SLACK_S = 90


def job_end_time(job_id: str) -> float | None:
    """The job's end time (epoch seconds) from ``squeue``; ``None`` when unknown."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        return time.mktime(time.strptime(out, "%Y-%m-%dT%H:%M:%S"))
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


Requeue = Callable[[bool], None]


def _credit_progress(original: Callable[..., Any]) -> None:
    """Make submitit's handler not count this requeue against ``max_requeues``: it subtracts
    one from the job's time-out countdown when the job timed out, so one is added first."""
    handler = getattr(original, "__self__", None)
    delayed = getattr(handler, "_delayed", None)
    if delayed is not None and handler is not None and handler.has_timed_out():
        delayed._timeout_countdown += 1


def defer_requeue_to_deadline(delay_s: float, stop: StopRequest) -> Requeue | None:
    """Turn the time-limit USR2 into a stop request ``delay_s`` before the job's end, not
    earlier; return the requeue to call once the worker has stopped (``None`` outside a job).

    Slurm checks ``--signal`` times about once a minute, so USR2 can arrive up to a minute
    before ``delay_s``; with short limits that would stop a job before it did anything. This
    wraps submitit's handler (installed before the job's function runs): a USR2 within
    ``delay_s + WARNING_SLACK_S`` of the end time arms a timer that requests the stop
    ``delay_s`` before the end; any other USR2 (preemption) requests it at once. The worker
    then finishes its step, writes a snapshot and raises ``Preempted``; the caller calls the
    returned requeue, which runs submitit's handler (checkpoint and requeue) — a requeue after
    progress does not count against ``max_requeues``. Should the worker not stop within half
    of ``delay_s`` (it is evaluating, say), submitit's handler runs from the timer instead.
    """
    job_id = os.environ.get("SLURM_JOB_ID")
    original = signal.getsignal(signal.SIGUSR2)
    if not job_id or not callable(original):
        return None

    def fallback(*_: Any) -> None:
        print("the worker did not stop in time: requeueing without a snapshot", file=sys.stderr)
        original(signal.SIGUSR2, None)

    def request_stop(*_: Any) -> None:
        stop.request("SIGUSR2")
        signal.signal(signal.SIGALRM, fallback)
        signal.setitimer(signal.ITIMER_REAL, max(delay_s / 2, 1.0))

    def on_usr2(signum: int, frame: Any) -> None:
        end = job_end_time(job_id)
        remaining = (end - time.time()) if end is not None else 0.0
        wait = remaining - delay_s
        if wait > 1.0 and remaining <= delay_s + WARNING_SLACK_S:
            print(f"USR2 with {remaining:.0f} s left: stopping in {wait:.0f} s", file=sys.stderr)
            signal.signal(signal.SIGALRM, request_stop)
            signal.setitimer(signal.ITIMER_REAL, wait)
        else:
            print(f"USR2 with {remaining:.0f} s left: stopping now", file=sys.stderr)
            request_stop()

    def requeue(progressed: bool) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)  # the fallback is not needed
        if progressed:
            _credit_progress(original)
        original(signal.SIGUSR2, None)

    signal.signal(signal.SIGUSR2, on_usr2)
    return requeue


class ChainTask(submitit.helpers.Checkpointable):
    """The callable a Slurm job runs: the chain worker on one run directory.

    ``checkpoint`` (inherited) resubmits the same call: the chain's own records (its task
    checkpoints and mid-task snapshot) are the checkpoint, so the requeued job resumes at the
    step its predecessor stopped at. USR2 stops the worker after its step and requeues the
    job; SIGTERM (``scancel``, preemption) stops it after its step with a snapshot, and Slurm
    decides whether the job comes back.
    """

    def __init__(
        self,
        run_dir: str,
        data_root: str | None,
        until_task: int | None,
        signal_delay_s: float = 90,
    ) -> None:
        self.run_dir = run_dir
        self.data_root = data_root
        self.until_task = until_task
        self.signal_delay_s = signal_delay_s

    def __call__(self) -> dict[str, Any]:
        from clipcl.results.records import Superseded
        from clipcl.workers.__main__ import StreamProgress, run_chain_dir
        from clipcl.workers.stop import EXIT_SUPERSEDED, Preempted, StopRequest, stop_on_signals

        stop = StopRequest()
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or None
        with stop_on_signals(stop, (signal.SIGTERM,)):  # USR2: submitit's handler, wrapped
            requeue = defer_requeue_to_deadline(self.signal_delay_s, stop)
            try:
                return run_chain_dir(
                    self.run_dir,
                    self.data_root,
                    threads=threads,
                    progress=StreamProgress(sys.stderr),
                    until_task=self.until_task,
                    stop=stop,
                )
            except Superseded as exc:
                # An orphan (its node went DOWN, Slurm requeued the job elsewhere): leave at
                # once, without submitit's result file, which the newer attempt's job owns.
                print(str(exc), file=sys.stderr, flush=True)
                sys.stdout.flush()
                os._exit(EXIT_SUPERSEDED)
            except Preempted as exc:
                print(f"chain {exc}", file=sys.stderr, flush=True)
                if requeue is None or exc.reason != "SIGUSR2":
                    raise
                requeue(exc.progressed)
                raise  # submitit's handler exits; this is not reached


@dataclass(frozen=True)
class SlurmChain:
    """A chain to submit: id, run directory, number of tasks and tasks already finished."""

    chain_id: str
    run_dir: Path
    num_tasks: int
    done_tasks: int = 0


def log_dir(root: Path) -> Path:
    """Where submitit writes job scripts, pickles and the jobs' stdout/stderr."""
    return Path(root).resolve() / "slurm" / "logs"


def job_log_paths(folder: str | Path, job_id: str) -> tuple[Path, Path]:
    """(stdout, stderr) of a job submitted through submitit into ``folder``."""
    paths = submitit.core.utils.JobPaths(Path(folder), job_id=job_id, task_id=0)
    return paths.stdout, paths.stderr


def make_executor(
    root: Path, settings: SlurmSettings, resources: Resources, job_name: str
) -> submitit.AutoExecutor:
    """An executor with the sweep's resources and Slurm settings."""
    extra: dict[str, Any] = {"slurm_max_num_timeout": settings.max_requeues}
    if settings.python:
        extra["slurm_python"] = settings.python
    try:
        executor = submitit.AutoExecutor(folder=log_dir(root), cluster="slurm", **extra)
        executor.update_parameters(**submitit_parameters(settings, resources, job_name))
    except (RuntimeError, ValueError) as exc:
        raise SlurmError(f"cannot set up the Slurm executor: {exc}") from None
    return executor


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _submit_batch(
    executor: submitit.AutoExecutor,
    calls: list[ChainTask],
    dependency: str | None,
    additional: dict[str, Any],
) -> list[str]:
    """Submit ``calls`` as one array (one plain job when single); return their job ids."""
    base = dict(additional)
    if dependency:
        base["kill-on-invalid-dep"] = "yes"
    executor.update_parameters(slurm_dependency=dependency, slurm_additional_parameters=base)
    try:
        with executor.batch():
            jobs = [executor.submit(call) for call in calls]
    except Exception as exc:  # submitit wraps sbatch failures in several types
        raise SlurmError(f"sbatch refused the submission: {str(exc).strip()[-400:]}") from None
    return [str(job.job_id) for job in jobs]


def plan_groups(chains: Sequence[SlurmChain], max_array: int) -> list[list[SlurmChain]]:
    """Per-task mode: chains with the same (first task to run, number of tasks), in chunks of
    at most ``max_array`` — each chunk's task arrays have identical indices."""
    groups: dict[tuple[int, int], list[SlurmChain]] = {}
    for c in chains:
        groups.setdefault((c.done_tasks, c.num_tasks), []).append(c)
    out: list[list[SlurmChain]] = []
    for key in sorted(groups):
        out += [list(chunk) for chunk in _chunks(groups[key], max_array)]
    return out


def submit_chains(
    chains: Sequence[SlurmChain],
    root: Path,
    settings: SlurmSettings,
    resources: Resources,
    job_name: str,
    *,
    data_root: str | None = None,
    max_array: int = 1001,
) -> list[dict[str, Any]]:
    """Submit ``chains``; return one job record per job (job_id, chain_id, first/last task).

    Raises:
        SlurmError: sbatch refused a submission (jobs submitted before it are returned in the
        exception's ``submitted`` attribute so the caller can record them).
    """
    executor = make_executor(root, settings, resources, job_name)
    additional = submitit_parameters(settings, resources, job_name)["slurm_additional_parameters"]
    folder = str(log_dir(root))
    delay = settings.signal_delay_s
    records: list[dict[str, Any]] = []

    def record(chain: SlurmChain, job_id: str, first: int, last: int) -> None:
        records.append(
            {
                "job_id": job_id,
                "chain_id": chain.chain_id,
                "backend": BACKEND_NAME,
                "first_task": first,
                "last_task": last,
                "log_dir": folder,
            }
        )

    try:
        if settings.chain_mode == "whole":
            for chunk in _chunks(list(chains), max_array):
                calls = [ChainTask(str(c.run_dir), data_root, None, delay) for c in chunk]
                ids = _submit_batch(executor, calls, None, additional)
                for c, jid in zip(chunk, ids, strict=True):
                    record(c, jid, c.done_tasks, c.num_tasks - 1)
        else:
            for group in plan_groups(chains, max_array):
                previous: list[str] | None = None
                for k in range(group[0].done_tasks, group[0].num_tasks):
                    dependency = None
                    if previous is not None:
                        dependency = (
                            f"afterok:{previous[0]}"
                            if len(group) == 1
                            else f"aftercorr:{previous[0].split('_')[0]}"
                        )
                    calls = [ChainTask(str(c.run_dir), data_root, k + 1, delay) for c in group]
                    previous = _submit_batch(executor, calls, dependency, additional)
                    for c, jid in zip(group, previous, strict=True):
                        record(c, jid, k, k)
    except SlurmError as exc:
        exc.submitted = records  # type: ignore[attr-defined]
        raise
    return records
