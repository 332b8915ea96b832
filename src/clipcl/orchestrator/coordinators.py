"""Coordinator processes of a run root: their markers, their hand-off and their entry point.

A coordinator is the process that stays with the jobs of a backend whose jobs die with it (local
subprocesses, Ray tasks). It writes ``ROOT/coordinators/<host>-<pid>.json`` listing its chains
and saying who it is (host, boot id, pid, process start time), so a second submission leaves
them alone while it lives. A marker is live only while that very process is (on this host), or
while its heartbeat is fresh (another host sharing the root); a stale one is removed. ``clipcl
cancel`` never signals a process: it leaves the chains to cancel in the coordinator's
``.cancel`` file, which the coordinator polls. ``clipcl submit`` without ``--follow`` hands a
plan's chains to a detached coordinator through a hand-off file (``python -m
clipcl.orchestrator.coordinators --handoff FILE``): it runs exactly those chains and never
re-expands the sweep.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clipcl.durable import atomic_write_json

COORDINATORS_DIR = "coordinators"
LOG_NAME = "coordinator.log"


def coordinators_dir(root: Path) -> Path:
    return Path(root) / COORDINATORS_DIR


#: A marker from another host (or boot) counts as live while it was touched this recently.
HEARTBEAT_S = 60.0


def boot_id() -> str:
    """This machine's boot id (changes at every boot; ``""`` where the kernel has none)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or ``None`` if there is none or it
    has ended: a killed coordinator stays a zombie until its parent (for a detached one: init,
    which may take seconds) reaps it, and a zombie runs nothing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
    if fields[0] in {"Z", "X", "x"}:  # field 3, the state: zombie or dead
        return None
    return fields[19]  # field 22


@dataclass(frozen=True)
class Coordinator:
    """A coordinator's marker: who it is (host, boot, pid, process start) and its chains."""

    path: Path
    pid: int
    host: str
    boot: str
    start: str | None
    sweep: str
    chains: tuple[str, ...]

    @property
    def here(self) -> bool:
        """Whether it runs on this machine since its current boot (so it can be checked)."""
        return self.host == socket.gethostname() and self.boot == boot_id()

    def alive(self) -> bool:
        """Here: provably the same process (pid and start time); elsewhere: a fresh heartbeat."""
        if self.here:
            return self.start is not None and process_start(self.pid) == self.start
        try:
            return time.time() - self.path.stat().st_mtime < HEARTBEAT_S
        except OSError:
            return False

    @property
    def cancel_path(self) -> Path:
        """Where ``clipcl cancel`` leaves the chains this coordinator is to cancel."""
        return self.path.with_suffix(".cancel")


