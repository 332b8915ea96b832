"""Coordinator markers that cannot lie, and ``clipcl cancel`` reaching exactly its chains."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipcl.durable import atomic_write_json
from clipcl.orchestrator.coordinators import (
    cancel_coordinators,
    coordinators_dir,
    heartbeat_and_requests,
    live_coordinators,
    process_start,
    write_marker,
)

SWEEP = Path(__file__).parent / "data" / "sweeps" / "smoke4.yaml"
CLIPCL = [sys.executable, "-m", "clipcl.cli"]


def clipcl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIPCL, *args], capture_output=True, text=True, timeout=900)


def _marker(root: Path, name: str, **info) -> Path:
    path = coordinators_dir(root) / f"{name}.json"
    atomic_write_json(path, {"sweep": "s", "chains": ["c1"], **info})
    return path


def test_a_marker_whose_pid_was_reused_is_stale_and_its_process_is_left_alone(
    tmp_path: Path,
) -> None:
    """A SIGKILLed coordinator's pid now belongs to another process (here: a sleep)."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        from clipcl.orchestrator.coordinators import boot_id

        marker = _marker(
            tmp_path,
            "reused",
            pid=other.pid,
            host=socket.gethostname(),
            boot=boot_id(),
            start="1",  # not when that sleep started
        )
        dead = _marker(tmp_path, "dead", pid=2**22 + 7, host=socket.gethostname(), boot=boot_id())
        assert live_coordinators(tmp_path) == {}
        assert not marker.exists() and not dead.exists()  # stale markers are removed
        assert cancel_coordinators(tmp_path, ["c1"]) == 0
        time.sleep(0.2)
        assert other.poll() is None  # nothing was sent to the process that has that pid now
    finally:
        other.kill()
        other.wait()


def test_a_killed_coordinator_not_yet_reaped_is_dead(tmp_path: Path) -> None:
    """A SIGKILLed process stays a zombie until its parent reaps it (init may take seconds for
    a detached coordinator): its pid and start time still match, but it runs nothing."""
    from clipcl.orchestrator.coordinators import boot_id

    child = subprocess.Popen(["sleep", "60"])
    try:
        start = process_start(child.pid)
        assert start is not None
        marker = _marker(
            tmp_path,
            "zombie",
            pid=child.pid,
            host=socket.gethostname(),
            boot=boot_id(),
            start=start,
        )
        assert live_coordinators(tmp_path) == {"c1": child.pid}
        child.kill()
        deadline = time.time() + 10  # not reaped (no wait() yet): a zombie once the kill lands
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.time() < deadline
            time.sleep(0.01)
        assert process_start(child.pid) is None
        assert live_coordinators(tmp_path) == {} and not marker.exists()
    finally:
        child.kill()
        child.wait()


def test_this_process_is_a_live_coordinator_and_an_old_format_marker_is_not_trusted(
    tmp_path: Path,
) -> None:
    marker = write_marker(tmp_path, "s", ["a", "b"])
    info = json.loads(marker.read_text())
    assert info["pid"] == os.getpid() and info["start"] == process_start(os.getpid())
    assert live_coordinators(tmp_path) == {"a": os.getpid(), "b": os.getpid()}
    # an old marker (pid only) of a live pid, untouched for long: no longer owns its chains
    old = _marker(tmp_path, "old", pid=os.getpid(), chains=["x"])
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert "x" not in live_coordinators(tmp_path) and not old.exists()


def test_a_marker_from_another_host_lives_by_its_heartbeat(tmp_path: Path) -> None:
    path = _marker(tmp_path, "far", pid=12345, host="node-elsewhere", boot="b", start="9")
    assert live_coordinators(tmp_path) == {"c1": 12345}  # fresh: cannot be checked, trusted
    assert cancel_coordinators(tmp_path, ["c1", "other"]) == 1  # a request, not a signal
    assert json.loads(path.with_suffix(".cancel").read_text()) == ["c1"]
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    assert live_coordinators(tmp_path) == {}  # its heartbeat stopped
    assert not path.exists() and not path.with_suffix(".cancel").exists()


def test_cancel_requests_accumulate_and_the_heartbeat_touches_the_marker(tmp_path: Path) -> None:
    marker = write_marker(tmp_path, "s", ["a", "b", "c"])
    os.utime(marker, (1, 1))
    assert heartbeat_and_requests(marker) == set()
    assert marker.stat().st_mtime > 1
    assert cancel_coordinators(tmp_path, ["a"]) == 1
    assert cancel_coordinators(tmp_path, ["c", "zz"]) == 1
    assert heartbeat_and_requests(marker) == {"a", "c"}


@pytest.mark.slow
def test_cancel_of_one_chain_cancels_only_that_chain(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sweep = tmp_path / "sweep.yaml"
    text = SWEEP.read_text().replace("iterations: 6", "iterations: 30")
    sweep.write_text(text.replace("seeds: [0, 1, 2, 3]", "seeds: [0, 1]"))
    first = clipcl("submit", str(sweep), "--backend", "local", "--root", str(root), "--jobs", "2")
    assert first.returncode == 0 and "coordinator pid" in first.stdout, first.stderr
    markers = coordinators_dir(root)
    deadline = time.time() + 300
    while not list(markers.glob("*.json")) and time.time() < deadline:
        time.sleep(0.2)
    (marker,) = list(markers.glob("*.json"))
    victim, survivor = json.loads(marker.read_text())["chains"]
    cancel = clipcl("cancel", victim, "--root", str(root))
    assert cancel.returncode == 0, cancel.stderr
    assert "cancelled 1 chains (1 via their coordinator" in cancel.stdout, cancel.stdout
    while list(markers.glob("*.json")) and time.time() < deadline:
        time.sleep(0.2)  # the coordinator finishes the other chain, then exits
    status = clipcl("status", str(sweep), "--root", str(root)).stdout
    rows = {line.split()[1]: line for line in status.splitlines() if line.count("│") > 3}
    assert "cancelled" in rows[victim] and "done" in rows[survivor], status
