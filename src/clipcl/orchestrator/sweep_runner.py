"""Running a sweep's chains on a backend with the results store kept current.

One coordinator process runs a set of chains: it writes ``ROOT/coordinators/<pid>.json`` listing
them (so a second submission leaves them alone while it lives), records every state change in
the store, and finishes chains that a worker of an earlier, dead coordinator was still running
(it waits for that worker's chain lock, then dispatches what is left).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipcl.durable import atomic_write_json
from clipcl.orchestrator.backend import Backend, JobState, Resources, prepare_job
from clipcl.orchestrator.coordinator import run_jobs
from clipcl.results.store import ResultsStore
from clipcl.workers.chain import chain_locked


@dataclass(frozen=True)
class SweepChain:
    """A chain to run: its id, resolved spec and number of tasks."""

    chain_id: str
    spec: Any  # ChainSpec
    num_tasks: int


def finished_tasks(run_dir: Path) -> int:
    """Finished tasks of a chain according to its durable records (0 if it never ran)."""
    try:
        return len(json.loads((Path(run_dir) / "state.json").read_text())["completed"])
    except (OSError, ValueError, KeyError):
        return 0


def _coordinators_dir(root: Path) -> Path:
    return root / "coordinators"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owned_by_live_coordinators(root: Path) -> dict[str, int]:
    """chain id → pid of the live coordinator running it; stale files are removed."""
    owned: dict[str, int] = {}
    for path in sorted(_coordinators_dir(root).glob("*.json")):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(info["pid"])):
            owned.update({c: int(info["pid"]) for c in info["chains"]})
        else:
            path.unlink(missing_ok=True)
    return owned


def wait_unlocked(run_dirs: list[Path], stop: threading.Event, poll_s: float = 1.0) -> None:
    """Block until no other process holds the lock of any of ``run_dirs``."""
    pending = list(run_dirs)
    while pending and not stop.is_set():
        pending = [d for d in pending if chain_locked(d)]
        if pending:
            time.sleep(poll_s)


def make_backend(name: str, jobs: int | None, ray_address: str | None) -> Backend:
    """``local`` (``jobs`` at once) or ``ray`` (``ray_address`` or a local Ray)."""
    if name == "local":
        from clipcl.orchestrator.local import LocalBackend

        return LocalBackend(max_parallel=jobs)
    from clipcl.orchestrator.ray_backend import RayBackend

    return RayBackend(address=ray_address)


def run_sweep_chains(
    sweep_name: str,
    chains: list[SweepChain],
    root: Path,
    resources: Resources | Mapping[str, Any],
    backend: Backend,
    data_root: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, JobState]:
    """Run ``chains`` on ``backend`` until each ends; SIGTERM cancels them (``clipcl cancel``)."""
    res = Resources.from_mapping(resources)
    jobs = [prepare_job(c.spec, root / "chains" / c.chain_id, res, data_root) for c in chains]
    marker = _coordinators_dir(root) / f"{os.getpid()}.json"
    atomic_write_json(
        marker, {"pid": os.getpid(), "sweep": sweep_name, "chains": [c.chain_id for c in chains]}
    )
    totals = {c.chain_id: c.num_tasks for c in chains}
    orphans: set[str] = set()  # chains a worker of a dead coordinator is still running
    store = ResultsStore(root)
    store.set_states(list(totals), "queued", backend=backend.name)

    def on_event(chain_id: str, state: JobState, detail: str | None) -> None:
        run_dir = root / "chains" / chain_id
        if state == "failed" and chain_locked(run_dir):
            orphans.add(chain_id)
            state, detail = "running", "a worker of an earlier coordinator"
        if state == "running":
            store.set_state(
                chain_id, "running", backend=backend.name, job_id=detail, count_attempt=True
            )
        elif state in {"done", "failed", "cancelled"}:
            store.ingest_chain(chain_id, run_dir)
            if state == "failed" and finished_tasks(run_dir) >= totals[chain_id]:
                state = "done"  # finished meanwhile by the worker that held it
            if state != "done":
                store.set_state(chain_id, state, error=detail)
        suffix = f": {detail}" if detail and state != "running" else ""
        log(f"{time.strftime('%H:%M:%S')} {chain_id} {state}{suffix}")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        final = run_jobs(backend, jobs, on_event, stop=stop)
        while orphans and not stop.is_set():  # wait for them, then finish what they left
            wait_unlocked([root / "chains" / c for c in orphans], stop)
            again = [j for j in jobs if j.chain_id in orphans]
            orphans.clear()
            final.update(run_jobs(backend, again, on_event, stop=stop))
    finally:
        backend.shutdown()
        marker.unlink(missing_ok=True)
        store.close()
    return final