def _read_marker(path: Path) -> Coordinator | None:
    try:
        info = json.loads(path.read_text())
        return Coordinator(
            path,
            int(info["pid"]),
            str(info.get("host", "")),
            str(info.get("boot", "")),
            info.get("start"),
            str(info.get("sweep", "")),
            tuple(str(c) for c in info["chains"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def coordinators(root: Path) -> list[Coordinator]:
    """The live coordinators of a run root; the markers of dead ones are removed."""
    live = []
    for path in sorted(coordinators_dir(root).glob("*.json")):
        marker = _read_marker(path)
        if marker is None:
            continue
        if marker.alive():
            live.append(marker)
        else:
            path.unlink(missing_ok=True)
            marker.cancel_path.unlink(missing_ok=True)
    return live


def live_coordinators(root: Path) -> dict[str, int]:
    """chain id → pid of the live coordinator running it; stale markers are removed."""
    return {c: m.pid for m in coordinators(root) for c in m.chains}


def write_marker(root: Path, sweep_name: str, chain_ids: Sequence[str]) -> Path:
    """Mark this process as the coordinator of ``chain_ids``; the marker's path."""
    pid, host = os.getpid(), socket.gethostname()
    marker = coordinators_dir(root) / f"{host}-{pid}.json"
    info = {
        "pid": pid,
        "host": host,
        "boot": boot_id(),
        "start": process_start(pid),
        "sweep": sweep_name,
        "chains": list(chain_ids),
    }
    atomic_write_json(marker, info)
    return marker


def heartbeat_and_requests(marker: Path) -> set[str]:
    """Touch the marker (the heartbeat hosts elsewhere judge it by); the chains that
    ``clipcl cancel`` asked this coordinator to cancel."""
    with contextlib.suppress(OSError):
        os.utime(marker)
    try:
        return set(json.loads(marker.with_suffix(".cancel").read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def cancel_coordinators(root: Path, chain_ids: Iterable[str]) -> int:
    """Ask the live coordinators running any of ``chain_ids`` to cancel exactly those chains
    (a request file each polls; no process is signalled); how many chains were reached."""
    ids = set(chain_ids)
    reached = 0
    for marker in coordinators(root):
        mine = ids & set(marker.chains)
        if not mine:
            continue
        try:
            before = set(json.loads(marker.cancel_path.read_text()))
        except (OSError, ValueError, TypeError):
            before = set()
        atomic_write_json(marker.cancel_path, sorted(before | mine))
        reached += len(mine)
    return reached


@dataclass(frozen=True)
class Handoff:
    """What a detached coordinator is handed: the chains of a plan and where to run them."""

    sweep: str
    root: str
    backend: str
    chains: list[str]
    resources: dict[str, Any]
    jobs: int | None = None
    ray_address: str | None = None
    data_root: str | None = None


def start_detached(handoff: Handoff) -> tuple[int, Path]:
    """Start a coordinator for ``handoff`` in its own session; (its pid, its log)."""
    root = Path(handoff.root)
    path = coordinators_dir(root) / f"handoff-{uuid.uuid4().hex}.handoff"
    atomic_write_json(path, asdict(handoff))
    log = root / LOG_NAME
    cmd = [sys.executable, "-m", "clipcl.orchestrator.coordinators", "--handoff", str(path)]
    from clipcl.results import pg

    env = dict(os.environ)
    url = pg.store_url(root)  # a sweep file's store: (with its password) reaches the child
    if url is not None:
        env[pg.URL_ENV] = url
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc.pid, log


def coordinate(handoff: Handoff, log: Any = print) -> dict[str, str]:
    """Run the chains of ``handoff`` to their end here, recording every change in the store."""
    from clipcl.orchestrator.backends import BackendOptions, make_backend
    from clipcl.orchestrator.sweep_runner import SweepChain, run_sweep_chains
    from clipcl.results.records import RunDir
    from clipcl.workers.__main__ import load_spec

    root = Path(handoff.root)
    chains = []
    for chain_id in handoff.chains:
        run_dir = RunDir.of(root, chain_id)
        num_tasks = run_dir.load_state().num_tasks
        chains.append(SweepChain(chain_id, load_spec(run_dir.path), int(num_tasks or 0)))
    options = BackendOptions(handoff.jobs, handoff.ray_address, root, None, handoff.sweep)
    backend = make_backend(handoff.backend, options)
    final = run_sweep_chains(
        handoff.sweep, chains, root, handoff.resources, backend, handoff.data_root, log=log
    )
    bad = sorted(c for c, s in final.items() if s != "done")
    log(f"coordinator finished: {len(final) - len(bad)} done, {len(bad)} not done")
    return dict(final)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clipcl.orchestrator.coordinators --handoff FILE``: run a handed-off plan."""
    parser = argparse.ArgumentParser(prog="python -m clipcl.orchestrator.coordinators")
    parser.add_argument("--handoff", required=True, help="The hand-off file (deleted once read).")
    args = parser.parse_args(argv)
    path = Path(args.handoff)
    handoff = Handoff(**json.loads(path.read_text()))
    path.unlink(missing_ok=True)
    from clipcl.errors import ClipclError

    try:
        coordinate(handoff, log=lambda line: print(line, file=sys.stderr, flush=True))
    except ClipclError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
