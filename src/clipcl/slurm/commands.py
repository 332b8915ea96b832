"""Slurm's command-line tools, called in batches and parsed.

Job states come from ``sacct`` (one call per ≤ :data:`SACCT_BATCH` job ids, never one per job);
where accounting is unavailable they come from ``squeue`` (one call for all of the user's jobs)
and the caller completes the picture from the workers' records on disk. Every command goes
through a ``Runner`` so tests can record what would be called.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from clipcl.errors import ClipclError

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]

#: Job ids per ``sacct -j`` call.
SACCT_BATCH = 400

#: Slurm state → clipcl job state. PENDING/REQUEUED/CONFIGURING/PREEMPTED... are not failures.
STATE_MAP: dict[str, str] = {
    **dict.fromkeys(
        (
            "PENDING",
            "REQUEUED",
            "REQUEUE_FED",
            "REQUEUE_HOLD",
            "SPECIAL_EXIT",
            "CONFIGURING",
            "RESIZING",
            "SUSPENDED",
            "STOPPED",
            "RESV_DEL_HOLD",
            "PREEMPTED",
        ),
        "queued",
    ),
    **dict.fromkeys(("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"), "running"),
    "COMPLETED": "done",
    **dict.fromkeys(
        ("FAILED", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY", "TIMEOUT", "DEADLINE"), "failed"
    ),
    **dict.fromkeys(("CANCELLED", "REVOKED"), "cancelled"),
}
#: States that may be final or may be followed by a requeue: confirmed with squeue.
AMBIGUOUS = frozenset({"PREEMPTED"})


class SlurmError(ClipclError):
    """A Slurm command failed or Slurm is not reachable."""


def default_runner(args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a Slurm command; ``SlurmError`` when it is missing or hangs."""
    try:
        return subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise SlurmError(
            f"'{args[0]}' not found: the slurm backend needs Slurm's client commands "
            "(sbatch, squeue, sacct, scontrol, scancel) on PATH"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"'{' '.join(args)}' did not answer within {timeout:.0f} s") from None


def require_slurm() -> None:
    """Raise unless Slurm's client commands are on PATH."""
    missing = [c for c in ("sbatch", "squeue", "scontrol", "scancel") if shutil.which(c) is None]
    if missing:
        raise SlurmError(
            f"Slurm commands not found on PATH: {', '.join(missing)}; run on a Slurm login "
            "node (or start the development cluster: scripts/slurm-dev.sh up)"
        )


def _check(proc: subprocess.CompletedProcess, what: str) -> str:
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise SlurmError(f"{what} failed: {message[-1] if message else f'exit {proc.returncode}'}")
    return proc.stdout


def config_value(key: str, runner: Runner = default_runner) -> str | None:
    """One value of ``scontrol show config`` (``None`` when absent)."""
    out = _check(runner(["scontrol", "show", "config"]), "scontrol show config")
    for line in out.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    return None


def max_array_size(runner: Runner = default_runner) -> int:
    """The cluster's ``MaxArraySize`` (array indices must stay below it); 1001 if unknown."""
    value = config_value("MaxArraySize", runner)
    try:
        return int(value) if value else 1001
    except ValueError:
        return 1001


@dataclass(frozen=True)
class Partition:
    """What a partition allows, from ``scontrol show partition`` and ``sinfo``."""

    name: str
    max_time_min: int | None  # None: unlimited
    max_cpus: int  # largest node's CPUs
    max_mem_mb: int  # largest node's memory
    max_gpus: int  # largest node's GPUs (gres gpu)
    state: str


def parse_time_min(text: str) -> int | None:
    """Slurm time ``[D-]HH:MM:SS`` / ``MM`` / ``UNLIMITED`` → minutes (``None``: unlimited)."""
    text = text.strip()
    if text.upper() in {"UNLIMITED", "INFINITE", "NONE", ""}:
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, m, s = 0, parts[0], parts[1]
    else:
        h, m, s = parts[-3:]
    return days * 1440 + h * 60 + m + (1 if s else 0)


def _gpus(gres: str) -> int:
    total = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if m:
            total += int(m.group(1))
    return total


