"""Keeping the store current for chains that run as Slurm jobs.

Nothing stays attached to a Slurm submission: ``clipcl status`` (and ``submit``, ``cancel``)
call :func:`refresh`, which asks Slurm about every job of the chains still queued or running
in one batched query, then combines those job states with what the workers wrote on disk.
:class:`~clipcl.orchestrator.coordinator.Backoff` spaces out the queries of a long wait.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from clipcl.orchestrator.coordinator import Backoff
from clipcl.orchestrator.state import ACTIVE, reconcile
from clipcl.results.records import RunDir
from clipcl.results.store import JobRow, ResultsStore
from clipcl.slurm.commands import Runner, default_runner, job_states, scancel

#: The name of the Slurm backend in the store (``chains.backend``, ``jobs.backend``).
BACKEND_NAME = "slurm"


def latest_jobs(jobs: Iterable[JobRow]) -> dict[str, list[JobRow]]:
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
    (:func:`~clipcl.orchestrator.state.reconcile`, with the words ``status`` shows;
    ``num_tasks`` None: unknown, never done by count)."""
    judged = reconcile([j.state for j in jobs], done_tasks, num_tasks)
    state = "failed" if judged.state == "new" else judged.state
    if state == "done":
        return "done", ""
    job = jobs[judged.job] if judged.job is not None else None
    if state in ("running", "queued"):
        return state, job.job_id if job else ""
    if job is not None and job.state in ("failed", "cancelled"):
        return state, (
            f"Slurm job {job.job_id} {job.state} after {done_tasks}/{num_tasks} tasks "
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
    rows = {r.chain_id: r for r in store.chain_progress()}
    wanted = set(chain_ids) if chain_ids is not None else None
    slurm_chains = {
        c for c, r in rows.items() if r.backend == BACKEND_NAME and (wanted is None or c in wanted)
    }
    latest = latest_jobs(store.jobs(slurm_chains, backend=BACKEND_NAME))
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
        run_dir = RunDir.of(root, chain_id)
        store.ingest_chain(chain_id, run_dir.path)
        state, detail = chain_state(jobs, run_dir.tasks_done(), rows[chain_id].num_tasks)
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
        for js in latest_jobs(store.jobs(chain_ids, backend=BACKEND_NAME)).values()
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
