"""``wise-ft``: continual fine-tuning followed, after each task, by weight-space interpolation
(Wortsman et al., CVPR 2022) with the weights the task started from (METHODS.md §4)::

    θ_t = α · θ_ft + (1 − α) · θ_{t−1}          α = 0.8

``θ_{t−1}`` is the model at the start of task t (the pretrained weights for task 0); ``θ_t`` is
what is saved, evaluated and carried on. ``reference: zeroshot`` interpolates with the pretrained
weights instead (a task's new head, which has none, with its initial value). This is the
seed-002 framework's ``--wise-merge`` (``--wise-ft-alpha`` 0.8, ``--wise-ft-model n`` /
``zeroshot``). Only the parameters trained in the task are
interpolated (the others have ``θ_ft = θ_{t−1}``). ``θ_{t−1}`` is copied to CPU in
``before_task`` from the live model, which after a resume is the checkpoint's ``θ_{t−1}``, so no
method state is needed. Training itself is ``finetune``'s (same train modes).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from clipcl.methods.base import TaskContext
from clipcl.methods.configs import (  # noqa: F401  (re-exported)
    WiSEFTConfig,
)
from clipcl.methods.finetune import Finetune
from clipcl.methods.registry import register_method
from clipcl.models import ClipModel


def interpolate(alpha: float, finetuned: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """``α · θ_ft + (1 − α) · θ_{t−1}`` (element-wise, in ``finetuned``'s dtype)."""
    return alpha * finetuned + (1 - alpha) * previous


@register_method
class WiSEFT(Finetune):
    """Finetune, then interpolate with the task's starting weights."""

    name = "wise-ft"
    Config = WiSEFTConfig
    config: WiSEFTConfig

    def setup(self, model: ClipModel) -> None:
        super().setup(model)
        self._zeroshot: dict[str, torch.Tensor] = {}  # reference: zeroshot, on CPU
        if self.config.reference == "zeroshot":  # setup sees the freshly built model
            self._zeroshot = {
                n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
            }

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)  # chooses the trainable parameters (and adds a head)
        assert self.model is not None
        self._previous: dict[str, torch.Tensor] = {}  # θ_{t−1} (or the pretrained θ_0), CPU
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                zs = self._zeroshot.get(name)
                self._previous[name] = zs if zs is not None else p.detach().to("cpu", copy=True)

    @torch.no_grad()
    def after_task(self, ctx: TaskContext, loader: DataLoader) -> None:
        assert self.model is not None
        params = dict(self.model.named_parameters())
        for name, prev in self._previous.items():
            p = params[name]
            p.copy_(interpolate(self.config.alpha, p, prev.to(p.device)))
        self._previous = {}
