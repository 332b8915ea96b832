"""Sweeps end to end through the CLI: plan, submit (local and a real local Ray), status, results.

Integration tests: real worker processes and, for ``ray``, a real local Ray started by
``clipcl submit --backend ray``; nothing is mocked.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipcl.errors import ClipclError
from clipcl.results.metrics import mtil_metrics
from clipcl.results.records import RunDir
from clipcl.workers import run_chain
from clipcl.workers.chain import ChainBusy, chain_lock
from tests.helpers import tiny_spec

SWEEP = Path(__file__).parent / "data" / "sweeps" / "smoke4.yaml"
CLIPCL = [sys.executable, "-m", "clipcl.cli"]


def clipcl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIPCL, *args], capture_output=True, text=True, timeout=900)


def _metrics_from_raw_rows(root: Path) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {"transfer": [], "avg": [], "last": []}
    for run_dir in sorted((root / "chains").iterdir()):
        matrix, _ = RunDir(run_dir).matrix(3)
        m = mtil_metrics(matrix)
        for key in values:
            values[key].append(getattr(m, key))
    return values


def _check_table_matches_raw_rows(root: Path) -> None:
    res = clipcl("results", str(SWEEP), "--root", str(root), "--format", "json")
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)
    raw = _metrics_from_raw_rows(root)
    assert row["seeds"] == 4
    for key, vals in raw.items():
        assert row[f"{key}_mean"] == pytest.approx(np.mean(vals), abs=1e-9), key
        assert row[f"{key}_std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-9), key


def _submit_twice(root: Path, backend: str) -> None:
    first = clipcl("submit", str(SWEEP), "--backend", backend, "--root", str(root), "--follow")
    assert first.returncode == 0, first.stderr + first.stdout
    assert "4 to dispatch" in first.stdout
    status = clipcl("status", str(SWEEP), "--root", str(root))
    assert status.returncode == 0 and "4 done" in status.stdout, status.stdout
    again = clipcl("submit", str(SWEEP), "--backend", backend, "--root", str(root), "--follow")
    assert again.returncode == 0 and "0 to dispatch" in again.stdout, again.stdout
    _check_table_matches_raw_rows(root)


@pytest.mark.slow
def test_plan_submit_local_then_resubmit_runs_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    plan = clipcl("plan", str(SWEEP), "--root", str(root))
    assert plan.returncode == 0 and "4 new" in plan.stdout and not root.exists()
    _submit_twice(root, "local")
    plan = clipcl("plan", str(SWEEP), "--root", str(root))
    assert "4 done" in plan.stdout and "work left: 0 task trainings" in plan.stdout


def test_plan_counts_epochs_when_the_sweep_trains_by_epochs(tmp_path: Path) -> None:
    sweep = tmp_path / "epochs.yaml"
    sweep.write_text(
        "name: epochs\nbenchmarks: [smoke]\nmethods: {finetune: {}}\n"
        "train: {iterations: null, epochs: 2}\nseeds: [0, 1]\n"
    )
    plan = clipcl("plan", str(sweep), "--root", str(tmp_path / "runs"))
    assert plan.returncode == 0, plan.stderr
    # 2 chains × 3 smoke tasks × 2 epochs; iterations are unknown until the data is read
    assert "work left: 6 task trainings, 12 task-epochs" in plan.stdout


@pytest.mark.ray
@pytest.mark.slow
def test_submit_on_a_real_local_ray(tmp_path: Path) -> None:
    _submit_twice(tmp_path / "root", "ray")


def test_a_running_chain_cannot_be_started_twice(tmp_path: Path) -> None:
    spec = tiny_spec(iterations=2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as other:  # another process's lock (own open file)
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ChainBusy, match="already running"):
            run_chain(spec, run_dir)
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
    with chain_lock(run_dir, spec.chain_id):  # re-entrant in the holding process
        assert run_chain(spec, run_dir).trained_now == [0, 1, 2]


def test_bad_backend_is_refused(tmp_path: Path) -> None:
    res = clipcl("submit", str(SWEEP), "--backend", "rayy", "--root", str(tmp_path / "r"))
    assert res.returncode == 2 and "did you mean 'ray'" in res.stderr
    assert not (tmp_path / "r").exists()


def test_results_for_unknown_root_is_an_error(tmp_path: Path) -> None:
    res = clipcl("status", str(SWEEP), "--root", str(tmp_path / "none"))
    assert res.returncode == 2 and "no results store" in res.stderr


def test_chainbusy_is_a_user_error() -> None:
    assert issubclass(ChainBusy, ClipclError)


@pytest.mark.slow
def test_a_dead_coordinator_loses_nothing_and_resubmit_does_not_double_run(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.read_text().replace("iterations: 6", "iterations: 40"))
    first = clipcl("submit", str(sweep), "--backend", "local", "--root", str(root), "--jobs", "2")
    assert first.returncode == 0 and "coordinator pid" in first.stdout, first.stderr
    markers = root / "coordinators"

    def started() -> bool:
        return any(_done_tasks(d) > 0 for d in (root / "chains").glob("*"))

    deadline = time.time() + 300
    while not (started() and list(markers.glob("*.json"))) and time.time() < deadline:
        time.sleep(0.2)
    (marker,) = list(markers.glob("*.json"))
    os.kill(json.loads(marker.read_text())["pid"], signal.SIGKILL)  # the coordinator dies
    done_before = {d.name: _done_tasks(d) for d in (root / "chains").glob("*")}
    assert sum(done_before.values()) < 4 * 3, "killed too late"

    again = clipcl(
        "submit", str(sweep), "--backend", "local", "--root", str(root), "--follow", "--jobs", "2"
    )
    assert again.returncode == 0, again.stderr
    status = clipcl("status", str(sweep), "--root", str(root))
    assert "4 done" in status.stdout, status.stdout + again.stderr
    for run_dir in (root / "chains").glob("*"):  # no task was trained twice at the same time
        assert _done_tasks(run_dir) == 3
        log = (run_dir / "worker.log").read_text() if (run_dir / "worker.log").exists() else ""
        assert "Traceback" not in log


def _done_tasks(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / "state.json").read_text())["completed"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_cancel_then_retry_resumes_the_sweep(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.read_text().replace("iterations: 6", "iterations: 40"))
    first = clipcl("submit", str(sweep), "--backend", "local", "--root", str(root), "--jobs", "2")
    assert first.returncode == 0, first.stderr
    deadline = time.time() + 300
    while time.time() < deadline and not any(
        _done_tasks(d) > 0 for d in (root / "chains").glob("*")
    ):
        time.sleep(0.2)
    cancel = clipcl("cancel", str(sweep), "--root", str(root))
    assert cancel.returncode == 0 and "via their coordinator" in cancel.stdout, cancel.stderr
    while time.time() < deadline and list((root / "coordinators").glob("*.json")):
        time.sleep(0.2)  # the coordinator cancels its jobs and exits
    status = clipcl("status", str(sweep), "--root", str(root))
    assert "cancelled" in status.stdout and "4 done" not in status.stdout, status.stdout
    partial = {d.name: _done_tasks(d) for d in (root / "chains").glob("*")}
    retry = clipcl("retry", str(sweep), "--root", str(root), "--follow", "--jobs", "2")
    assert retry.returncode == 0, retry.stderr
    status = clipcl("status", str(sweep), "--root", str(root))
    assert "4 done" in status.stdout, status.stdout
    # chains cancelled part-way resumed instead of starting over (a chain may have finished
    # all its tasks before the cancel reached it: nothing to resume then)
    resumed = [c for c, n in partial.items() if 0 < n < 3]
    for chain_id in resumed:
        log = (root / "chains" / chain_id / "worker.log").read_text()
        assert "resuming after task" in log, chain_id
