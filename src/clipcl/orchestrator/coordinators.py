"""Coordinator processes of a run root: their markers, their hand-off and their entry point.

A coordinator is the process that stays with the jobs of a backend whose jobs die with it (local
subprocesses, Ray tasks). It writes ``ROOT/coordinators/<pid>.json`` listing its chains, so a
second submission leaves them alone while it lives, and ``clipcl cancel`` signals it (SIGTERM:
it cancels its jobs and exits). ``clipcl submit`` without ``--follow`` hands a plan's chains to a
detached coordinator through a hand-off file (``python -m clipcl.orchestrator.coordinators
--handoff FILE``): the coordinator runs exactly those chains and never re-expands the sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_coordinators(root: Path) -> dict[str, int]:
    """chain id → pid of the live coordinator running it; stale markers are removed."""
    owned: dict[str, int] = {}
    for path in sorted(coordinators_dir(root).glob("*.json")):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(info["pid"])):
            owned.update({c: int(info["pid"]) for c in info["chains"]})
        else:
            path.unlink(missing_ok=True)
    return owned


def write_marker(root: Path, sweep_name: str, chain_ids: Sequence[str]) -> Path:
    """Mark this process as the coordinator of ``chain_ids``; the marker's path."""
    marker = coordinators_dir(root) / f"{os.getpid()}.json"
    atomic_write_json(marker, {"pid": os.getpid(), "sweep": sweep_name, "chains": list(chain_ids)})
    return marker


def cancel_coordinators(root: Path, chain_ids: Iterable[str]) -> int:
    """SIGTERM every live coordinator running one of ``chain_ids``; chains so reached."""
    ids = set(chain_ids)
    stopped = 0
    for chain_id, pid in live_coordinators(root).items():
        if chain_id in ids:  # the coordinator cancels its jobs on SIGTERM
            os.kill(pid, signal.SIGTERM)
            stopped += 1
    return stopped


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
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            cmd,
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
