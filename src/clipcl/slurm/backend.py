"""Slurm as a ``Backend``: :class:`SlurmBackend` and its chain handle :class:`SlurmJob`.

A chain's handle is the set of Slurm jobs of its latest submission (one in ``chain_mode:
whole``, one per task in ``per-task``); its state is :func:`~clipcl.orchestrator.state.reconcile`
of those jobs' states and the chain's records on disk. Handles are rebuilt from the store's job
rows (:meth:`SlurmBackend.handles`), as submitit rebuilds a job from its folder and id, so a
submission that returns and a later ``--follow`` or ``status`` use the same type. Every handle
of a backend asks Slurm through one :class:`SacctWatcher`: one batched query per interval for
all of them, backing off while nothing changes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clipcl.orchestrator.backend import (
    TERMINAL_STATES,
    ChainCancelled,
    ChainFailed,
    ChainJob,
    JobHandle,
    JobState,
)
from clipcl.orchestrator.backends import BackendOptions
from clipcl.orchestrator.state import reconcile
from clipcl.results.records import RunDir
from clipcl.slurm import commands
from clipcl.slurm.commands import Runner, SlurmError, default_runner, job_states, scancel
from clipcl.slurm.track import ACTIVE, BACKEND_NAME, Backoff, cancel_jobs, latest_jobs, refresh


class SacctWatcher:
    """States of many Slurm jobs from one batched ``sacct`` query per interval.

    Args:
        runner: Runs the Slurm commands.
        base_s: The first interval between queries; it grows while nothing changes.
        cap_s: The longest interval.
    """

    def __init__(
        self, runner: Runner = default_runner, base_s: float = 2.0, cap_s: float = 30.0
    ) -> None:
        self.runner = runner
        self._backoff = Backoff(base=base_s, cap=cap_s)
        self._states: dict[str, str] = {}
        self._next = 0.0
        self.queries = 0

    def track(self, job_ids: Iterable[str], state: str = "queued") -> None:
        """Follow ``job_ids`` (their last known state: ``state``)."""
        for job_id in job_ids:
            self._states.setdefault(str(job_id), state)

    def states(self, job_ids: Sequence[str]) -> list[str]:
        """The states of ``job_ids``, asking Slurm when the interval has passed."""
        self.track(job_ids)
        if time.monotonic() >= self._next:
            self.poll()
        return [self._states[str(j)] for j in job_ids]

    def poll(self) -> bool:
        """Ask Slurm about every followed job not known to have ended; whether one changed."""
        active = [j for j, s in self._states.items() if s in ACTIVE]
        changed = False
        if active:
            fresh = job_states(active, self.runner)
            self.queries += 1
            changed = any(self._states[j] != s for j, s in fresh.items())
            self._states.update(fresh)
        self._next = time.monotonic() + self._backoff.next(changed)
        return changed


class SlurmJob:
    """The Slurm jobs of one chain's submission (see ``JobHandle``)."""

    def __init__(
        self,
        chain_id: str,
        jobs: Sequence[dict[str, Any]],
        run_dir: Path,
        num_tasks: int,
        watcher: SacctWatcher,
    ) -> None:
        self._chain_id = chain_id
        self._jobs = sorted(jobs, key=lambda j: j.get("first_task") or 0)
        self.run_dir = Path(run_dir)
        self.num_tasks = num_tasks
        self._watcher = watcher
        watcher.track((j["job_id"] for j in self._jobs), "queued")
        for j in self._jobs:  # what the store last knew, until Slurm is asked
            if j.get("state") and j["state"] not in ACTIVE:
                watcher._states[str(j["job_id"])] = str(j["state"])

    @property
    def job_id(self) -> str:
        """The id of the chain's first Slurm job of this submission."""
        return str(self._jobs[0]["job_id"]) if self._jobs else "?"

    @property
    def job_ids(self) -> list[str]:
        """Every Slurm job id of this submission, in task order."""
        return [str(j["job_id"]) for j in self._jobs]

    @property
    def chain_id(self) -> str:
        """The chain these jobs run."""
        return self._chain_id

    def _judge(self) -> tuple[JobState, str]:
        states = self._watcher.states(self.job_ids)
        done = RunDir(self.run_dir).tasks_done()
        judged = reconcile(states, done, self.num_tasks)
        state: JobState = "failed" if judged.state == "new" else judged.state
        if state not in ("failed", "cancelled"):
            return state, ""
        job = self.job_ids[judged.job] if judged.job is not None else self.job_id
        what = states[judged.job] if judged.job is not None else "ended"
        if what in ("failed", "cancelled"):
            return state, (
                f"Slurm job {job} {what} after {done}/{self.num_tasks} tasks "
                f"(clipcl logs {self.chain_id}); submit again to resume"
            )
        return state, (
            f"Slurm job {job} ended after {done}/{self.num_tasks} tasks; submit again to resume"
        )

    def state(self) -> JobState:
        """The chain's state from its jobs and its records (asks Slurm at most per interval)."""
        return self._judge()[0]

    def done(self) -> bool:
        """Whether the chain's jobs ended (or every task is finished)."""
        return self.state() in TERMINAL_STATES

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the chain to end; its progress from the records (``ChainFailed`` if it did
        not finish)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"chain {self.chain_id} unfinished after {timeout} s")
            time.sleep(1.0)
        state, detail = self._judge()
        if state == "cancelled":
            raise ChainCancelled(self.chain_id, detail)
        if state == "failed":
            raise ChainFailed(self.chain_id, detail)
        return {"chain_id": self.chain_id, "tasks_done": RunDir(self.run_dir).tasks_done()}

    def cancel(self) -> None:
        """scancel the chain's jobs that may still run; its finished tasks are kept."""
        states = self._watcher.states(self.job_ids)
        active = [j for j, s in zip(self.job_ids, states, strict=True) if s in ACTIVE]
        scancel(active, self._watcher.runner)

    def records(self) -> list[dict[str, Any]]:
        """The job rows for the store (job_id, chain_id, backend, first/last task, log_dir)."""
        keys = ("job_id", "chain_id", "backend", "first_task", "last_task", "log_dir")
        return [{k: j.get(k) for k in keys} for j in self._jobs]


