"""Backends with real worker processes: LocalBackend, the worker entry point, run_jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from clipcl.errors import ClipclError
from clipcl.orchestrator import (
    ChainCancelled,
    ChainFailed,
    ChainJob,
    LocalBackend,
    Resources,
    prepare_job,
    run_jobs,
)
from clipcl.results.records import RunDir
from clipcl.sweeps.schema import Resources as SweepResources
from clipcl.workers import ChainSpec, run_chain
from tests.helpers import smoke_spec

WORKER = [sys.executable, "-m", "clipcl.workers"]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the in-process reference with the threads a one-CPU job gets."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def direct_matrix(spec: ChainSpec, run_dir: Path) -> list[Any]:
    """The reference: ``run_chain`` in this process, as JSON."""
    with torch_threads(1):
        return run_chain(spec, run_dir).to_json()["matrix"]


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ----- the contract's small parts -----


def test_resources_from_the_sweep_schema_and_bad_keys() -> None:
    res = Resources.from_mapping(SweepResources(cpus=2, timeout_min=5))
    assert res == Resources(gpus=0, cpus=2, mem_gb=8, timeout_min=5)
    assert res.timeout_s == 300
    with pytest.raises(ClipclError, match="unknown key 'gpu'.*did you mean 'gpus'"):
        Resources.from_mapping({"gpu": 1})
    with pytest.raises(ClipclError, match=r"resources.cpus: expected an integer >= 1"):
        Resources(cpus=0)


def test_prepare_job_writes_the_spec_once_and_refuses_another_chain(tmp_path: Path) -> None:
    job = prepare_job(smoke_spec(), tmp_path / "run", Resources(cpus=2))
    assert job.chain_id == smoke_spec().chain_id and job.resources.cpus == 2
    saved = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert ChainSpec.model_validate(saved).chain_id == job.chain_id
    assert prepare_job(smoke_spec(), tmp_path / "run").chain_id == job.chain_id
    with pytest.raises(ClipclError, match="holds chain"):
        prepare_job(smoke_spec(seed=1), tmp_path / "run")


# ----- the worker entry point -----


@pytest.mark.slow
def test_worker_entry_prints_one_result_line_and_records_its_pid(tmp_path: Path) -> None:
    spec = smoke_spec(iterations=2)
    job = prepare_job(spec, tmp_path / "run")
    proc = subprocess.run(
        [*WORKER, "--run-dir", str(job.run_dir), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["chain_id"] == spec.chain_id and len(out["matrix"]) == 3
    assert int((job.run_dir / "worker.pid").read_text()) > 0
    assert "task 2 (stripes) finished" in proc.stderr


@pytest.mark.slow
def test_worker_entry_exit_codes_for_bad_input_and_bugs(tmp_path: Path) -> None:
    missing = subprocess.run(
        [*WORKER, "--run-dir", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: run directory not found: {tmp_path / 'nope'}"
    ]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "spec.json").write_text(json.dumps({"benchmark": "smoke", "method": {}, "bogus": 1}))
    invalid = subprocess.run([*WORKER, "--run-dir", str(bad)], capture_output=True, text=True)
    assert invalid.returncode == 2 and invalid.stdout == ""
    assert len(invalid.stderr.strip().splitlines()) == 1
    assert "unknown key 'bogus'" in invalid.stderr

    # A corrupt state.json is one line naming the file (issue 14: the chain is "corrupt").
    broken = prepare_job(smoke_spec(), tmp_path / "broken").run_dir
    (broken / "state.json").write_text("{not json")
    corrupt = subprocess.run([*WORKER, "--run-dir", str(broken)], capture_output=True, text=True)
    assert corrupt.returncode == 2 and "Traceback" not in corrupt.stderr
    assert "state.json: not a chain state" in corrupt.stderr

    # Anything else that goes wrong (here: the checkpoint folder is a file) is a traceback, exit 1.
    odd = prepare_job(smoke_spec(iterations=2), tmp_path / "odd").run_dir
    (odd / "ckpt").write_text("a file where the checkpoint folder goes")
    bug = subprocess.run([*WORKER, "--run-dir", str(odd)], capture_output=True, text=True)
    assert bug.returncode == 1
    assert "Traceback" in bug.stderr and "Error" in bug.stderr


# ----- LocalBackend -----


@pytest.mark.slow
def test_local_backend_runs_three_chains_two_at_a_time_like_direct_runs(tmp_path: Path) -> None:
    specs = [smoke_spec(seed=s, iterations=4) for s in range(3)]
    jobs = [prepare_job(s, tmp_path / "runs" / s.chain_id) for s in specs]
    with LocalBackend(max_parallel=2, gpus=[]) as backend:
        handles = backend.submit(jobs)
        assert [h.state() for h in handles] == ["running", "running", "queued"]
        assert handles[2].job_id == "local-queued-2"
        results = [h.result(timeout=600) for h in handles]
    assert all(h.job_id.startswith("local-") and h.state() == "done" for h in handles)
    assert handles[2].job_id == f"local-{int((jobs[2].run_dir / 'worker.pid').read_text())}"

    for spec, result in zip(specs, results, strict=True):
        assert result["chain_id"] == spec.chain_id
        assert result["matrix"] == direct_matrix(spec, tmp_path / "direct" / spec.chain_id)
    log = (jobs[0].run_dir / "worker.log").read_text()
    assert "local worker" in log and '"chain_id"' in log  # stderr and stdout both logged


HOLD_LOCK = (
    "import sys; from clipcl.results.records import RunDir\n"
    "with RunDir(sys.argv[1]).lock('held'):\n"
    "    print('held', flush=True); sys.stdin.read()"
)


def test_a_chain_another_process_holds_waits_queued_then_runs(tmp_path: Path) -> None:
    """A worker left running by a killed coordinator holds its chain: the backend starts no
    twin (which would fail as already running) but waits, lets other chains pass, then runs it."""
    held, free = smoke_spec(seed=0, iterations=4), smoke_spec(seed=1, iterations=4)
    held_job = prepare_job(held, tmp_path / "held")
    free_job = prepare_job(free, tmp_path / "free")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(held_job.run_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with LocalBackend(max_parallel=2, gpus=[]) as backend:
            first, second = backend.submit([held_job, free_job])
            assert second.result(timeout=600)["chain_id"] == free.chain_id
            assert first.state() == "queued" and not RunDir(held_job.run_dir).pid_path.exists()
            assert holder.stdin is not None
            holder.stdin.close()  # the other worker ends
            holder.wait(30)
            result = first.result(timeout=600)
        assert first.state() == "done" and result["chain_id"] == held.chain_id
        assert result["matrix"] == direct_matrix(held, tmp_path / "direct")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_run_jobs_reports_states_and_never_exceeds_max_parallel(tmp_path: Path) -> None:
    specs = [smoke_spec(seed=s, iterations=2) for s in range(3)]
    jobs = [prepare_job(s, tmp_path / s.chain_id) for s in specs]
    events: list[tuple[str, str, str | None]] = []
    running: set[str] = set()
    peak = 0

    def on_event(chain_id: str, state: str, detail: str | None) -> None:
        nonlocal peak
        events.append((chain_id, state, detail))
        (running.add if state == "running" else running.discard)(chain_id)
        peak = max(peak, len(running))

    with LocalBackend(max_parallel=2, gpus=[]) as backend:
        final = run_jobs(backend, jobs, on_event, poll_s=0.1)
    assert final == {s.chain_id: "done" for s in specs}
    assert peak == 2
    for spec in specs:
        mine = [(state, detail) for cid, state, detail in events if cid == spec.chain_id]
        assert [state for state, _ in mine][-2:] == ["running", "done"]
        pid = int((tmp_path / spec.chain_id / "worker.pid").read_text())
        assert ("running", f"local-{pid}") in mine
    assert [s for c, s, _ in events if c == specs[2].chain_id][0] == "queued"


@pytest.mark.slow
def test_invalid_spec_fails_with_its_error_and_others_still_run(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "spec.json").write_text(json.dumps({"benchmark": "smoke", "method": {}, "bogus": 1}))
    good = prepare_job(smoke_spec(iterations=2), tmp_path / "good")
    greedy = ChainJob("greedy", tmp_path / "greedy", Resources(gpus=1))
    events: list[tuple[str, str, str | None]] = []

    with LocalBackend(max_parallel=1, gpus=[]) as backend:
        final = run_jobs(
            backend,
            [ChainJob("bad", bad), greedy, good],
            lambda *e: events.append(e),
            poll_s=0.1,
        )
        assert final == {"bad": "failed", "greedy": "failed", good.chain_id: "done"}
    failures = {cid: detail for cid, state, detail in events if state == "failed"}
    assert "exited with code 2" in failures["bad"]
    assert "unknown key 'bogus'" in failures["bad"]
    assert "needs 1 GPU(s) but this backend has 0" in failures["greedy"]


@pytest.mark.slow
def test_cancel_queued_and_running_jobs_leaves_a_resumable_chain(tmp_path: Path) -> None:
    # 60 steps a task: the stop must land before tasks 1 and 2 are done, even on a loaded machine
    spec, other = smoke_spec(iterations=60), smoke_spec(seed=1)
    job = prepare_job(spec, tmp_path / "run")
    queued = prepare_job(other, tmp_path / "queued")
    records = RunDir(job.run_dir)
    with LocalBackend(max_parallel=1, gpus=[]) as backend:
        first, second = backend.submit([job, queued])
        second.cancel()
        assert second.state() == "cancelled"
        with pytest.raises(ChainCancelled):
            second.result(timeout=0)
        wait_for((job.run_dir / "worker.pid").exists, 120, "the worker to start")
        pid = int((job.run_dir / "worker.pid").read_text())
        twin = subprocess.run(
            [*WORKER, "--run-dir", str(job.run_dir)], capture_output=True, text=True
        )
        assert twin.returncode == 2 and f"already running (worker pid {pid})" in twin.stderr
        wait_for(lambda: len(records.completed()) >= 1, 300, "the first task to finish")
        first.cancel()
        with pytest.raises(ChainCancelled):
            first.result(timeout=60)
    assert first.state() == "cancelled" and not pid_alive(pid)
    assert not (queued.run_dir / "worker.pid").exists()  # never started
    done_before = set(records.completed())
    assert 1 <= len(done_before) < 3, "cancelled too late to exercise resume"

    with LocalBackend(max_parallel=1, gpus=[]) as backend:
        (again,) = backend.submit([job])
        resumed = again.result(timeout=600)
    log = (job.run_dir / "worker.log").read_text()
    assert f"resuming after task {len(done_before)} of 3" in log
    assert resumed["matrix"] == direct_matrix(spec, tmp_path / "direct")


def test_run_jobs_stop_cancels_everything(tmp_path: Path) -> None:
    jobs = [prepare_job(smoke_spec(seed=s), tmp_path / str(s)) for s in range(2)]
    stop = threading.Event()
    events: list[tuple[str, str, str | None]] = []

    def on_event(chain_id: str, state: str, detail: str | None) -> None:
        events.append((chain_id, state, detail))
        if state == "running":
            stop.set()

    with LocalBackend(max_parallel=1, gpus=[]) as backend:
        final = run_jobs(backend, jobs, on_event, poll_s=0.1, stop=stop)
    assert set(final.values()) == {"cancelled"}
    assert [s for c, s, _ in events if c == jobs[1].chain_id] == ["queued", "cancelled"]


def test_result_of_a_failed_job_raises_chain_failed(tmp_path: Path) -> None:
    with LocalBackend(gpus=[]) as backend:
        (handle,) = backend.submit([ChainJob("gone", tmp_path / "empty")])
        with pytest.raises(ChainFailed, match="no chain spec") as info:
            handle.result(timeout=120)
    assert info.value.chain_id == "gone" and handle.done()
