"""``LocalBackend``: chains as worker subprocesses on this machine, a few at a time.

Owns the local scheduling: each chain runs as ``python -m clipcl.workers --run-dir DIR`` in its
own process group, its stdout and stderr appended to ``DIR/worker.log``. At most
``max_parallel`` chains run at once; with GPUs every running chain gets its own
``CUDA_VISIBLE_DEVICES``; CPU threads follow the job's ``cpus``. Scheduling is event driven: a
watcher thread per process tees its output, waits for its exit, frees its slot and starts the
next queued job — nothing polls.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipcl.errors import ClipclError
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
from clipcl.workers.stop import EXIT_PREEMPTED, EXIT_SUPERSEDED

GRACE_S = 10.0  # SIGTERM → SIGKILL
HELD_RETRY_S = 1.0  # how often a chain another process holds is looked at again


def visible_gpus() -> list[str]:
    """IDs of the CUDA GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries."""
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver means no GPU, not a crash
        count = 0
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return [str(i) for i in range(count)]
    ids: list[str] = []
    for item in (x.strip() for x in env.split(",")):
        if not item or item.startswith("-"):
            break  # CUDA ignores entries after an invalid one
        ids.append(item)
    return ids[:count]


def _log_tail(path: Path, offset: int) -> str:
    """The last non-empty line written to ``path`` after ``offset`` (``""`` if none)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


class LocalJob:
    """Handle of one chain run by :class:`LocalBackend` (see ``JobHandle``)."""

    def __init__(self, backend: LocalBackend, job: ChainJob, seq: int) -> None:
        self._backend = backend
        self.job = job
        self._seq = seq
        self._state: JobState = "queued"
        self._proc: subprocess.Popen[bytes] | None = None
        self._gpu_ids: list[str] = []
        self._cancel_requested = False
        self._timed_out = False
        self._log_offset = 0
        self._result: dict[str, Any] | None = None
        self._error = ""
        self._finished = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def job_id(self) -> str:
        """``local-<pid>`` once started, ``local-queued-<n>`` before."""
        return f"local-{self._proc.pid}" if self._proc else f"local-queued-{self._seq}"

    @property
    def chain_id(self) -> str:
        """The chain this job runs."""
        return self.job.chain_id

    @property
    def log_path(self) -> Path:
        """Where the worker's output goes."""
        return RunDir(self.job.run_dir).log_path

    def state(self) -> JobState:
        """The job's current state."""
        return self._state

    def done(self) -> bool:
        """Whether the job reached a terminal state."""
        return self._state in TERMINAL_STATES

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the worker's result JSON (``ChainFailed`` if it failed)."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"chain {self.chain_id} still {self._state} after {timeout} s")
        if self._state == "cancelled":
            raise ChainCancelled(self.chain_id, self._error or "cancelled")
        if self._state == "failed" or self._result is None:
            raise ChainFailed(self.chain_id, self._error)
        return dict(self._result)

    def cancel(self) -> None:
        """Drop the job if queued; else SIGTERM its process group (SIGKILL after a grace)."""
        self._backend._cancel(self)

    def records(self) -> list[dict[str, Any]]:
        """None: a local job lives only as long as its coordinator."""
        return []

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the worker's process group if it is still running."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)


