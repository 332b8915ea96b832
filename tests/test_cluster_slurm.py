"""A real multi-node Slurm cluster (scripts/cluster-dev.sh up slurm: a controller with its own
munged, two 1-CPU compute nodes w1/w2 and a login node, each in its own network, UTS, PID and
mount namespaces on a private bridge; no accounting, so clipcl reads states from squeue): a job
array spreads over both nodes, a node that cannot see the run root is refused before anything is
submitted, and a node whose slurmd dies costs an attempt while its orphan writes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from clipcl.results.records import RunDir
from clipcl.results.store import ResultsStore
from clipcl.sweeps import expand, load_sweep
from tests.helpers import direct_matrix
from tests.test_cluster import CLIPCL, SCRIPT, _hosts, _sweep

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but the cluster tests need root (network namespaces)")
        pytest.skip("network namespaces need root")
    if shutil.which("slurmctld") is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "CI=true but Slurm is not installed (make test runs scripts/slurm-dev.sh up)"
            )
        pytest.skip("Slurm is not installed (scripts/slurm-dev.sh up)")
    state = Path(tempfile.mkdtemp(prefix="cls-", dir="/tmp"))
    env = {**os.environ, "CLIPCL_CLUSTER_DIR": str(state)}
    env.pop("SLURM_CONF", None)  # the login node gets the namespaced cluster's
    up = subprocess.run(
        [str(SCRIPT), "up", "slurm", "--nodes", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        yield env, state
    finally:
        down = subprocess.run(
            [str(SCRIPT), "down", "slurm"], capture_output=True, text=True, env=env, timeout=120
        )
        shutil.rmtree(state, ignore_errors=True)
        assert down.returncode == 0, down.stderr


def _slurm(cluster, node: str, *cmd: str, **run) -> subprocess.CompletedProcess:
    env, _ = cluster
    return subprocess.run(
        [str(SCRIPT), "exec", "slurm", node, "--", *cmd],
        capture_output=True,
        text=True,
        env=env,
        timeout=run.pop("timeout", 120),
        **run,
    )


def _slurm_login(cluster, cwd: Path, *args: str, extra_env=()) -> subprocess.Popen:
    env, _ = cluster
    cmd = [str(SCRIPT), "exec", "slurm", "login", "--", "env", *extra_env]
    cmd += ["bash", "-c", f'cd "{cwd}" && exec "$0" "$@"', str(CLIPCL), *args]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _slurm_sweep(tmp_path: Path, name: str, seeds: list[int], iterations: int) -> Path:
    path = _sweep(tmp_path, name, seeds, iterations)
    path.write_text(path.read_text() + "resources: {mem_gb: 2}\n")
    return path


def test_a_slurm_job_array_spreads_over_both_nodes(slurm_cluster, tmp_path: Path) -> None:
    sweep = _slurm_sweep(tmp_path, "spread", [0, 1, 2, 3], 20)
    proc = _slurm_login(
        slurm_cluster, tmp_path, "submit", str(sweep), "--backend", "slurm", "--follow"
    )
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    assert "is shared by 2 node(s) of partition debug (w1, w2)" in out, out[-2000:]
    entries = expand(load_sweep(sweep))
    root = tmp_path / "runs"
    hosts = {e.chain_id: _hosts(RunDir.of(root, e.chain_id)) for e in entries}
    assert all(len(set(h)) == 1 and len(h) == 3 for h in hosts.values()), hosts
    assert {h[0] for h in hosts.values()} == {"w1", "w2"}, hosts
    arrays = set()
    for e in entries:
        state = RunDir.of(root, e.chain_id).load_state()
        jobs = {t.job_id for t in state.completed.values()}
        ips = {t.ip for t in state.completed.values()}
        assert len(jobs) == 1 and "_" in next(iter(jobs)), jobs  # one element of an array
        arrays.add(next(iter(jobs)).split("_")[0])
        assert ips == {"10.214.0.11" if hosts[e.chain_id][0] == "w1" else "10.214.0.12"}, ips
    assert len(arrays) == 1, arrays  # one job array
    for e in entries[:2]:
        got = RunDir.of(root, e.chain_id).matrix(3)[0]
        np.testing.assert_array_equal(got, direct_matrix(e.spec, tmp_path / f"direct-{e.seed}"))


def test_a_slurm_node_that_cannot_see_the_run_root_is_refused(
    slurm_cluster, tmp_path: Path
) -> None:
    """Node w2's mount namespace gets its own tmpfs over the run root: its probe job writes
    there, the login node cannot see the file, so submit refuses before recording anything."""
    sweep = _slurm_sweep(tmp_path, "private", [0, 1], 20)
    root = tmp_path / "runs"
    root.mkdir()
    mounted = _slurm(slurm_cluster, "w2", "mount", "-t", "tmpfs", "tmpfs", str(root))
    assert mounted.returncode == 0, mounted.stderr
    try:
        proc = _slurm_login(slurm_cluster, tmp_path, "submit", str(sweep), "--backend", "slurm")
        out, _ = proc.communicate(timeout=300)
    finally:
        assert _slurm(slurm_cluster, "w2", "umount", str(root)).returncode == 0
    assert proc.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert "node w2 does not share the run root" in errors[0], errors[0]
    assert str(root) in errors[0] and "nothing was submitted" in errors[0]
    assert list(root.iterdir()) == []  # no store, no chain, no probe left behind
    queue = _slurm(slurm_cluster, "login", "squeue", "-h", "-n", "clipcl-private")
    assert queue.returncode == 0 and queue.stdout.strip() == "", queue


def test_a_slurm_node_that_stops_answering_costs_an_attempt_and_its_orphan_writes_nothing(
    slurm_cluster, tmp_path: Path
) -> None:
    """Runs last: it kills the slurmd of the node the chain starts on. The node goes DOWN,
    Slurm requeues the job on the other node, while the orphaned copy trains on. The chain
    lock is switched off (CLIPCL_TEST_NO_LOCK=1, as on a filesystem whose flock is host-local):
    only the attempt fencing keeps the orphan from writing."""
    sweep = _slurm_sweep(tmp_path, "kill", [0], 200)
    (entry,) = expand(load_sweep(sweep))
    root = tmp_path / "runs"
    run = RunDir.of(root, entry.chain_id)
    proc = _slurm_login(
        slurm_cluster,
        tmp_path,
        "submit",
        str(sweep),
        "--backend",
        "slurm",
        "--follow",
        extra_env=("CLIPCL_TEST_NO_LOCK=1",),
    )
    deadline = time.monotonic() + 240
    while not run.attempts():  # attempt 1 began
        assert time.monotonic() < deadline and proc.poll() is None, "the chain did not start"
        time.sleep(0.2)
    victim = run.attempts()[0]["host"]
    survivor = {"w1": "w2", "w2": "w1"}[victim]
    killed = subprocess.run(
        [str(SCRIPT), "kill", "slurm", victim],
        capture_output=True,
        text=True,
        env=slurm_cluster[0],
        timeout=60,
    )
    assert killed.returncode == 0, killed.stderr
    reference = direct_matrix(entry.spec, tmp_path / "undisturbed")  # while the cluster works
    out, _ = proc.communicate(timeout=500)
    assert proc.returncode == 0, out[-3000:]
    attempts = run.attempts()
    assert [(a["attempt"], a["host"]) for a in attempts] == [(1, victim), (2, survivor)]
    assert attempts[0]["job_id"] == attempts[1]["job_id"]  # the same job, requeued
    state = run.verified_state()
    assert state.finished
    for t in state.completed.values():  # attempt 1 finished nothing once attempt 2 began
        assert t.attempt == 2 or t.finished_at < attempts[1]["started_at"], t
    assert state.completed[2].host == survivor
    np.testing.assert_array_equal(run.matrix(3)[0], reference)
    # the orphan was stopped by the fence, without a traceback or submitit's result file
    job = attempts[0]["job_id"]
    err = (root / "slurm" / "logs" / f"{job}_0_log.err").read_text()
    assert "attempt 1 is superseded by attempt 2 of this chain" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    left = _slurm(slurm_cluster, victim, "pgrep", "-f", "submitit")
    assert left.stdout.strip() == "", left.stdout  # the orphan is gone
    status = _slurm_login(slurm_cluster, tmp_path, "status", str(sweep), "--chains")
    shown, _ = status.communicate(timeout=120)
    assert status.returncode == 0, shown
    assert f"attempt 1: {victim} (10.214.0.1{victim[1]})" in shown, shown
    assert f"attempt 2: {survivor} (10.214.0.1{survivor[1]})" in shown, shown
    assert f"task 2: attempt 2 on {survivor}, cpu" in shown, shown
    with ResultsStore(root) as store:
        store.ingest_root()
        row = next(r for r in store.chain_progress() if r.chain_id == entry.chain_id)
        rows = store.eval_rows_frame()
    assert (row.state, row.attempts) == ("done", 2)
    assert len(rows[rows.chain_id == entry.chain_id]) == 3 + 3 * 3
