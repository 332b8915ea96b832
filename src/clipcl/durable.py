"""Crash-safe file writes: write to a temp file, fsync, rename, fsync the directory.

A reader never sees a half-written file: either the old content or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    """fsync a directory, so the names created or replaced in it survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> str:
    """Atomically replace ``path`` with ``data``; return the SHA-256 hex digest of ``data``."""
    return atomic_write_stream(path, lambda f: f.write(data))


def atomic_write_stream(path: Path, write: Callable[[BinaryIO], object]) -> str:
    """Atomically replace ``path`` with what ``write(file)`` writes (streamed, never held in
    memory whole); return the SHA-256 hex digest of the content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; keep shared run roots readable
        with os.fdopen(fd, "wb") as f:
            hashing = _HashingWriter(f)
            write(hashing)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return hashing.digest.hexdigest()


class _HashingWriter:
    """A binary writer that hashes what passes through it."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as pretty, key-sorted JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def append_lines_durably(path: Path, lines: list[str]) -> None:
    """Append whole lines to ``path`` and fsync before returning.

    A crash can leave at most one partial last line; readers skip a line that does not parse.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(line.rstrip("\n") + "\n" for line in lines)
    with open(path, "a", encoding="utf-8") as f:
        # A previous crash may have left a partial line: start ours on a fresh line.
        if f.tell() > 0:
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    payload = "\n" + payload
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