class LocalBackend(CoordinatedBackend):
    """Runs chains as subprocesses of this process.

    A chain asking for ``k`` GPUs gets ``k`` ids of its own in ``CUDA_VISIBLE_DEVICES`` (one
    asking for none sees no GPU); ``OMP_NUM_THREADS`` and torch's threads follow its ``cpus``.
    A chain asking for more GPUs than the backend has fails at once.

    Args:
        max_parallel: Chains running at once (default: the number of GPUs, else 1).
        gpus: GPU ids to hand out (default: every visible GPU; ``[]``: CPU only).
    """

    name = "local"

    def __init__(
        self, max_parallel: int | None = None, gpus: Sequence[int | str] | None = None
    ) -> None:
        self.gpus = [str(g) for g in gpus] if gpus is not None else visible_gpus()
        self.max_parallel = max_parallel if max_parallel is not None else max(1, len(self.gpus))
        if self.max_parallel < 1:
            raise ClipclError(f"max_parallel must be at least 1, got {self.max_parallel}")
        self._lock = threading.RLock()
        self._free_gpus = list(self.gpus)
        self._queue: list[LocalJob] = []
        self._running: list[LocalJob] = []
        self._all: list[LocalJob] = []
        self._closed = False
        #: Looks again at queued chains whose lock another process held.
        self._held_timer: threading.Timer | None = None

    @classmethod
    def from_options(cls, options: BackendOptions) -> LocalBackend:
        """The backend for a submission: ``options.jobs`` chains at once."""
        return cls(max_parallel=options.jobs)

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def submit(self, jobs: Sequence[ChainJob]) -> list[JobHandle]:
        """Queue every job and start as many as there are free slots."""
        handles: list[LocalJob] = []
        with self._lock:
            if self._closed:
                raise RuntimeError("LocalBackend was shut down")
            for job in jobs:
                handle = LocalJob(self, job, len(self._all))
                self._all.append(handle)
                handles.append(handle)
                if job.resources.gpus > len(self.gpus):
                    self._end(handle, "failed", self._too_many_gpus(job))
                else:
                    self._queue.append(handle)
            self._pump()
        return list(handles)

    def shutdown(self) -> None:
        """Cancel queued and running jobs and wait for their processes to exit."""
        with self._lock:
            self._closed = True
            pending = [h for h in self._all if not h.done()]
        for handle in pending:
            handle.cancel()
        for handle in pending:
            if handle._watcher is not None:
                handle._watcher.join(GRACE_S + 5)

    def _too_many_gpus(self, job: ChainJob) -> str:
        return (
            f"needs {job.resources.gpus} GPU(s) but this backend has {len(self.gpus)}"
            f" ({', '.join(self.gpus) or 'none visible'})"
        )

    def _retry_held(self) -> None:
        """Look again at the queued chains another process held."""
        with self._lock:
            self._held_timer = None
            if not self._closed:
                self._pump()

    def _pump(self) -> None:
        """Start queued jobs while slots (and GPUs) are free; call with the lock held."""
        for handle in list(self._queue):
            if len(self._running) >= self.max_parallel:
                return
            need = handle.job.resources.gpus
            if need > len(self._free_gpus):
                continue  # a smaller job behind it may fit
            if RunDir(handle.job.run_dir).locked():
                # a worker this backend did not start (left running by a killed coordinator)
                # still trains the chain: start ours once it ends, to resume or find it done
                if self._held_timer is None:
                    self._held_timer = threading.Timer(HELD_RETRY_S, self._retry_held)
                    self._held_timer.daemon = True
                    self._held_timer.start()
                continue
            self._queue.remove(handle)
            handle._gpu_ids, self._free_gpus = self._free_gpus[:need], self._free_gpus[need:]
            try:
                self._start(handle)
            except OSError as exc:
                self._free_gpus.extend(handle._gpu_ids)
                self._end(handle, "failed", f"cannot start the worker: {exc}")
                continue
            self._running.append(handle)

    def _env(self, handle: LocalJob) -> dict[str, str]:
        cpus = str(handle.job.resources.cpus)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": cpus}
        env["MKL_NUM_THREADS"] = cpus
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(handle._gpu_ids)
        return env

    def _start(self, handle: LocalJob) -> None:
        job = handle.job
        cmd = [sys.executable, "-m", "clipcl.workers", "--run-dir", str(job.run_dir)]
        cmd += ["--threads", str(job.resources.cpus)]
        if job.data_root:
            cmd += ["--data-root", str(job.data_root)]
        Path(job.run_dir).mkdir(parents=True, exist_ok=True)
        with open(handle.log_path, "ab") as log:
            handle._log_offset = log.tell()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {stamp} local worker, GPUs [{','.join(handle._gpu_ids)}]\n".encode())
            log.flush()
            handle._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,  # a file, not a pipe: the worker outlives a dying coordinator
                stderr=log,
                env=self._env(handle),
                start_new_session=True,  # its own process group: cancel reaches its children
            )
        handle._state = "running"
        handle._watcher = threading.Thread(
            target=self._watch, args=(handle,), name=f"clipcl-{job.chain_id}", daemon=True
        )
        handle._watcher.start()

    def _watch(self, handle: LocalJob) -> None:
        """Wait for the worker's exit (with its time limit) and settle the job."""
        proc = handle._proc
        assert proc is not None
        timer = threading.Timer(handle.job.resources.timeout_s, self._time_out, (handle,))
        timer.daemon = True
        timer.start()
        returncode = proc.wait()
        timer.cancel()
        self._settle(handle, returncode, self._result_line(handle))

    @staticmethod
    def _result_line(handle: LocalJob) -> bytes:
        """The worker's result: the last JSON object line it wrote to its log in this run."""
        with open(handle.log_path, "rb") as log:
            log.seek(handle._log_offset)
            lines = log.read().splitlines()
        for line in reversed(lines):
            if line.startswith(b"{") and b'"chain_id"' in line:
                return line
        return b""

    def _settle(self, handle: LocalJob, returncode: int, last: bytes) -> None:
        with self._lock:
            if handle in self._running:
                self._running.remove(handle)
            self._free_gpus.extend(handle._gpu_ids)
            if returncode == 0:  # finished, even if a cancel or time-out came too late
                self._finish_ok(handle, last)
            elif handle._cancel_requested:
                self._end(handle, "cancelled", "cancelled")
            elif handle._timed_out:
                minutes = handle.job.resources.timeout_min
                self._end(handle, "failed", f"timed out after {minutes} min")
            else:
                self._end(handle, "failed", self._failure(handle, returncode))
            if not self._closed:
                self._pump()

    def _finish_ok(self, handle: LocalJob, last: bytes) -> None:
        try:
            result = json.loads(last)
        except ValueError:
            self._end(handle, "failed", f"the worker printed no result (see {handle.log_path})")
            return
        handle._result = result
        self._end(handle, "done", "")

    def _failure(self, handle: LocalJob, returncode: int) -> str:
        if returncode < 0:
            what = f"killed by {signal.Signals(-returncode).name}"
        elif returncode == EXIT_PREEMPTED:
            what = "stopped on a signal after snapshotting its step (clipcl retry resumes it)"
        elif returncode == EXIT_SUPERSEDED:
            what = "stopped: a newer attempt of the chain runs it (this one wrote nothing more)"
        else:
            what = f"exited with code {returncode}"
        tail = _log_tail(handle.log_path, handle._log_offset)
        detail = f": {tail}" if tail else ""
        return f"worker {what}{detail} (log: {handle.log_path})"

    @staticmethod
    def _end(handle: LocalJob, state: JobState, error: str) -> None:
        handle._error = error
        handle._state = state
        handle._finished.set()

    def _cancel(self, handle: LocalJob) -> None:
        with self._lock:
            if handle in self._queue:
                self._queue.remove(handle)
                self._end(handle, "cancelled", "cancelled before it started")
                return
            if handle._state != "running" or handle._cancel_requested:
                return
            handle._cancel_requested = True
        self._terminate(handle)

    def _time_out(self, handle: LocalJob) -> None:
        with self._lock:
            if handle._state != "running" or handle._cancel_requested:
                return
            handle._timed_out = True
        self._terminate(handle)

    @staticmethod
    def _terminate(handle: LocalJob) -> None:
        handle.signal_group(signal.SIGTERM)
        killer = threading.Timer(GRACE_S, handle.signal_group, (signal.SIGKILL,))
        killer.daemon = True
        killer.start()
