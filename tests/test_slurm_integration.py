"""The Slurm backend against a real single-node Slurm (``scripts/slurm-dev.sh up``).

Nothing here is mocked: jobs go through sbatch (submitit or a generated script), run on the
node, are tracked with sacct/squeue, cancelled with scancel and requeued by scontrol or by
the time limit. Where Slurm is not running the tests are skipped — except under ``CI=true``,
where a missing Slurm is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from clipcl.results.records import RunDir
from clipcl.results.store import ChainRow, JobRow, ResultsStore
from clipcl.slurm import commands
from clipcl.slurm.dispatch import submit_sweep
from clipcl.slurm.track import wait
from clipcl.sweeps import expand, load_sweep
from clipcl.workers.chain import chain_locked
from tests.helpers import direct_matrix

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "clipcl.cli"]


def _slurm_usable() -> bool:
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return proc.returncode == 0 and any(
        s.strip("*~#") in {"idle", "mix", "alloc", "comp"} for s in proc.stdout.split()
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """A usable Slurm: the running one, or the project's development cluster brought up."""
    dev_conf = Path(os.environ.get("CLIPCL_SLURM_DIR", "/var/tmp/clipcl-slurm")) / "etc/slurm.conf"
    if "SLURM_CONF" not in os.environ and dev_conf.is_file():
        os.environ["SLURM_CONF"] = str(dev_conf)  # clients and the jobs they submit use it
    if not _slurm_usable() and os.geteuid() == 0:
        subprocess.run(["bash", str(REPO / "scripts" / "slurm-dev.sh"), "up"], check=False)
    if not _slurm_usable():
        if os.environ.get("CI") == "true":
            pytest.fail("Slurm is not usable in CI (scripts/slurm-dev.sh up failed)")
        pytest.skip("no usable Slurm here (run scripts/slurm-dev.sh up as root)")


