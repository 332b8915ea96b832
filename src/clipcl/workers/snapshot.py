"""Mid-task snapshots: a task's training state at a step boundary, so that a killed, preempted
or timed-out worker resumes inside the task instead of training it again.

A snapshot of task ``k`` after ``step`` of its ``steps`` steps holds what training changes and
nothing else: the trainable parameters (by name), the method's task state
(``Method.task_state_dict``), the optimizer and grad-scaler states, the mean-loss window, every
RNG state (python, numpy, torch, CUDA when present) and the step — which is also the data
position, since the task's loader is seeded (``data.loader.cycle(loader, start=step)``). The
rest is rebuilt as for any resume: the checkpoint of task ``k − 1``, the task's seeding and
``before_task``; the snapshot is applied after that.

File format (``RunDir.snapshot_path``, one per chain): the ``torch.save`` payload, streamed to
disk, then a trailer line ``clipcl-snapshot <format> <sha256 of the payload>``; the payload is
read back with ``weights_only=True``. Written atomically (temp file, fsync, rename); a file whose
checksum, chain, task or step count does not match is refused with :class:`SnapshotError`.
"""

from __future__ import annotations

import hashlib
import io
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from clipcl.durable import atomic_write_stream

MAGIC = b"clipcl-snapshot"
FORMAT = 1


class SnapshotError(Exception):
    """A snapshot cannot be used (unreadable, corrupt, or of another chain, task or spec)."""


def capture_rng() -> dict[str, Any]:
    """Every global RNG state, as ``weights_only``-loadable values."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    keys = np.asarray(keys, dtype=np.int64)  # (624,) the Mersenne Twister's key
    state: dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set every global RNG to ``state`` (from :func:`capture_rng`)."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@dataclass
class TaskSnapshot:
    """The training state of task ``task`` after ``step`` of its ``steps`` steps.

    Attributes:
        chain_id: The chain the snapshot belongs to.
        task: The task index.
        task_name: The task's name (a check against another benchmark).
        step: Steps finished; the next batch is the ``step``-th of the task's stream.
        steps: The task's number of steps (a check against another training length).
        params: Trainable parameters by name, as after ``step`` steps.
        method: ``Method.task_state_dict()``.
        optimizer: ``optimizer.state_dict()``.
        scaler: ``GradScaler.state_dict()`` (empty when disabled).
        rng: :func:`capture_rng` after the step.
        recent: The losses of the last steps (the task's mean-loss window).
    """

    chain_id: str
    task: int
    task_name: str
    step: int
    steps: int
    params: dict[str, torch.Tensor]
    method: dict[str, Any]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, Any]
    recent: list[float] = field(default_factory=list)
    written_at: float = 0.0

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "chain_id": self.chain_id,
            "task": self.task,
            "task_name": self.task_name,
            "step": self.step,
            "steps": self.steps,
            "params": self.params,
            "method": self.method,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "rng": self.rng,
            "recent": self.recent,
            "written_at": self.written_at,
        }

    @classmethod
    def from_payload(cls, data: Any) -> TaskSnapshot:
        """Parse a loaded payload.

        Raises:
            SnapshotError: It is not a snapshot of this format.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SnapshotError("not a snapshot of format 1")
        try:
            return cls(**{k: v for k, v in data.items() if k != "format"})
        except TypeError as exc:
            raise SnapshotError(f"not a snapshot: {exc}") from None


def _trailer(digest: str) -> bytes:
    return b"\n" + MAGIC + f" {FORMAT} {digest}\n".encode()


TRAILER_BYTES = len(_trailer("0" * 64))


class _PayloadWriter:
    """Forwards the payload to the file and hashes it."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def write_snapshot(path: Path, snapshot: TaskSnapshot) -> int:
    """Atomically replace ``path`` with ``snapshot`` (streamed to disk); return its size."""
    snapshot.written_at = time.time()
    written = 0

    def write(out: BinaryIO) -> None:
        nonlocal written
        payload = _PayloadWriter(out)
        torch.save(snapshot.to_payload(), payload)  # type: ignore[arg-type]
        trailer = _trailer(payload.digest.hexdigest())
        out.write(trailer)
        written = payload.size + len(trailer)

    atomic_write_stream(path, write)
    return written


def read_snapshot(path: Path, map_location: torch.device | str = "cpu") -> TaskSnapshot:
    """The snapshot in ``path``, its checksum verified.

    Raises:
        FileNotFoundError: There is none.
        SnapshotError: It cannot be read, its checksum does not match, or it is no snapshot.
    """
    data = Path(path).read_bytes()
    payload, trailer = data[:-TRAILER_BYTES], data[-TRAILER_BYTES:]
    parts = trailer.strip().split(b" ")
    if len(data) <= TRAILER_BYTES or len(parts) != 3 or parts[0] != MAGIC:
        raise SnapshotError(f"{path}: not a clipcl snapshot (or a torn one)")
    if parts[1] != str(FORMAT).encode():
        raise SnapshotError(f"{path}: snapshot format {parts[1].decode(errors='replace')}")
    if hashlib.sha256(payload).hexdigest().encode() != parts[2]:
        raise SnapshotError(f"{path}: checksum mismatch (a corrupted file)")
    try:
        loaded = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # the unpickler raises many types
        raise SnapshotError(f"{path}: cannot load: {exc}") from None
    return TaskSnapshot.from_payload(loaded)


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters that train now, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def check_parameters(snapshot: TaskSnapshot, model: torch.nn.Module) -> None:
    """Refuse a snapshot whose parameters are not exactly the trainable ones of ``model``.

    Raises:
        SnapshotError: The names or shapes differ.
    """
    live = trainable_parameters(model)
    if set(live) != set(snapshot.params):
        missing = sorted(set(live) - set(snapshot.params))[:3]
        extra = sorted(set(snapshot.params) - set(live))[:3]
        raise SnapshotError(
            f"its parameters are not the trainable ones (missing {missing}, extra {extra})"
        )
    for name, p in live.items():
        if tuple(snapshot.params[name].shape) != tuple(p.shape):
            raise SnapshotError(f"parameter {name} has shape {tuple(snapshot.params[name].shape)}")


@torch.no_grad()
def load_parameters(snapshot: TaskSnapshot, model: torch.nn.Module) -> None:
    """Copy the snapshot's parameters into ``model`` (after :func:`check_parameters`)."""
    for name, p in trainable_parameters(model).items():
        p.copy_(snapshot.params[name])