def partitions(runner: Runner = default_runner) -> dict[str, Partition]:
    """Every partition with its limits and its largest node."""
    out = _check(runner(["scontrol", "show", "partition", "-o"]), "scontrol show partition")
    result: dict[str, Partition] = {}
    for line in out.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        name = fields.get("PartitionName")
        if not name:
            continue
        nodes = _check(
            runner(["sinfo", "-h", "-N", "-p", name, "-o", "%N|%c|%m|%G"]), "sinfo"
        ).splitlines()
        cpus = mem = gpus = 0
        for node in nodes:
            parts = node.split("|")
            if len(parts) != 4:
                continue
            cpus = max(cpus, int(re.sub(r"\D", "", parts[1]) or 0))
            mem = max(mem, int(re.sub(r"\D", "", parts[2]) or 0))
            gpus = max(gpus, _gpus(parts[3]))
        result[name] = Partition(
            name,
            parse_time_min(fields.get("MaxTime", "UNLIMITED")),
            cpus,
            mem,
            gpus,
            fields.get("State", "UP"),
        )
    return result


def default_partition(runner: Runner = default_runner) -> str | None:
    """The partition jobs go to without ``--partition``."""
    out = _check(runner(["sinfo", "-h", "-o", "%P"]), "sinfo")
    for name in out.split():
        if name.endswith("*"):
            return name[:-1]
    return None


def _expand(job_field: str) -> list[str]:
    """``123_[0-3,7%2]`` → ``123_0 … 123_3, 123_7``; other ids unchanged."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_field)
    if not m:
        return [job_field]
    base, spec = m.group(1), m.group(2).split("%")[0]
    ids: list[str] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def _wanted(job_ids: Iterable[str]) -> set[str]:
    return {str(j) for j in job_ids}


def sacct_states(
    job_ids: Sequence[str], runner: Runner = default_runner, batch: int = SACCT_BATCH
) -> dict[str, str] | None:
    """Raw Slurm state of each job id (``123`` or ``123_4``) that sacct knows.

    Returns ``None`` when accounting is unavailable (the caller falls back to squeue).
    """
    wanted = _wanted(job_ids)
    states: dict[str, str] = {}
    ids = sorted(wanted)
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        proc = runner(["sacct", "-n", "-P", "-X", "--format=JobID,State", "-j", ",".join(chunk)])
        if proc.returncode != 0:
            return None  # accounting storage disabled / slurmdbd down
        for line in proc.stdout.splitlines():
            job, _, state = line.partition("|")
            for jid in _expand(job.strip()):
                if jid in wanted:
                    states[jid] = state.split()[0] if state.split() else "UNKNOWN"
    return states


def squeue_states(job_ids: Sequence[str], runner: Runner = default_runner) -> dict[str, str]:
    """Raw state of each of ``job_ids`` still known to the controller (one squeue call)."""
    wanted = _wanted(job_ids)
    user = os.environ.get("USER") or _user()
    proc = runner(["squeue", "-h", "-r", "-u", user, "-o", "%i|%T"])
    out = _check(proc, "squeue")
    states: dict[str, str] = {}
    for line in out.splitlines():
        job, _, state = line.partition("|")
        for jid in _expand(job.strip()):
            if jid in wanted:
                states[jid] = state.strip()
    return states


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def job_states(job_ids: Sequence[str], runner: Runner = default_runner) -> dict[str, str]:
    """clipcl state (queued/running/done/failed/cancelled, or ``gone``) of every job id.

    sacct first; squeue where accounting is unavailable or a state is ambiguous. ``gone``: the
    controller no longer knows the job and accounting has no record of it — the caller decides
    from the chain's records on disk.
    """
    raw = sacct_states(job_ids, runner)
    queue: dict[str, str] | None = None
    if raw is None or any(s in AMBIGUOUS for s in raw.values()) or len(raw) < len(set(job_ids)):
        queue = squeue_states(job_ids, runner)
    result: dict[str, str] = {}
    for jid in job_ids:
        state = (raw or {}).get(jid)
        if queue is not None and jid in queue and (state is None or state in AMBIGUOUS):
            state = queue[jid]
        elif state in AMBIGUOUS:
            state = "FAILED"  # preempted and no longer queued: it was not requeued
        result[jid] = STATE_MAP.get(state, "queued") if state else "gone"
    return result


def scancel(job_ids: Sequence[str], runner: Runner = default_runner) -> None:
    """Cancel jobs (one call); jobs already ended are ignored by Slurm."""
    if job_ids:
        runner(["scancel", *job_ids])


def test_only(flags: Sequence[str], runner: Runner = default_runner) -> str:
    """``sbatch --test-only`` with ``flags``: the scheduler's verdict without submitting.

    Raises:
        SlurmError: The cluster refuses the request; the message is sbatch's.
    """
    proc = runner(["sbatch", "--test-only", *flags, "--wrap", "true"])
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise SlurmError(lines[-1].removeprefix("sbatch: error: ") if lines else "refused")
    return (proc.stderr or proc.stdout).strip()
