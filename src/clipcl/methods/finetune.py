"""``finetune``: continual fine-tuning with cross-entropy only (the lower bound of MTIL tables).

Train modes follow the ZSCL-derived framework: ``whole`` (both towers), ``image``, ``text``,
``image-fc`` (image tower + a linear head per task initialised from its class embeddings),
``image-fc-fixed`` (the image tower learns against that head, which stays frozen at its
initialisation) and ``fc`` (the head alone: a linear probe). Label smoothing, AdamW and the
warm-up + cosine schedule are the worker's (``TrainConfig``).
"""

from __future__ import annotations

import torch

from clipcl.methods.base import Method, TaskContext
from clipcl.methods.configs import (  # noqa: F401  (re-exported)
    FinetuneConfig,
    TrainMode,
)
from clipcl.methods.registry import register_method


@register_method
class Finetune(Method):
    """Sequential fine-tuning of the chosen parameters, task after task."""

    name = "finetune"
    Config = FinetuneConfig
    config: FinetuneConfig

    def before_task(self, ctx: TaskContext) -> None:
        model = self.model
        assert model is not None
        mode = self.config.train_mode
        towers = {
            "whole": {"image", "text"},
            "image": {"image"},
            "text": {"text"},
            "image-fc": {"image", "heads"},
            "image-fc-fixed": {"image"},
            "fc": {"heads"},
        }[mode]
        if mode in ("image-fc", "image-fc-fixed", "fc"):  # the task's head (frozen: fc-fixed)
            with torch.no_grad():
                init = model.class_embeddings(ctx.task.class_names, ctx.task.templates[:1])
            model.add_head(ctx.task.name, init)  # (C, D)
        if self.config.train_logit_scale:
            towers = towers | {"logit"}
        model.requires_grad_(False)
        for tower in towers:
            for _, p in model.named_tower_parameters(tower):
                p.requires_grad_(True)
        if "heads" in towers:  # only the current task's head learns
            for key, p in model.heads.items():
                p.requires_grad_(key == ctx.task.name)
