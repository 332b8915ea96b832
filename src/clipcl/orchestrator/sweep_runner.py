"""Running a sweep's chains on a backend with the results store kept current.

One coordinator process runs a set of chains: it marks itself their coordinator (see
:mod:`clipcl.orchestrator.coordinators`), records every state change in the store, and finishes
chains that a worker of an earlier, dead coordinator was still running (it waits for that
worker's chain lock, then dispatches what is left). :func:`submit_and_record` is the part a
backend whose jobs outlive the submitter (Slurm) needs alone: submit, then record the jobs.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipcl.orchestrator.backend import Backend, ChainJob, JobHandle, JobState, Resources
from clipcl.orchestrator.coordinator import run_jobs
from clipcl.orchestrator.coordinators import heartbeat_and_requests, write_marker
from clipcl.orchestrator.state import reconcile
from clipcl.results.records import RunDir
from clipcl.results.store import ResultsStore


@dataclass(frozen=True)
class SweepChain:
    """A chain to run: its id, resolved spec and number of tasks."""

    chain_id: str
    spec: Any  # ChainSpec
    num_tasks: int


def wait_unlocked(run_dirs: list[Path], stop: threading.Event, poll_s: float = 1.0) -> None:
    """Block until no other process holds the lock of any of ``run_dirs``."""
    pending = [RunDir(d) for d in run_dirs]
    while pending and not stop.is_set():
        pending = [d for d in pending if d.locked()]
        if pending:
            time.sleep(poll_s)


def prepare_jobs(
    chains: Sequence[SweepChain],
    root: Path,
    resources: Mapping[str, Any] | Resources | None = None,
    data_root: str | None = None,
) -> list[ChainJob]:
    """Write each chain's spec (and number of tasks) into its run directory; the jobs."""
    from clipcl.orchestrator.backend import prepare_job

    res = resources if isinstance(resources, Resources) else Resources.from_mapping(resources or {})
    return [
        prepare_job(c.spec, RunDir.of(root, c.chain_id).path, res, data_root, c.num_tasks)
        for c in chains
    ]


def record_submitted(store: ResultsStore, backend: Backend, handles: Sequence[JobHandle]) -> None:
    """Record scheduler jobs in the store; their chains become ``queued`` with the first job."""
    rows = [r for h in handles for r in h.records()]
    if not rows:
        return
    store.record_jobs(rows)
    for h in handles:
        if h.records():
            store.set_state(h.chain_id, "queued", backend=backend.name, job_id=h.job_id)


def submit_and_record(
    backend: Backend, jobs: Sequence[ChainJob], store: ResultsStore
) -> list[JobHandle]:
    """Submit ``jobs`` and record their scheduler jobs, also those of a failed submission."""
    try:
        handles = backend.submit(jobs)
    except Exception as exc:
        record_submitted(store, backend, getattr(exc, "handles", []))
        raise
    record_submitted(store, backend, handles)
    return handles


class StoreRecorder:
    """Records a chain's job events in the store (an ``on_event`` callback) and logs them.

    ``running`` counts an attempt (once per start); an ending job ingests the chain's records
    and the chain's state is :func:`~clipcl.orchestrator.state.reconcile`'s verdict.
    """

    def __init__(
        self,
        store: ResultsStore,
        root: Path,
        backend: str,
        totals: Mapping[str, int],
        log: Callable[[str], None] = print,
    ) -> None:
        self.store, self.root, self.backend = store, Path(root), backend
        self.totals, self.log = dict(totals), log

    def __call__(self, chain_id: str, state: JobState, detail: str | None) -> None:
        run_dir = RunDir.of(self.root, chain_id)
        if state == "running":
            self.store.set_state(
                chain_id, "running", backend=self.backend, job_id=detail, count_attempt=True
            )
        elif state in {"done", "failed", "cancelled"}:
            self.store.ingest_chain(chain_id, run_dir.path)
            # finished meanwhile by the worker that held it: the records decide
            judged = reconcile(state, run_dir.tasks_done(), self.totals[chain_id]).state
            state = "failed" if judged == "new" else judged  # type: ignore[assignment]
            if state != "done":
                self.store.set_state(chain_id, state, error=detail)
        suffix = f": {detail}" if detail and state != "running" else ""
        self.log(f"{time.strftime('%H:%M:%S')} {chain_id} {state}{suffix}")


def _settle_unfinished(record: StoreRecorder, seen: dict[str, JobState]) -> None:
    """After the loop ended early (Ctrl-C, an error): the chains not seen to end are cancelled
    in the store (their jobs were), or done if their records say so — never left running."""
    for chain_id in record.totals:
        if seen.get(chain_id) not in {"done", "failed", "cancelled"}:
            with contextlib.suppress(Exception):  # the store may be what failed
                record(chain_id, "cancelled", "the coordinator stopped before the chain ended")


def run_sweep_chains(
    sweep_name: str,
    chains: list[SweepChain],
    root: Path,
    resources: Resources | Mapping[str, Any],
    backend: Backend,
    data_root: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, JobState]:
    """Run ``chains`` on ``backend`` until each ends.

    ``clipcl cancel`` reaches the chains through the marker's ``.cancel`` file (polled every
    second); SIGTERM cancels them all. However the loop ends, no chain is left ``running`` or
    ``queued`` in the store.
    """
    jobs = prepare_jobs(chains, root, resources, data_root)
    marker = write_marker(root, sweep_name, [c.chain_id for c in chains])
    totals = {c.chain_id: c.num_tasks for c in chains}
    orphans: set[str] = set()  # chains a worker of a dead coordinator is still running
    store = ResultsStore(root)
    store.set_states(list(totals), "queued", backend=backend.name)
    record = StoreRecorder(store, root, backend.name, totals, log)
    final_states: dict[str, JobState] = {}

    def on_event(chain_id: str, state: JobState, detail: str | None) -> None:
        if state == "failed" and RunDir.of(root, chain_id).locked():
            orphans.add(chain_id)
            state, detail = "running", "a worker of an earlier coordinator"
        final_states[chain_id] = state
        record(chain_id, state, detail)

    def tick() -> set[str]:
        return heartbeat_and_requests(marker)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        final = run_jobs(backend, jobs, on_event, stop=stop, on_tick=tick)
        while orphans and not stop.is_set():  # wait for them, then finish what they left
            wait_unlocked([RunDir.of(root, c).path for c in orphans], stop)
            again = [j for j in jobs if j.chain_id in orphans - tick()]
            orphans.clear()
            final.update(run_jobs(backend, again, on_event, stop=stop, on_tick=tick))
    finally:
        backend.shutdown()
        _settle_unfinished(record, final_states)
        marker.unlink(missing_ok=True)
        marker.with_suffix(".cancel").unlink(missing_ok=True)
        store.close()
    return final