def write_sweep(tmp_path: Path, name: str, **over: Any) -> Path:
    """A small finetune sweep on the smoke benchmark rooted in ``tmp_path/runs``."""
    data: dict[str, Any] = {
        "name": name,
        "root": str(tmp_path / "runs"),
        "model": {"arch": "tiny"},
        "benchmarks": ["smoke"],
        "methods": {"finetune": {"train_mode": "whole"}},
        "train": {"iterations": 6},
        "seeds": [0, 1, 2],
        "resources": {"cpus": 1, "mem_gb": 2, "timeout_min": 10},
        "slurm": {"signal_delay_s": 60},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"clipcl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def chain_matrix(root: Path, entry: Any) -> list[Any]:
    from clipcl.data import get_benchmark
    from clipcl.workers import load_result

    records = RunDir(root / "chains" / entry.chain_id)
    return load_result(entry.spec, get_benchmark(entry.benchmark), records).to_json()["matrix"]


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def sacct_rows(job_id: str) -> list[str]:
    proc = subprocess.run(
        ["sacct", "-n", "-P", "-X", "--duplicates", "--format=JobID,State", "-j", job_id],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.split()


def store_jobs(root: Path) -> list[JobRow]:
    with ResultsStore(root) as store:
        return store.jobs(backend="slurm")


def settle(root: Path, timeout_s: float = 120) -> list[JobRow]:
    """Refresh until no recorded job is queued or running (a done chain's job may still be
    exiting); return the jobs."""
    from clipcl.slurm.track import refresh

    def ended() -> bool:
        with ResultsStore(root) as store:
            refresh(store, root)
        return all(j.state not in {"queued", "running"} for j in store_jobs(root))

    wait_for(ended, timeout_s, "the jobs to end")
    return store_jobs(root)


def progress(root: Path) -> dict[str, ChainRow]:
    with ResultsStore(root) as store:
        return {r.chain_id: r for r in store.chain_progress()}


def test_whole_mode_sweep_matches_direct_runs_and_splits_arrays(
    slurm_cluster: None, tmp_path: Path
) -> None:
    """3 chains, MaxArraySize forced to 2 → two arrays; numbers equal the local backend's."""
    sweep_file = write_sweep(tmp_path, "whole3")
    sweep = load_sweep(sweep_file)
    entries = expand(sweep, str(sweep_file))
    root = Path(sweep.root)
    cli("plan", str(sweep_file))  # creates nothing Slurm-side
    with ResultsStore(root) as store:
        from clipcl.orchestrator.plan import chain_record

        store.record_sweep(sweep.name, str(sweep_file), {}, [chain_record(e) for e in entries])
        sub = submit_sweep(sweep, entries, root, store, source=str(sweep_file), max_array=2)
    arrays = {r["job_id"].split("_")[0] for r in sub.submitted}
    assert len(sub.submitted) == 3 and len(arrays) == 2
    first, second = sorted(arrays, key=int)
    assert sorted(r["job_id"] for r in sub.submitted) == [f"{first}_0", f"{first}_1", second]
    final = wait(root, [e.chain_id for e in entries], timeout_s=600)
    assert final == {e.chain_id: "done" for e in entries}, cli("status", str(sweep_file)).stdout
    # the same sweep on the local backend gives the same numbers, chain by chain
    local_root = tmp_path / "local"
    cli("submit", str(sweep_file), "--backend", "local", "--root", str(local_root), "--follow")
    for e in entries:
        assert chain_matrix(root, e) == chain_matrix(local_root, e)
    for job in settle(root):
        assert sacct_rows(job.job_id) == [f"{job.job_id}|COMPLETED"]
        assert job.state == "done"
    logs = cli("logs", entries[0].chain_id, "--root", str(root)).stdout
    assert "task 2 (stripes) finished" in logs
    table = json.loads(cli("results", str(sweep_file), "--format", "json").stdout)
    local = json.loads(
        cli("results", str(sweep_file), "--format", "json", "--root", str(local_root)).stdout
    )
    assert table == local and table[0]["seeds"] == 3


def test_per_task_mode_one_job_per_task_same_numbers(slurm_cluster: None, tmp_path: Path) -> None:
    sweep_file = write_sweep(tmp_path, "pertask3", slurm={"chain_mode": "per-task"})
    sweep = load_sweep(sweep_file)
    entries = expand(sweep, str(sweep_file))
    root = Path(sweep.root)
    out = cli("submit", str(sweep_file), "--backend", "slurm").stdout
    assert "submitted 3 chains as 9 jobs" in out, out
    final = wait(root, [e.chain_id for e in entries], timeout_s=900)
    assert final == {e.chain_id: "done" for e in entries}, cli("status", str(sweep_file)).stdout
    jobs = settle(root)
    for e in entries:
        mine = sorted((j for j in jobs if j.chain_id == e.chain_id), key=lambda j: j.first_task)
        assert [(j.first_task, j.last_task) for j in mine] == [(0, 0), (1, 1), (2, 2)]
        assert all(sacct_rows(j.job_id) == [f"{j.job_id}|COMPLETED"] for j in mine)
        assert chain_matrix(root, e) == direct_matrix(e.spec, tmp_path / "direct" / e.chain_id)
    status = cli("status", str(sweep_file)).stdout
    assert "3 done" in status
    # everything is finished: a second submit submits nothing
    assert "submitted 0 chains" in cli("submit", str(sweep_file), "--backend", "slurm").stdout


def _one_slow_chain(tmp_path: Path, name: str, **over: Any) -> tuple[Path, Any, Path]:
    sweep_file = write_sweep(tmp_path, name, **{"seeds": [0], "train": {"iterations": 60}, **over})
    sweep = load_sweep(sweep_file)
    (entry,) = expand(sweep, str(sweep_file))
    return sweep_file, entry, Path(sweep.root)


def test_scancel_then_submit_resumes_from_last_finished_task(
    slurm_cluster: None, tmp_path: Path
) -> None:
    sweep_file, entry, root = _one_slow_chain(tmp_path, "cancelme")
    records = RunDir(root / "chains" / entry.chain_id)
    cli("submit", str(sweep_file), "--backend", "slurm")
    wait_for(lambda: len(records.completed()) >= 1, 300, "the first task to finish")
    out = cli("cancel", str(sweep_file)).stdout
    assert "1 Slurm jobs scancelled" in out, out
    (job,) = store_jobs(root)
    wait_for(lambda: "CANCELLED" in " ".join(sacct_rows(job.job_id)), 60, "scancel")
    run_dir = root / "chains" / entry.chain_id
    wait_for(lambda: not chain_locked(run_dir), 60, "the worker to die")  # after KillWait
    done_before = len(records.completed())
    assert 1 <= done_before < 3, "cancelled too late to exercise resume"
    assert progress(root)[entry.chain_id].state == "cancelled"

    out = cli("submit", str(sweep_file), "--backend", "slurm").stdout
    assert "submitted 1 chains as 1 jobs" in out
    assert wait(root, [entry.chain_id], timeout_s=600) == {entry.chain_id: "done"}
    logs = cli("logs", entry.chain_id, "--root", str(root)).stdout
    assert f"resuming after task {done_before} of 3" in logs
    assert chain_matrix(root, entry) == direct_matrix(entry.spec, tmp_path / "direct")


def test_scontrol_requeue_resumes(slurm_cluster: None, tmp_path: Path) -> None:
    sweep_file, entry, root = _one_slow_chain(tmp_path, "requeueme")
    records = RunDir(root / "chains" / entry.chain_id)
    cli("submit", str(sweep_file), "--backend", "slurm")
    wait_for(lambda: len(records.completed()) >= 1, 300, "the first task to finish")
    (job,) = store_jobs(root)
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    done_before = len(records.completed())
    assert done_before < 3, "requeued too late to exercise resume"
    assert wait(root, [entry.chain_id], timeout_s=900) == {entry.chain_id: "done"}
    assert "REQUEUED" in " ".join(sacct_rows(job.job_id))  # the first run, then the second
    logs = cli("logs", entry.chain_id, "--root", str(root)).stdout
    assert "resuming after task" in logs
    assert chain_matrix(root, entry) == direct_matrix(entry.spec, tmp_path / "direct")


def test_generated_sbatch_script_lands_results_in_the_store(
    slurm_cluster: None, tmp_path: Path
) -> None:
    sweep_file = write_sweep(
        tmp_path,
        "plain",
        seeds=[0, 1],
        slurm={
            "job_name": "clipcl $(touch pwned-name); `touch pwned-tick` 'q'",
            "additional_parameters": {"comment": "a && touch pwned-comment | b"},
        },
    )
    script = tmp_path / "plain.sbatch"
    out = cli("sbatch", str(sweep_file), "-o", str(script)).stdout
    assert "2 chains" in out
    proc = subprocess.run(
        ["sbatch", "--parsable", str(script)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    array = proc.stdout.strip().split(";")[0]
    comment = subprocess.run(  # accounting keeps no comments: ask the controller now
        ["squeue", "-h", "-r", "-j", f"{array}_0", "-o", "%k"], capture_output=True, text=True
    ).stdout.strip()
    wait_for(
        lambda: (
            subprocess.run(
                ["squeue", "-h", "-j", array], capture_output=True, text=True
            ).stdout.strip()
            == ""
        ),
        600,
        "the array to finish",
    )
    name = subprocess.run(
        ["sacct", "-n", "-P", "-X", "--format=JobName", "-j", f"{array}_0"],
        capture_output=True,
        text=True,
    ).stdout.split("\n")[0]
    # the values reached Slurm literally: nothing in them was run by a shell
    assert name == "clipcl $(touch pwned-name); `touch pwned-tick` 'q'"
    assert comment == "a && touch pwned-comment | b"
    assert not list(tmp_path.glob("pwned*")) and not list(REPO.glob("pwned*"))
    table = json.loads(cli("results", str(sweep_file), "--format", "json").stdout)
    assert table[0]["seeds"] == 2
    sweep = load_sweep(sweep_file)
    for e in expand(sweep, str(sweep_file)):
        logs = cli("logs", e.chain_id, "--root", sweep.root).stdout
        assert f"chain {e.chain_id} on" in logs and "task 2 (stripes) finished" in logs


@pytest.mark.parametrize(
    "slurm,resources,needle",
    [
        ({"partition": "nosuch"}, {}, "slurm.partition 'nosuch' does not exist"),
        ({}, {"cpus": 999}, "resources.cpus=999"),
        ({"constraint": "nosuchfeature"}, {}, "the cluster refuses the job request"),
    ],
)
def test_impossible_requests_fail_before_anything_is_submitted(
    slurm_cluster: None, tmp_path: Path, slurm: dict, resources: dict, needle: str
) -> None:
    sweep_file = write_sweep(tmp_path, "bad", slurm=slurm, resources=resources)
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    proc = cli("submit", str(sweep_file), "--backend", "slurm", check=False)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and str(sweep_file) in proc.stderr
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    assert after == before
    assert not (tmp_path / "runs" / "chains").exists() or not store_jobs(tmp_path / "runs")


def test_max_array_size_is_read_from_the_cluster(slurm_cluster: None) -> None:
    assert commands.max_array_size() == int(commands.config_value("MaxArraySize") or 1001)


def test_job_hitting_its_time_limit_is_requeued_and_finishes(
    slurm_cluster: None, tmp_path: Path
) -> None:
    """A 2-minute limit and a longer chain: USR2, requeue, resume after the last finished task."""
    sweep_file, entry, root = _one_slow_chain(
        tmp_path,
        "timeout",
        train={"iterations": 350},
        resources={"timeout_min": 2},
        slurm={"signal_delay_s": 30},
    )
    cli("submit", str(sweep_file), "--backend", "slurm")
    assert wait(root, [entry.chain_id], timeout_s=900) == {entry.chain_id: "done"}
    (job,) = settle(root)
    info = subprocess.run(
        ["scontrol", "show", "job", "-o", job.job_id], capture_output=True, text=True
    ).stdout
    restarts = [int(f.split("=")[1]) for f in info.split() if f.startswith("Restarts=")]
    history = " ".join(sacct_rows(job.job_id))
    assert (restarts and restarts[0] >= 1) or "REQUEUED" in history, (info, history)
    logs = cli("logs", entry.chain_id, "--root", str(root)).stdout
    assert "s left: stopping" in logs and "resuming after task" in logs
    assert "TIMEOUT" not in history


def test_sbatch_script_requeues_itself_on_usr2_and_resumes(
    slurm_cluster: None, tmp_path: Path
) -> None:
    """USR2 to the batch shell (as on preemption) → the trap requeues → the element resumes."""
    sweep_file, entry, root = _one_slow_chain(tmp_path, "plainusr2")
    script = tmp_path / "usr2.sbatch"
    cli("sbatch", str(sweep_file), "-o", str(script))
    proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    element = f"{proc.stdout.strip().split(';')[0]}_0"
    records = RunDir(root / "chains" / entry.chain_id)
    wait_for(lambda: len(records.completed()) >= 1, 300, "the first task to finish")
    subprocess.run(["scancel", "--batch", "--signal=USR2", element], check=True)
    assert len(records.completed()) < 3, "signalled too late to exercise resume"

    def finished() -> bool:
        return (
            len(records.completed()) == 3
            and not subprocess.run(
                ["squeue", "-h", "-j", element], capture_output=True, text=True
            ).stdout.strip()
        )

    wait_for(finished, 600, "the requeued element to finish")
    logs = cli("logs", entry.chain_id, "--root", str(root)).stdout
    assert f"requeueing job {element}" in logs or "requeueing job" in logs
    assert "resuming after task" in logs
    assert "REQUEUED" in " ".join(sacct_rows(element))
    assert chain_matrix(root, entry) == direct_matrix(entry.spec, tmp_path / "direct")


def test_task_longer_than_the_time_limit_finishes_through_requeues(
    slurm_cluster: None, tmp_path: Path
) -> None:
    """One task of 1200 steps (~2 minutes of training; 5 jobs of 45 s on a loaded 2-core
    machine), a 1-minute limit, ``max_requeues: 1``: every USR2 stops the worker after its step
    with a snapshot and requeues the job; requeues that made progress are not counted, so the
    task finishes (a plain countdown would give up at the second USR2)."""
    from clipcl.resources import Resources
    from clipcl.slurm.settings import SlurmSettings
    from clipcl.slurm.submit import ChainTask, make_executor
    from clipcl.workers import run_chain
    from tests.helpers import tiny_spec

    spec = tiny_spec("finetune", iterations=1200)
    run_dir = tmp_path / "runs" / "chains" / spec.chain_id
    records = RunDir(run_dir)
    records.place_spec(spec)
    settings = SlurmSettings(signal_delay_s=15, max_requeues=1)
    resources = Resources(cpus=1, mem_gb=2, timeout_min=1)
    executor = make_executor(tmp_path / "runs", settings, resources, "clipcl-longtask")
    job = executor.submit(ChainTask(str(run_dir), None, 1, settings.signal_delay_s))
    # meanwhile, the reference in this process (one thread, as a job's worker)
    reference = run_chain(spec, tmp_path / "direct", until_task=1).to_json()["matrix"]

    def ended() -> bool:  # gone from the queue, and accounting has caught up (slurmdbd lags)
        queued = subprocess.run(["squeue", "-h", "-j", str(job.job_id)], capture_output=True)
        if queued.stdout.strip():
            return False
        last = sacct_rows(str(job.job_id))[-1:]
        return bool(last) and last[0].split("|")[1] not in ("RUNNING", "PENDING", "REQUEUED")

    wait_for(ended, 1500, "the long task's job to end")
    history = sacct_rows(str(job.job_id))
    assert records.tasks_done() == 1, (history, job.stderr())
    assert history.count(f"{job.job_id}|REQUEUED") >= 2, history
    assert "TIMEOUT" not in " ".join(history) and history[-1].endswith("COMPLETED"), history
    matrix = chain_matrix_of(spec, run_dir)
    assert matrix[0] == reference[0]


def chain_matrix_of(spec: Any, run_dir: Path) -> list[Any]:
    from clipcl.data import get_benchmark
    from clipcl.workers import load_result

    result = load_result(spec, get_benchmark(spec.benchmark), RunDir(run_dir))
    return result.to_json()["matrix"]
