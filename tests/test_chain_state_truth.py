"""Chain states that cannot lie: rows lost after the fact, a killed or interrupted coordinator."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipcl.orchestrator.plan import GONE, reconcile_store
from clipcl.results.records import RunDir
from clipcl.results.store import ChainRecord, ResultsStore
from clipcl.workers import run_chain
from tests.helpers import clipcl_inprocess, tiny_spec

SWEEP = Path(__file__).parent / "data" / "sweeps" / "smoke4.yaml"


def _record(store: ResultsStore, run: RunDir) -> str:
    spec = run.read_spec()
    chain_id = run.path.name
    store.record_sweep("s", None, {}, [ChainRecord.from_spec(chain_id, spec)], provenance={})
    return chain_id


def test_a_done_chain_whose_rows_were_lost_is_not_done_and_recomputes_them(
    tmp_path: Path,
) -> None:
    spec = tiny_spec(iterations=4)
    run = RunDir.of(tmp_path, spec.chain_id)
    full = run_chain(spec, run.path)
    with ResultsStore(tmp_path) as store:
        chain_id = _record(store, run)
        store.ingest_chain(chain_id, run.path)
        assert store.chain(chain_id).state == "done"
        # the rows of task 2 are lost (a bad copy, a user's edit): task 2 is not done
        lines = run.rows_path.read_text().splitlines()
        kept = [ln for ln in lines if json.loads(ln)["trained_task"] != 2]
        run.rows_path.write_text("\n".join(kept) + "\n")
        assert run.tasks_done() == 2 and len(run.completed()) == 3
        assert RunDir.of(tmp_path, chain_id).verified_state().completed.keys() == {0, 1}
        store.ingest_chain(chain_id, run.path)
        row = store.chain(chain_id)
        assert row.state == "failed" and "only 2 tasks have their rows" in str(row.error)
    again = run_chain(spec, run.path)  # resumes from task 1's checkpoint (kept), redoes task 2
    assert again.trained_now == [2]
    np.testing.assert_array_equal(again.matrix, full.matrix)
    assert run.tasks_done() == 3


def test_a_running_chain_that_nothing_runs_is_not_running(tmp_path: Path) -> None:
    """The store says running (its coordinator was SIGKILLed); status tells the truth."""
    spec = tiny_spec(iterations=4)
    run = RunDir.of(tmp_path, spec.chain_id)
    run_chain(spec, run.path, until_task=1)
    with ResultsStore(tmp_path) as store:
        chain_id = _record(store, run)
        store.set_state(chain_id, "running", backend="local", job_id="local-1")
    shown = clipcl_inprocess("status", "--root", tmp_path, "--watch", "0.1")
    assert shown.returncode == 0, shown.stderr  # --watch returns: nothing is left running
    assert "1 failed" in shown.stdout and "│ running" not in shown.stdout, shown.stdout
    with ResultsStore(tmp_path) as store:
        assert store.chain(chain_id).error == GONE
        assert reconcile_store(store, tmp_path) == 0  # nothing more to correct
    # while a worker holds the chain's lock, it is running
    with ResultsStore(tmp_path) as store:
        store.set_state(chain_id, "running", backend="local")
    probe = (
        "import sys, time; from clipcl.results.records import RunDir\n"
        "with RunDir(sys.argv[1]).lock('c'):\n    print('locked', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", probe, str(run.path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with ResultsStore(tmp_path) as store:
            assert reconcile_store(store, tmp_path) == 0
            assert store.chain(chain_id).state == "running"
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_ctrl_c_on_submit_follow_leaves_nothing_running(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.read_text().replace("iterations: 6", "iterations: 40"))
    cmd = [sys.executable, "-m", "clipcl.cli", "submit", str(sweep), "--root", str(root)]
    proc = subprocess.Popen(
        [*cmd, "--follow", "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    while time.time() < deadline and not any(
        RunDir(d).read_pid() for d in RunDir.chains_dir(root).glob("*")
    ):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    with ResultsStore(root) as store:
        states = {r.state for r in store.chain_progress()}
    assert states <= {"cancelled", "done"} and "cancelled" in states, states
    watch = subprocess.run(
        [sys.executable, "-m", "clipcl.cli", "status", str(sweep), "--root", str(root)]
        + ["--watch", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert watch.returncode == 0 and "cancelled" in watch.stdout, watch.stdout + watch.stderr


def test_submit_follow_exits_nonzero_naming_failed_chains_and_status_of_unknown_sweep(
    tmp_path: Path,
) -> None:
    sweep = tmp_path / "sweep.yaml"
    text = SWEEP.read_text().replace("seeds: [0, 1, 2, 3]", "seeds: [0]")
    sweep.write_text(text.replace("resources: {cpus: 1", "resources: {gpus: 1, cpus: 1"))
    root = tmp_path / "root"
    done = clipcl_inprocess("submit", sweep, "--root", root, "--follow", "--backend", "local")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed: needs 1 GPU(s) but this backend has" in done.stderr, done.stderr
    assert "1 chains did not finish" in done.stderr
    unknown = clipcl_inprocess("status", "no-such-sweep", "--root", root)
    assert unknown.returncode == 2 and "unknown sweep" in unknown.stderr, unknown.stderr
    assert "smoke4" in unknown.stderr  # the sweeps it knows


def test_results_with_no_finished_chain_is_an_error_not_an_empty_table(tmp_path: Path) -> None:
    spec = tiny_spec(iterations=2)
    run = RunDir.of(tmp_path, spec.chain_id)
    run_chain(spec, run.path, until_task=1)
    with ResultsStore(tmp_path) as store:
        _record(store, run)
        store.ingest_root(tmp_path)
    res = clipcl_inprocess("results", "s", "--root", tmp_path)
    assert res.returncode == 2 and res.stdout == "", res.stdout
    assert "no finished chain in sweep 's'" in res.stderr
