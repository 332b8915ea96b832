"""The one chain-state rule (``reconcile``), the plan built on it and the backend registry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipcl.errors import ClipclError
from clipcl.orchestrator.backends import BACKEND_NAMES, backend_class, check_backend_name
from clipcl.orchestrator.state import reconcile
from clipcl.results.records import ChainState, RunDir, TaskRecord

T = 3  # tasks of the chain in the table
JOB_STATES = ("queued", "running", "requeued", "preempted", "failed", "cancelled", "timeout")
PROGRESS = {"none": 0, "some": 1, "all": T}
# what a chain with one job in that state is, while not every task is finished
UNFINISHED = {
    "queued": "queued",
    "running": "running",
    "requeued": "queued",
    "preempted": "queued",
    "failed": "failed",
    "cancelled": "cancelled",
    "timeout": "failed",
}


@pytest.mark.parametrize("progress", sorted(PROGRESS))
@pytest.mark.parametrize("job", JOB_STATES)
def test_reconcile_table(job: str, progress: str) -> None:
    done = PROGRESS[progress]
    got = reconcile(job, done, T)
    want = "done" if done >= T else UNFINISHED[job]
    assert got.state == want
    assert (got.tasks_done, got.num_tasks) == (done, T)
    assert got.finished == (want == "done")


@pytest.mark.parametrize(
    "jobs,done,want",
    [
        (None, 0, "new"),
        ([], 2, "new"),
        (["done"], 2, "failed"),  # the job ended without finishing the chain
        (["gone"], 0, "failed"),  # nobody knows the job any more
        (["done", "queued"], 1, "queued"),  # per-task jobs: the next one waits
        (["done", "failed", "cancelled"], 1, "failed"),
        (["failed", "running"], 1, "running"),
        (["done"], None, "failed"),  # unknown number of tasks: never done by count
    ],
)
def test_reconcile_job_lists(jobs, done, want) -> None:
    num = None if done is None else T
    assert reconcile(jobs, done or 0, num).state == want


def test_reconcile_points_at_the_job_it_judged() -> None:
    assert reconcile(["done", "failed", "queued"], 1, T).job == 2
    assert reconcile(["done", "failed", "cancelled"], 1, T).job == 1


@pytest.mark.parametrize(
    "stored,done,label",
    [
        (None, 0, "new"),
        (None, 2, "partial (2/3)"),
        ("failed", 0, "failed"),
        ("running", 1, "running (1/3)"),
        ("cancelled", 3, "done"),
    ],
)
def test_plan_labels(stored, done, label) -> None:
    assert reconcile(stored, done, T).label == label


def test_run_dir_state_round_trip(tmp_path: Path) -> None:
    run = RunDir.of(tmp_path, "0123456789ab")
    assert run.path == tmp_path / "chains" / "0123456789ab"
    assert run.tasks_done() == 0 and run.load_state() == ChainState()
    run.path.mkdir(parents=True)
    state = ChainState({0: TaskRecord("ckpt/task_000.pt", "f00", 1.5, 10.0)}, True, 3)
    run.save_state(state)
    again = run.load_state()
    assert again == state and again.tasks_done == 1 and not again.finished
    again.completed[1] = TaskRecord()
    again.completed[2] = TaskRecord()
    run.save_state(again)
    assert run.load_state().finished and run.tasks_done() == 0  # no rows: nothing verified
    _rows(run, 3)
    assert run.tasks_done() == 3
    run.state_path.write_text("[]")  # not a chain state
    assert run.tasks_done() == 0


def _rows(run: RunDir, tasks: int) -> None:
    """The evaluation rows of tasks 0..tasks-1 (eval tasks 0..k each): they make them count."""
    from clipcl.results.records import EvalRow

    pairs = [(k, i) for k in range(tasks) for i in range(k + 1)]
    run.append_rows([EvalRow(run.path.name, k, "t", i, "t", 1, 2) for k, i in pairs])


def test_lock_is_exclusive_and_reentrant(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "c")
    probe = (
        "import sys; from clipcl.results.records import RunDir, ChainBusy\n"
        "try:\n    cm = RunDir(sys.argv[1]).lock('c'); cm.__enter__(); print('got it')\n"
        "except ChainBusy as e:\n    print(e)"
    )
    with run.lock("c"):
        with run.lock("c"):  # the same process may take it again
            assert not run.locked()  # held by this process: not "another process"
        run.write_pid()
        assert run.read_pid() == os.getpid() and run.pid_snapshot() is not None
        other = subprocess.run(
            [sys.executable, "-c", probe, str(run.path)], capture_output=True, text=True
        )
        assert f"chain c is already running (worker pid {os.getpid()})" in other.stdout
    other = subprocess.run(
        [sys.executable, "-c", probe, str(run.path)], capture_output=True, text=True
    )
    assert "got it" in other.stdout


def test_backend_registry() -> None:
    assert BACKEND_NAMES == ("local", "ray", "slurm")
    for name in BACKEND_NAMES:
        cls = backend_class(name)
        assert cls.name == name
        assert cls.outlives_submitter == (name == "slurm")
    with pytest.raises(ClipclError, match="allowed: local, ray, slurm"):
        check_backend_name("sluurm")


SWEEP = Path(__file__).parent / "data" / "sweeps" / "smoke4.yaml"


def test_plan_from_records_and_owners(tmp_path: Path) -> None:
    """One chain finished on disk, one partial, one owned by a live coordinator (this process)."""
    from clipcl.orchestrator.coordinators import write_marker
    from clipcl.orchestrator.plan import plan

    first = plan(SWEEP, tmp_path)
    assert len(first.chains) == 4 and first.counts() == {"new": 4}
    assert [c.chain_id for c in first.todo] == [c.chain_id for c in first.chains]
    done, partial, owned, _ = first.chains
    for chain, finished in ((done, done.num_tasks), (partial, 1)):
        run = RunDir.of(tmp_path, chain.chain_id)
        run.place_spec(chain.entry.spec, chain.num_tasks)
        state = run.load_state()
        state.completed = {k: TaskRecord() for k in range(finished)}
        run.save_state(state)
        _rows(run, finished)
    marker = write_marker(tmp_path, first.name, [owned.chain_id])
    try:
        again = plan(SWEEP, tmp_path)
    finally:
        marker.unlink()
    by_id = {c.chain_id: c for c in again.chains}
    assert by_id[done.chain_id].finished and by_id[done.chain_id].state.label == "done"
    assert by_id[partial.chain_id].state.label == f"partial (1/{partial.num_tasks})"
    assert by_id[owned.chain_id].owner == f"coordinator pid {os.getpid()}"
    assert [c.chain_id for c in again.owned("coordinator")] == [owned.chain_id]
    assert {c.chain_id for c in again.todo} == {c.chain_id for c in first.chains} - {
        done.chain_id,
        owned.chain_id,
    }
    assert again.counts() == {"done": 1, "new": 2, "partial": 1}
    left = again.work_left()
    total = sum(c.num_tasks for c in again.chains)
    assert left.tasks == total - done.num_tasks - 1
    assert not (tmp_path / "clipcl.sqlite").exists()  # planning writes no store
