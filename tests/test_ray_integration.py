"""RayBackend on a real local Ray: a sweep end to end, a killed worker retried and resumed."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from clipcl.orchestrator import (
    ChainCancelled,
    ChainFailed,
    ChainJob,
    JobHandle,
    RayBackend,
    Resources,
    prepare_job,
    run_jobs,
)
from clipcl.results.records import RunDir
from tests.helpers import direct_matrix, smoke_spec

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One real local Ray for the module (2 CPUs, no dashboard)."""
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=128 * 2**20,
        _temp_dir=f"/tmp/clipcl-ray-test-{os.getuid()}",
    )
    try:
        yield
    finally:
        ray.shutdown()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def read_pid(run_dir: Path) -> int | None:
    try:
        return int((run_dir / "worker.pid").read_text())
    except (OSError, ValueError):
        return None


class Recording:
    """A real backend that also keeps the handles run_jobs gets (to read their results)."""

    name = "recording"

    def __init__(self, inner: RayBackend) -> None:
        self.inner = inner
        self.handles: list[JobHandle] = []

    def submit(self, jobs: Sequence[ChainJob]) -> list[JobHandle]:
        handles = self.inner.submit(jobs)
        self.handles.extend(handles)
        return handles

    def shutdown(self) -> None:
        self.inner.shutdown()


def test_four_chains_through_ray_equal_direct_runs(local_ray: None, tmp_path: Path) -> None:
    specs = [smoke_spec(seed=s, iterations=6) for s in range(4)]
    jobs = [prepare_job(s, tmp_path / "runs" / s.chain_id) for s in specs]
    events: list[tuple[str, str, str | None]] = []
    backend = Recording(RayBackend())
    assert not backend.inner.started_ray  # joined the fixture's Ray
    final = run_jobs(backend, jobs, lambda *e: events.append(e), poll_s=0.2)
    assert final == {s.chain_id: "done" for s in specs}
    backend.shutdown()
    assert ray.is_initialized()  # not ours to stop

    for spec, job, handle in zip(specs, jobs, backend.handles, strict=True):
        states = [(st, d) for cid, st, d in events if cid == spec.chain_id]
        assert [st for st, _ in states][0] == "queued" and states[-1] == ("done", None)
        running = [d for st, d in states if st == "running"]
        assert len(running) == 1 and running[0] is not None and len(running[0]) >= 16
        log = (job.run_dir / "worker.log").read_text()
        assert "ray worker pid" in log and "task 2 (stripes) finished" in log
        assert running[0] == handle.job_id
        result = handle.result(timeout=0)
        assert result["chain_id"] == spec.chain_id
        assert result["matrix"] == direct_matrix(spec, tmp_path / "direct" / spec.chain_id)


def test_sigkilled_ray_worker_is_retried_and_the_chain_resumes(
    local_ray: None, tmp_path: Path
) -> None:
    spec = smoke_spec(iterations=40)
    job = prepare_job(spec, tmp_path / "run")
    records = RunDir(job.run_dir)
    backend = RayBackend(max_retries=2)
    (handle,) = backend.submit([job])

    wait_for(lambda: len(records.completed()) >= 1, 300, "the first task to finish")
    assert handle.state() == "running"
    pid = read_pid(job.run_dir)
    assert pid is not None
    before = records.completed()
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    assert 1 <= len(before) < 3, "killed too late to exercise resume"

    result = handle.result(timeout=600)
    assert handle.state() == "done"
    new_pid = read_pid(job.run_dir)
    assert new_pid is not None and new_pid != pid  # Ray ran the chain again in a new worker
    after = records.completed()
    assert sorted(after) == [0, 1, 2]
    for k, info in before.items():  # tasks finished before the kill were not redone
        assert after[k].finished_at == info.finished_at < killed_at
    assert after[2].finished_at > killed_at
    log = (job.run_dir / "worker.log").read_text()
    assert log.count("ray worker pid") == 2
    assert f"resuming after task {len(before)} of 3" in log

    assert result["matrix"] == direct_matrix(spec, tmp_path / "direct")


def test_bad_spec_fails_once_and_infeasible_job_can_be_cancelled(
    local_ray: None, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "spec.json").write_text(json.dumps({"benchmark": "smoke", "method": {}, "bogus": 1}))
    huge = prepare_job(smoke_spec(iterations=6), tmp_path / "huge", Resources(cpus=64))
    backend = RayBackend(max_retries=3)
    failing, waiting = backend.submit([ChainJob("bad", bad), huge])
    with pytest.raises(ChainFailed, match="unknown key 'bogus'"):
        failing.result(timeout=120)
    assert failing.state() == "failed"
    assert (bad / "worker.log").read_text().count("ray worker pid") == 1  # not retried

    assert waiting.state() == "queued"  # no node has 64 CPUs: Ray keeps it pending
    waiting.cancel()
    with pytest.raises(ChainCancelled):
        waiting.result(timeout=60)
    assert waiting.state() == "cancelled"
    assert not (huge.run_dir / "worker.pid").exists()
    backend.shutdown()
