"""A real multi-node Ray cluster (scripts/cluster-dev.sh: a head, two 1-CPU workers and a login
node, each in its own network, UTS, PID and mount namespaces on a private bridge): a sweep
submitted from the login node lands chains on both workers, as the tasks' provenance shows, and a
worker node killed mid-chain costs an attempt, not a result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from clipcl.results.records import RunDir
from clipcl.results.store import ResultsStore
from clipcl.sweeps import expand, load_sweep
from tests.helpers import direct_matrix

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "cluster-dev.sh"
CLIPCL = Path(sys.executable).parent / "clipcl"


@pytest.fixture(scope="module")
def ray_cluster():
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but the cluster tests need root (network namespaces)")
        pytest.skip("network namespaces need root")
    # short: Ray's socket paths under it must stay within AF_UNIX's 107 bytes
    state = Path(tempfile.mkdtemp(prefix="clc-", dir="/tmp"))
    env = {**os.environ, "CLIPCL_CLUSTER_DIR": str(state)}
    up = subprocess.run(
        [str(SCRIPT), "up", "ray", "--nodes", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        yield up.stdout.strip().splitlines()[-1], env, state
    finally:
        down = subprocess.run(
            [str(SCRIPT), "down", "ray"], capture_output=True, text=True, env=env, timeout=120
        )
        shutil.rmtree(state, ignore_errors=True)
        assert down.returncode == 0, down.stderr


def _on_login(cluster, *args: str, **popen) -> subprocess.Popen:
    address, env, state = cluster
    cmd = [str(SCRIPT), "exec", "ray", "login", "--", "env", "RAY_AUTH_MODE=disabled"]
    cmd += [f"HOME={state / 'ray' / 'home'}", str(CLIPCL), *args, "--ray-address", address]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _sweep(tmp_path: Path, name: str, seeds: list[int], iterations: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nroot: runs\nbenchmarks: [smoke]\nmethods: {{finetune: {{}}}}\n"
        f"train: {{iterations: {iterations}}}\nseeds: {seeds}\n"
    )
    return path


def _hosts(run: RunDir) -> list[str]:
    return [str(t.host) for _, t in sorted(run.load_state().completed.items())]


def test_a_sweep_from_the_login_node_runs_on_both_workers(ray_cluster, tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, "spread", [0, 1, 2, 3], 20)
    proc = _on_login(ray_cluster, "submit", str(sweep), "--backend", "ray", "--follow")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    entries = expand(load_sweep(sweep))
    root = tmp_path / "runs"
    hosts = {e.chain_id: _hosts(RunDir.of(root, e.chain_id)) for e in entries}
    assert all(len(set(h)) == 1 and len(h) == 3 for h in hosts.values()), hosts
    assert {h[0] for h in hosts.values()} == {"w1", "w2"}, hosts  # both workers, never the head
    for e in entries[:2]:
        run = RunDir.of(root, e.chain_id)
        got = run.matrix(3)[0]
        np.testing.assert_array_equal(got, direct_matrix(e.spec, tmp_path / f"direct-{e.seed}"))
        ips = {t.ip for t in run.load_state().completed.values()}
        assert ips <= {"10.213.0.11", "10.213.0.12"} and len(ips) == 1, ips


def test_a_node_that_cannot_see_the_run_root_is_refused(ray_cluster, tmp_path: Path) -> None:
    """Node w2 gets a private mount over the run root (its own tmpfs): the probe it writes there
    is invisible to the login node, so submit refuses, naming the node and the path."""
    _, env, _ = ray_cluster
    sweep = _sweep(tmp_path, "private", [0, 1], 20)
    root = tmp_path / "runs"
    root.mkdir()

    def on_w2(*cmd: str) -> None:
        done = subprocess.run(
            [str(SCRIPT), "exec", "ray", "w2", "--", *cmd], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr

    on_w2("mount", "-t", "tmpfs", "tmpfs", str(root))
    try:
        proc = _on_login(ray_cluster, "submit", str(sweep), "--backend", "ray", "--follow")
        out, _ = proc.communicate(timeout=300)
    finally:
        on_w2("umount", str(root))
    assert proc.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert "node w2 (10.213.0.12) does not share the run root" in errors[0], errors[0]
    assert str(root) in errors[0] and "nothing was submitted" in errors[0]
    assert list(root.iterdir()) == []  # no store, no chain, no probe left behind


def test_a_killed_worker_node_costs_an_attempt_not_a_result(ray_cluster, tmp_path: Path) -> None:
    """Runs last: it kills node w1 (the module's cluster keeps w2 only)."""
    sweep = _sweep(tmp_path, "kill", [0, 1], 150)
    entries = expand(load_sweep(sweep))
    root = tmp_path / "runs"
    proc = _on_login(ray_cluster, "submit", str(sweep), "--backend", "ray", "--follow")
    victim = None
    deadline = time.monotonic() + 240
    while victim is None:  # the chain w1 trains, before its first task is finished
        assert time.monotonic() < deadline and proc.poll() is None, "no chain started on w1"
        for e in entries:
            run = RunDir.of(root, e.chain_id)
            started = run.attempts()
            if started and started[-1]["host"] == "w1":
                victim = e
        time.sleep(0.2)
    assert not RunDir.of(root, victim.chain_id).load_state().finished
    _, env, _ = ray_cluster
    kill = subprocess.run(
        [str(SCRIPT), "kill", "ray", "w1"], capture_output=True, text=True, env=env, timeout=60
    )
    assert kill.returncode == 0, kill.stderr
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    run = RunDir.of(root, victim.chain_id)
    attempts = run.attempts()
    assert [(a["attempt"], a["host"]) for a in attempts] == [(1, "w1"), (2, "w2")], attempts
    state = run.verified_state()
    assert state.finished and {t.host for t in state.completed.values()} == {"w2"}
    np.testing.assert_array_equal(
        run.matrix(3)[0], direct_matrix(victim.spec, tmp_path / "undisturbed")
    )
    with ResultsStore(root) as store:
        store.ingest_root()
        row = next(r for r in store.chain_progress() if r.chain_id == victim.chain_id)
        rows = store.eval_rows_frame()
    assert (row.state, row.attempts, row.hosts) == ("done", 2, "w2")
    per_chain = rows.groupby("chain_id").size().to_dict()
    assert per_chain == {e.chain_id: 3 + 3 * 3 for e in entries}, json.dumps(per_chain)
