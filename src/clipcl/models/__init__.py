"""CLIP models: the open_clip factory wrapper, project configs, checkpoints.

``ModelConfig`` and the architecture checks (``models.config``) never import torch or
open_clip; everything else is imported on first use, so planning a sweep stays cheap.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from clipcl.models.config import ModelConfig, Precision, default_pretrained

if TYPE_CHECKING:
    from clipcl.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from clipcl.models.clip import ClipModel
    from clipcl.models.factory import (
        autocast,
        build_model,
        device_name,
        gpu_uuid,
        pick_device,
        resolve_arch,
        resolve_pretrained,
    )

_LAZY = {
    "CheckpointError": "clipcl.models.checkpoint",
    "load_checkpoint": "clipcl.models.checkpoint",
    "save_checkpoint": "clipcl.models.checkpoint",
    "ClipModel": "clipcl.models.clip",
    "autocast": "clipcl.models.factory",
    "build_model": "clipcl.models.factory",
    "device_name": "clipcl.models.factory",
    "gpu_uuid": "clipcl.models.factory",
    "pick_device": "clipcl.models.factory",
    "resolve_arch": "clipcl.models.factory",
    "resolve_pretrained": "clipcl.models.factory",
}

__all__ = [
    "CheckpointError",
    "ClipModel",
    "ModelConfig",
    "Precision",
    "autocast",
    "build_model",
    "default_pretrained",
    "device_name",
    "gpu_uuid",
    "load_checkpoint",
    "pick_device",
    "resolve_arch",
    "resolve_pretrained",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipcl.models' has no attribute '{name}'")
