"""Fencing: every worker attempt of a chain takes a new number, only the newest writes, and only
the rows of the attempt that finished a task count; two copies of one chain running at once,
with the lock off, leave the records of one undisturbed run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clipcl.results.records import NO_LOCK_ENV, EvalRow, RunDir, Superseded, TaskRecord
from clipcl.results.store import ResultsStore
from clipcl.workers import run_chain
from clipcl.workers.stop import EXIT_SUPERSEDED
from tests.helpers import tiny_spec

REPO = Path(__file__).resolve().parents[1]


def test_attempt_numbers_are_unique_and_increasing_under_contention(tmp_path: Path) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(5):
            n = RunDir(tmp_path).begin_attempt({"host": "h"})
            with lock:
                got.append(n)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 41))
    assert RunDir(tmp_path).newest_attempt() == 40
    assert [a["attempt"] for a in RunDir(tmp_path).attempts()] == list(range(1, 41))


def test_a_superseded_attempt_writes_nothing(tmp_path: Path) -> None:
    old, new = RunDir(tmp_path), RunDir(tmp_path)
    assert old.begin_attempt({}) == 1
    old.append_rows([EvalRow("c", 0, "a", 0, "a", 1, 2)])
    old.save_state({"completed": {"0": {"attempt": 1}}, "zeroshot_done": True})
    before = {p.name: p.read_bytes() for p in (old.rows_path, old.state_path)}
    assert new.begin_attempt({}) == 2
    with pytest.raises(Superseded, match="attempt 1 is superseded by attempt 2"):
        old.append_rows([EvalRow("c", 1, "b", 0, "a", 2, 2)])
    with pytest.raises(Superseded):
        old.save_state({"completed": {}})
    with pytest.raises(Superseded):
        old.guard()
    assert {p.name: p.read_bytes() for p in (old.rows_path, old.state_path)} == before
    new.guard()  # the newest writes
    new.append_rows([EvalRow("c", 1, "b", 0, "a", 2, 2)])
    assert json.loads(new.rows_path.read_text().splitlines()[-1])["attempt"] == 2


def test_only_the_rows_of_the_attempt_that_finished_a_task_count(tmp_path: Path) -> None:
    """A superseded copy's rows, even written after the newest's, are never read."""
    records = RunDir(tmp_path / "chains" / "c00000000000")
    records.path.mkdir(parents=True)
    records.spec_path.write_text(
        json.dumps({"benchmark": "smoke", "method": {"name": "finetune"}, "seed": 0})
    )
    rows = [
        EvalRow("c00000000000", -1, "zeroshot", 0, "a", 5, 10, attempt=1),
        EvalRow("c00000000000", 0, "a", 0, "a", 7, 10, attempt=2),  # the newest's
        EvalRow("c00000000000", 0, "a", 0, "a", 1, 10, attempt=1),  # a stale copy, later
    ]
    records.append_rows(rows)
    state = {"completed": {"0": {"attempt": 2}}, "zeroshot_done": True, "zeroshot_attempt": 1}
    records.save_state(state)
    assert {(r.trained_task, r.correct) for r in records.finished_rows()} == {(-1, 5), (0, 7)}
    with ResultsStore(tmp_path) as store:
        store.ingest_chain("c00000000000", records.path)
        frame = store.eval_rows_frame()
    assert sorted(zip(frame["trained_task"], frame["correct"], strict=True)) == [(-1, 5), (0, 7)]
    # records older than attempts (no number anywhere): last write wins, as before
    records.save_state({"completed": {"0": {}}, "zeroshot_done": True})
    assert {(r.trained_task, r.correct) for r in records.finished_rows()} == {(-1, 5), (0, 1)}
    assert TaskRecord().attempt is None


def _worker(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, NO_LOCK_ENV: "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "clipcl.workers", "--run-dir", str(run_dir), "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_two_copies_of_a_chain_without_the_lock_leave_one_runs_records(tmp_path: Path) -> None:
    spec = tiny_spec(iterations=12)
    reference = run_chain(spec, tmp_path / "reference")
    ref_rows = {
        (r.trained_task, r.eval_task): (r.correct, r.total)
        for r in RunDir(tmp_path / "reference").finished_rows()
    }
    rng = random.Random(15)
    superseded = 0
    for trial in range(10):
        run_dir = tmp_path / f"trial{trial}"
        RunDir(run_dir).place_spec(spec)
        first = _worker(run_dir)
        time.sleep(rng.uniform(0.0, 5.0))  # the second copy starts anywhere in the first's run
        second = _worker(run_dir)
        codes = [p.wait(timeout=300) for p in (first, second)]
        errors = [p.stderr.read() if p.stderr else "" for p in (first, second)]
        assert set(codes) <= {0, EXIT_SUPERSEDED}, (codes, errors)
        records = RunDir(run_dir)
        newest = records.attempts()[-1]["pid"]  # whichever process began last
        by_pid = {
            p.pid: (code, err) for p, code, err in zip((first, second), codes, errors, strict=True)
        }
        assert by_pid[newest][0] == 0, by_pid[newest][1]  # the newest attempt always finishes
        superseded += EXIT_SUPERSEDED in codes
        got = {(r.trained_task, r.eval_task): (r.correct, r.total) for r in records.finished_rows()}
        assert got == ref_rows, trial
        np.testing.assert_array_equal(records.matrix(3)[0], reference.matrix)
        state = records.verified_state()
        assert state.finished and records.newest_attempt() == 2
        lines = records.rows_path.read_text().splitlines()
        written = [json.loads(line)["attempt"] for line in lines]
        after = written[written.index(2) :] if 2 in written else []
        assert 1 not in after, written  # once attempt 2 wrote, attempt 1 wrote nothing more
        assert {t.attempt for t in state.completed.values()} <= {1, 2}
        with ResultsStore(tmp_path / f"store{trial}") as store:
            store.ingest_chain(spec.chain_id, run_dir)
            frame = store.eval_rows_frame()
        assert len(frame) == len(ref_rows)  # no duplicate row
    assert superseded >= 3, superseded  # trials really overlapped: a copy was fenced off


def test_where_each_task_ran_is_recorded_stored_and_shown(tmp_path: Path) -> None:
    """Each worker start is an attempt (a resume too): the tasks record theirs with the host;
    the store counts the attempts and names the hosts; logs and status show them."""
    import socket

    from clipcl.results.store import ChainRecord
    from tests.helpers import clipcl_inprocess

    spec = tiny_spec(iterations=2)
    root = tmp_path / "runs"
    run = RunDir.of(root, spec.chain_id)
    run_chain(spec, run.path, until_task=1)
    run_chain(spec, run.path)  # the second attempt resumes at task 1
    host = socket.gethostname()
    state = run.load_state()
    assert [(t.attempt, t.host) for t in state.completed.values()] == [
        (1, host),
        (2, host),
        (2, host),
    ]
    assert state.completed[1].started_at >= state.completed[0].finished_at
    assert [(a["attempt"], a["host"], a["pid"]) for a in run.attempts()] == [
        (1, host, os.getpid()),
        (2, host, os.getpid()),
    ]
    run.log_path.write_text("the log\n")
    with ResultsStore(root) as store:
        store.record_sweep("s", None, {}, [ChainRecord.from_spec(spec.chain_id, run.read_spec())])
        store.ingest_root()
        row = store.chain_progress("s")[0]
        attempts = store._conn.execute("SELECT task_index, attempt, host FROM tasks").fetchall()
    assert (row.attempts, row.hosts) == (2, host)
    assert attempts == [(0, 1, host), (1, 2, host), (2, 2, host)]
    logs = clipcl_inprocess("logs", spec.chain_id, "--root", root)
    assert logs.returncode == 0 and logs.stdout.strip() == "the log", logs
    shown = " ".join(logs.stderr.split())
    assert f"attempt 1: {host} (" in shown and f"attempt 2: {host} (" in shown, shown
    assert f"task 0: attempt 1 on {host}, cpu" in shown and f"task 2: attempt 2 on {host}" in shown
    status = clipcl_inprocess("status", "--root", root)
    assert "ran on" in status.stdout and host in status.stdout, status.stdout
