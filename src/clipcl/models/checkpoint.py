"""Checkpoint files: written atomically with a SHA-256 checksum, loaded with ``weights_only``."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from clipcl.durable import atomic_write_bytes, sha256_file


class CheckpointError(Exception):
    """A checkpoint is missing, truncated or does not match its recorded checksum."""


def save_checkpoint(obj: dict[str, Any], path: Path) -> str:
    """Serialise ``obj`` (tensors, numbers, strings, lists, dicts) to ``path``; return SHA-256."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(
    path: Path, sha256: str | None = None, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint, verifying its checksum first when one is given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint missing: {path}")
    if sha256 is not None and sha256_file(path) != sha256:
        raise CheckpointError(f"checkpoint checksum mismatch: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint unreadable: {path}: {load_error(exc)}") from exc


def load_error(exc: BaseException) -> str:
    """One line for a failed ``torch.load(..., weights_only=True)``.

    A file holding Python objects is refused by the weights-only unpickler, whose message spans
    many lines and suggests ``weights_only=False``; clipcl never unpickles arbitrary objects,
    so it says what happened instead.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return (
            "not a plain tensor checkpoint (it holds Python objects, which clipcl does not "
            "unpickle); it was not loaded"
        )
    first = text.strip().splitlines()[0][:300] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
