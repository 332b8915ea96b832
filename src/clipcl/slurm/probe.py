"""Before a sweep goes to a Slurm cluster: does every node see the run root?

One tiny probe job per usable node of the partition (``sbatch -w NODE``, 1 CPU, a minute)
writes ``<root>/.clipcl-probe/<token>-<node>.txt``; this process then reads it back. A node
whose probe ended without leaving a file visible here does not share the run root (a local
disk, a private mount, another filesystem): that is one ``error:`` naming the node, the job and
the path, and nothing is submitted. The node of this very machine (a single-node cluster) is
not probed. Probes still queued after ``slurm.check_root_s`` are cancelled and only warned
about: on a busy cluster the check must not hold the submission for hours.
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clipcl.errors import ClipclError
from clipcl.slurm.commands import Runner, _check, default_runner, job_states, scancel

#: Node states (sinfo %T, without flags such as ``*``) that take a probe job.
USABLE = ("idle", "mixed", "allocated", "completing", "planned")
#: After its job ended, how long a probe file may take to appear here (NFS attribute caches).
VISIBLE_WAIT_S = 5.0
ENDED = ("done", "failed", "cancelled", "gone")


@dataclass
class Probe:
    node: str
    path: Path
    job_id: str = ""
    state: str = "queued"


@dataclass
class ProbeResult:
    """What the check found: nodes that share the root, and nodes not checked (why)."""

    shared: list[str] = field(default_factory=list)
    unchecked: dict[str, str] = field(default_factory=dict)


def usable_nodes(partition: str, runner: Runner = default_runner) -> list[str]:
    """The nodes of ``partition`` that can run a job now (one ``sinfo`` call)."""
    out = _check(runner(["sinfo", "-h", "-N", "-p", partition, "-o", "%N|%T"]), "sinfo")
    nodes: list[str] = []
    for line in out.splitlines():
        name, _, state = line.strip().partition("|")
        # a flag (``idle*`` not responding, ``idle~`` powered off, ...) means not now
        if name and state.strip().lower() in USABLE and name not in nodes:
            nodes.append(name)
    return nodes


def _this_host() -> set[str]:
    name = socket.gethostname()
    return {name, name.split(".")[0]}


def probe_script(path: Path) -> str:
    """The probe's shell command: make the probe directory, write the node's name there."""
    return (
        f"mkdir -p {shlex.quote(str(path.parent))} && "
        f"hostname > {shlex.quote(str(path))}.tmp && mv {shlex.quote(str(path))}.tmp "
        f"{shlex.quote(str(path))}"
    )


def check_shared_root(
    root: Path,
    partition: str,
    *,
    timeout_s: float,
    account: str | None = None,
    qos: str | None = None,
    runner: Runner = default_runner,
    sleep: Callable[[float], None] = time.sleep,
) -> ProbeResult:
    """Probe every usable node of ``partition`` (except this machine's) for ``root``.

    Raises:
        ClipclError: A probe job ended on a node and its file is not visible here (the node
            does not share the run root), or sbatch refused a probe; nothing was submitted.
            The probe files (and a root the check created) are removed.
    """
    root = Path(root).resolve()
    result = ProbeResult()
    nodes = [n for n in usable_nodes(partition, runner) if n not in _this_host()]
    if not nodes:
        return result
    created = not root.exists()
    probe_dir = root / ".clipcl-probe"
    token = uuid.uuid4().hex[:12]
    probes = [Probe(n, probe_dir / f"{token}-{n}.txt") for n in nodes]
    try:
        probe_dir.mkdir(parents=True, exist_ok=True)
        for p in probes:
            args = ["sbatch", "--parsable", "-p", partition, "-w", p.node, "-N", "1", "-n", "1"]
            args += ["--cpus-per-task=1", "--mem=64M", "--time=1", "-J", "clipcl-probe"]
            args += ["-o", "/dev/null", "-e", "/dev/null", "--no-requeue"]
            args += [f"--account={account}"] if account else []
            args += [f"--qos={qos}"] if qos else []
            args += ["--wrap", probe_script(p.path)]
            proc = runner(args)
            if proc.returncode != 0:
                raise ClipclError(
                    f"sbatch refused the run-root probe for node {p.node}: "
                    f"{(proc.stderr or proc.stdout).strip()} (nothing was submitted)"
                )
            p.job_id = proc.stdout.strip().split(";")[0]
        deadline = time.monotonic() + timeout_s
        while True:
            waiting = [p for p in probes if p.state not in ENDED]
            if waiting:
                states = job_states([p.job_id for p in waiting], runner)
                for p in waiting:
                    p.state = states.get(p.job_id, p.state)
            _judge_ended(probes, root, result, sleep)
            if all(p.state in ENDED for p in probes) or time.monotonic() >= deadline:
                break
            sleep(1.0)
        for p in probes:
            if p.state not in ENDED:
                result.unchecked[p.node] = (
                    f"its probe job {p.job_id} did not run within {timeout_s:g} s"
                )
        return result
    finally:
        # probes not known to have ended (too late, or the check stopped at an error) go
        late = [p.job_id for p in probes if p.job_id and p.state not in ENDED]
        if late:
            with contextlib.suppress(Exception):
                scancel(late, runner)
        for p in probes:
            p.path.unlink(missing_ok=True)
            p.path.with_name(p.path.name + ".tmp").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            probe_dir.rmdir()
            if created:
                root.rmdir()


def _judge_ended(
    probes: list[Probe], root: Path, result: ProbeResult, sleep: Callable[[float], None]
) -> None:
    for p in probes:
        if p.state not in ENDED or p.node in result.shared:
            continue
        waited = 0.0
        while not p.path.is_file() and waited < VISIBLE_WAIT_S:
            with contextlib.suppress(OSError):  # a fresh listing defeats a stale negative cache
                list(p.path.parent.iterdir())
            sleep(0.5)
            waited += 0.5
        if not p.path.is_file():
            how = "ended" if p.state == "gone" else f"ended ({p.state})"
            raise ClipclError(
                f"node {p.node} does not share the run root {root}: its probe job "
                f"{p.job_id} {how} but the file it was to write there ({p.path}) "
                "is not visible here; put the run root on a filesystem every node shares, or "
                "set slurm.check_root_s: 0 to skip this check (nothing was submitted)"
            )
        result.shared.append(p.node)
