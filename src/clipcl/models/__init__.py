"""CLIP models: the open_clip factory wrapper, project configs, checkpoints."""

from clipcl.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from clipcl.models.clip import ClipModel
from clipcl.models.factory import (
    ModelConfig,
    Precision,
    autocast,
    build_model,
    default_pretrained,
    pick_device,
    resolve_arch,
    resolve_pretrained,
)

__all__ = [
    "CheckpointError",
    "ClipModel",
    "ModelConfig",
    "Precision",
    "autocast",
    "build_model",
    "default_pretrained",
    "load_checkpoint",
    "pick_device",
    "resolve_arch",
    "resolve_pretrained",
    "save_checkpoint",
]