class SlurmBackend:
    """Submits chains as Slurm jobs through submitit (see :mod:`clipcl.slurm.submit`).

    Args:
        root: The run root (job scripts and logs go to ``root/slurm/logs``).
        sweep: The sweep: its ``slurm`` settings, ``resources`` and name.
        source: The sweep file, named in errors.
        data_root: The benchmarks' data root on the nodes.
        runner: Runs the Slurm commands.
        max_array: Split arrays at this size (default: the cluster's ``MaxArraySize``).
    """

    name = BACKEND_NAME
    outlives_submitter = True

    def __init__(
        self,
        root: Path,
        sweep: Any,
        source: str = "sweep",
        data_root: str | None = None,
        runner: Runner = default_runner,
        max_array: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.sweep = sweep
        self.source = source
        self.data_root = data_root
        self.runner = runner
        self.max_array = max_array
        self.watcher = SacctWatcher(runner)
        self._partition: str | None = None

    @classmethod
    def from_options(cls, options: BackendOptions) -> SlurmBackend:
        """The backend for a submission of ``options.sweep`` under ``options.root``."""
        assert options.root is not None and options.sweep is not None
        return cls(options.root, options.sweep, options.source, options.data_root)

    @property
    def job_name(self) -> str:
        return f"clipcl-{self.sweep.name}"

    def preflight(self) -> str:
        """Check the request with the cluster (once); the partition the jobs go to.

        Raises:
            SlurmError: The cluster cannot run the request (the message names the field).
        """
        if self._partition is None:
            from clipcl.slurm.preflight import preflight

            self._partition = preflight(
                self.sweep.slurm, self.sweep.resources, self.job_name, self.source, self.runner
            )
        return self._partition

    @classmethod
    def check_root(cls, options: BackendOptions) -> None:
        """Before anything is recorded: every usable node of the partition (other than this
        machine) must see the run root — a probe job per node (:mod:`clipcl.slurm.probe`).

        Raises:
            ClipclError: A node does not share the root, or the cluster refused the request.
        """
        from clipcl.slurm.probe import check_shared_root

        sweep = options.sweep
        if options.root is None or sweep is None or sweep.slurm.check_root_s == 0:
            return
        backend = cls.from_options(options)
        partition = backend.preflight()
        found = check_shared_root(
            Path(options.root),
            partition,
            timeout_s=sweep.slurm.check_root_s,
            account=sweep.slurm.account,
            qos=sweep.slurm.qos,
            runner=backend.runner,
        )
        for node, why in sorted(found.unchecked.items()):
            print(
                f"warning: node {node} was not checked for the run root: {why}",
                file=sys.stderr,
                flush=True,
            )
        if found.shared:
            print(
                f"run root {Path(options.root).resolve()} is shared by "
                f"{len(found.shared)} node(s) of partition {partition} "
                f"({', '.join(found.shared)})",
                file=sys.stderr,
                flush=True,
            )

    def submit(self, jobs: Sequence[ChainJob]) -> list[JobHandle]:
        """Submit every chain of ``jobs``; one handle per chain, in order.

        Raises:
            SlurmError: The preflight failed (nothing submitted) or sbatch refused; the handles
            of what was submitted before are in the exception's ``handles``.
        """
        from clipcl.slurm.submit import SlurmChain, submit_chains

        self.preflight()
        if not jobs:
            return []
        chains = [
            SlurmChain(j.chain_id, Path(j.run_dir).resolve(), int(j.num_tasks or 0), j.tasks_done)
            for j in jobs
        ]
        limit = self.max_array or commands.max_array_size(self.runner)
        try:
            records = submit_chains(
                chains,
                self.root,
                self.sweep.slurm,
                self.sweep.resources,
                self.job_name,
                data_root=self.data_root,
                max_array=limit,
            )
        except SlurmError as exc:
            submitted = getattr(exc, "submitted", [])
            exc.handles = self._handles(chains, submitted)  # type: ignore[attr-defined]
            raise
        handles: list[JobHandle] = list(self._handles(chains, records))
        return handles

    def describe(self, to_submit: int, live: int, handles: Sequence[Any]) -> str:
        """One line about a submission: what was asked, skipped and submitted, and where."""
        job_ids = [j for h in handles for j in h.job_ids]
        arrays = sorted({j.split("_")[0] for j in job_ids}, key=int)
        return (
            f"{to_submit} chains to submit, {live} with a live Slurm job; submitted "
            f"{len(handles)} chains as {len(job_ids)} jobs (Slurm job ids "
            f"{', '.join(arrays) or '-'}; partition {self.preflight()}, "
            f"chain_mode {self.sweep.slurm.chain_mode})"
        )

    def _handles(self, chains: Sequence[Any], records: list[dict[str, Any]]) -> list[SlurmJob]:
        by_chain: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            by_chain.setdefault(r["chain_id"], []).append(r)
        return [
            SlurmJob(c.chain_id, by_chain[c.chain_id], c.run_dir, c.num_tasks, self.watcher)
            for c in chains
            if c.chain_id in by_chain
        ]

    def shutdown(self) -> None:
        """Nothing to release: the jobs run on without this process."""

    @classmethod
    def handles(
        cls, store: Any, root: Path, chain_ids: Iterable[str], watcher: SacctWatcher | None = None
    ) -> list[SlurmJob]:
        """Rebuild the handles of ``chain_ids`` from the store's job rows (latest submission)."""
        watcher = watcher or SacctWatcher()
        rows = {r.chain_id: r for r in store.chain_progress()}
        latest = {
            c: [asdict(j) for j in jobs]
            for c, jobs in latest_jobs(store.jobs(chain_ids, backend=cls.name)).items()
        }
        return [
            SlurmJob(c, jobs, RunDir.of(root, c).path, int(rows[c].num_tasks or 0), watcher)
            for c, jobs in sorted(latest.items())
            if c in rows
        ]

    @staticmethod
    def refresh(store: Any, root: Path, chain_ids: Iterable[str] | None = None) -> dict[str, str]:
        """Ask Slurm about the store's queued/running Slurm chains and record their states."""
        return refresh(store, root, chain_ids)

    @staticmethod
    def cancel_chains(store: Any, root: Path, chain_ids: Iterable[str]) -> int:
        """scancel every active job of ``chain_ids`` (one call); how many were asked."""
        return cancel_jobs(store, chain_ids)
