"""``zeroshot``: no training; every row of the accuracy matrix is the pretrained model's."""

from __future__ import annotations

from clipcl.methods.base import Method
from clipcl.methods.registry import register_method


@register_method
class ZeroShot(Method):
    """Evaluate the pretrained CLIP after every task without touching it."""

    name = "zeroshot"
    trains = False

    def setup(self, model) -> None:
        super().setup(model)
        model.requires_grad_(False)
