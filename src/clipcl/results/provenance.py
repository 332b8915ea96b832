"""Provenance of results: which code, packages and machine produced them, and config hashes.

Owns :func:`collect_provenance` (git commit and dirty flag via ``git`` subprocesses, package
versions, host, python, platform, device) and :func:`config_hash` (the hash that groups the
seeds of one setting). Nothing here raises: provenance must never make a run fail.
"""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["collect_provenance", "config_hash", "where_this_runs"]

_PACKAGE_DIR = Path(__file__).resolve().parent
_VERSIONED = ("clipcl", "torch", "open_clip_torch", "ray")


def config_hash(spec: Mapping[str, Any]) -> str:
    """Hash of a resolved spec without ``seed``, ``keep_checkpoints`` and
    ``checkpoint_every_min``: seeds of one setting share it."""
    skip = ("seed", "keep_checkpoints", "checkpoint_every_min")
    rest = {k: v for k, v in spec.items() if k not in skip}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:12]


def _run(args: list[str]) -> str | None:
    try:
        done = subprocess.run(
            args, cwd=_PACKAGE_DIR, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _device() -> str | None:
    torch = sys.modules.get("torch")  # never import torch just to describe the machine
    if torch is None:
        return None
    try:
        return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 - provenance must never fail
        return None


def _interface_ips() -> list[str]:
    """IPv4 addresses of this network namespace's interfaces (Linux ``SIOCGIFADDR``; no packet
    is sent), loopback last."""
    try:
        import fcntl
        import struct

        names = [name for _, name in socket.if_nameindex()]
    except (ImportError, OSError):
        return []
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in names:
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue  # no IPv4 address on it
            found.append(socket.inet_ntoa(packed[20:24]))
    return sorted(found, key=lambda ip: ip.startswith("127."))


def _node_ip(host: str) -> str | None:
    """This node's address: the host name's when it resolves to a non-loopback one, else the
    first non-loopback interface address (never a packet sent)."""
    try:
        resolved = socket.gethostbyname(host)
    except OSError:
        resolved = None
    if resolved and not resolved.startswith("127."):
        return resolved
    ips = _interface_ips()
    return ips[0] if ips else resolved


def where_this_runs() -> dict[str, Any]:
    """Where this process runs, for a worker attempt's records: host, node IP, pid and the
    scheduler's job id (Slurm's ``JOBID[_ARRAYINDEX]``; ``None`` elsewhere); never raises."""
    import os

    host = socket.gethostname()
    job = os.environ.get("SLURM_JOB_ID")
    array = os.environ.get("SLURM_ARRAY_TASK_ID")
    if job and array:
        job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{array}"
    return {"host": host, "ip": _node_ip(host), "pid": os.getpid(), "job_id": job}


def collect_provenance(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Describe the code and machine producing results; never raises.

    Args:
        config: The sweep or chain configuration to hash (``config_hash``), if any.

    Returns:
        git commit and dirty flag of the package's repository (None outside a git checkout),
        package versions, host, python, platform, device (when torch is already imported),
        config hash and time.
    """
    commit = _run(["git", "rev-parse", "HEAD"])
    status = _run(["git", "--no-optional-locks", "status", "--porcelain"]) if commit else None
    digest = None
    if config is not None:
        text = json.dumps(config, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return {
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "versions": {name: _version(name) for name in _VERSIONED},
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": _device(),
        "config_hash": digest,
        "time": time.time(),
    }
