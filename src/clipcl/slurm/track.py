"""Keeping the store current for chains that run as Slurm jobs.

Nothing stays attached to a Slurm submission: ``clipcl status`` (and ``submit``, ``cancel``)
call :func:`refresh`, which asks Slurm about every job of the chains still queued or running
in one batched query, then combines those job states with what the workers wrote on disk.
:class:`Backoff` spaces out the queries of a long ``status --watch``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from clipcl.results.store import JobRow, ResultsStore
from clipcl.slurm.commands import Runner, default_runner, job_states, scancel

ACTIVE = frozenset({"queued", "running"})


class Backoff:
    """Intervals that grow by ``factor`` while nothing changes, back to ``base`` on a change."""

    def __init__(self, base: float = 5.0, factor: float = 1.5, cap: float = 60.0) -> None:
        self.base, self.factor, self.cap = base, factor, cap
        self.current = base

    def next(self, changed: bool) -> float:
        """The wait before the next query."""
        self.current = self.base if changed else min(self.cap, self.current * self.factor)
        return self.current


def _latest(jobs: Iterable[JobRow]) -> dict[str, list[JobRow]]:
    """chain id → its jobs of the most recent submission (ordered by first task)."""
    by_chain: dict[str, list[JobRow]] = {}
    for j in jobs:
        by_chain.setdefault(j.chain_id, []).append(j)
    out = {}
    for chain_id, js in by_chain.items():
        newest = max(j.submitted for j in js)
        out[chain_id] = sorted(
            (j for j in js if j.submitted == newest), key=lambda j: j.first_task or 0
        )
    return out


def chain_state(jobs: Sequence[JobRow], done_tasks: int, num_tasks: int | None) -> tuple[str, str]:
    """(state, detail) of a chain from its latest jobs' states and its finished tasks
    (``num_tasks`` None: unknown, never done by count)."""
    if num_tasks is not None and done_tasks >= num_tasks:
        return "done", ""
    states = [j.state for j in jobs]
    for state in ("running", "queued"):
        if state in states:
            return state, jobs[states.index(state)].job_id
    for state in ("failed", "cancelled"):
        if state in states:
            job = jobs[states.index(state)]
            return state, (
                f"Slurm job {job.job_id} {state} after {done_tasks}/{num_tasks} tasks "
                f"(clipcl logs {job.chain_id}); submit again to resume"
            )
    last = jobs[-1].job_id if jobs else "?"
    return "failed", (
        f"Slurm job {last} ended after {done_tasks}/{num_tasks} tasks; submit again to resume"
    )


def refresh(
    store: ResultsStore,
    root: Path,
    chain_ids: Iterable[str] | None = None,
    runner: Runner = default_runner,
) -> dict[str, str]:
    """Query Slurm about the active jobs of Slurm chains and update the store.

    Returns chain id → state for every Slurm chain it looked at (those queued or running in
    the store, optionally restricted to ``chain_ids``). One sacct call per 400 jobs.
    """
    from clipcl.orchestrator.sweep_runner import finished_tasks

    rows = {r.chain_id: r for r in store.chain_progress()}
    wanted = set(chain_ids) if chain_ids is not None else None
    slurm_chains = {
        c for c, r in rows.items() if r.backend == "slurm" and (wanted is None or c in wanted)
    }
    latest = _latest(store.jobs(slurm_chains, backend="slurm"))
    # chains still active in the store, and finished chains whose last job has not ended yet
    active_chains = {
        c
        for c in slurm_chains
        if rows[c].state in ACTIVE or any(j.state in ACTIVE for j in latest.get(c, []))
    }
    if not active_chains:
        return {}
    ask = [j.job_id for c in active_chains for j in latest.get(c, []) if j.state in ACTIVE]
    states = job_states(ask, runner) if ask else {}
    store.set_job_states(states)  # "gone": neither the controller nor accounting knows it
    result: dict[str, str] = {}
    for chain_id in sorted(active_chains):
        jobs = [replace(j, state=states.get(j.job_id, j.state)) for j in latest.get(chain_id, [])]
        run_dir = root / "chains" / chain_id
        store.ingest_chain(chain_id, run_dir)
        state, detail = chain_state(jobs, finished_tasks(run_dir), rows[chain_id].num_tasks)
        old = rows[chain_id].state
        if state == "running":
            if old != "running":
                store.set_state(chain_id, "running", job_id=detail, count_attempt=True)
        elif state != old:
            store.set_state(chain_id, state, error=detail or None)
        result[chain_id] = state
    return result


def cancel_jobs(
    store: ResultsStore, chain_ids: Iterable[str], runner: Runner = default_runner
) -> int:
    """scancel every active job of ``chain_ids`` (one call); return how many were asked."""
    active = [
        j.job_id
        for js in _latest(store.jobs(chain_ids, backend="slurm")).values()
        for j in js
        if j.state in ACTIVE
    ]
    scancel(active, runner)
    store.set_job_states(dict.fromkeys(active, "cancelled"))
    return len(active)


def wait(
    root: Path,
    chain_ids: Iterable[str],
    timeout_s: float,
    backoff: Backoff | None = None,
    runner: Runner = default_runner,
) -> dict[str, str]:
    """Refresh until every chain of ``chain_ids`` left queued/running (or ``timeout_s``)."""
    ids = list(chain_ids)
    backoff = backoff or Backoff(base=2.0, cap=15.0)
    deadline = time.monotonic() + timeout_s
    last: dict[str, str] = {}
    while True:
        with ResultsStore(root) as store:
            refresh(store, root, ids, runner)
            rows = store.chain_progress()
        now = {r.chain_id: r.state for r in rows if r.chain_id in ids}
        if not any(s in ACTIVE for s in now.values()) or time.monotonic() > deadline:
            return now
        time.sleep(backoff.next(now != last))
        last = now
