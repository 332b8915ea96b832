"""The layers of a CLIP that a method's config can name (``clipcl layers``).

clipcl names adapter and projection layers relative to a residual block of either tower
(``lora.targets`` in both towers; ``gpm.layers`` with the image tower's ``gpm.blocks`` by index):
``attn.in_proj`` (the attention's fused q/k/v projection), ``attn.out_proj``, ``mlp.c_fc`` and
``mlp.c_proj``. This module lists a built model's modules, its linear layers with those names,
and its parameters, for the listing command (seed 002's ``list_clip_layers.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from clipcl.methods.configs import ALL_LAYERS, DEFAULT_TARGETS, LoRATarget

#: ``<tower>.transformer.resblocks.<i>.<kind>``: the image tower's blocks are under ``visual.``.
_BLOCK = re.compile(r"^(?P<visual>visual\.)?transformer\.resblocks\.(?P<block>\d+)\.(?P<kind>.+)$")
_LORA = frozenset(LoRATarget.__args__)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Layer:
    """One linear layer: its module name, shape (out, in), and how configs name it."""

    name: str
    shape: tuple[int, ...]
    tower: str | None = None
    block: int | None = None
    kind: str | None = None

    def named_by(self) -> list[str]:
        """The config keys that can select this layer."""
        keys = []
        if self.kind in _LORA:
            keys.append("lora.targets" + (" (default)" if self.kind in DEFAULT_TARGETS else ""))
        if self.kind in ALL_LAYERS and self.tower == "image":
            keys.append("gpm.layers + gpm.blocks")
        return keys


def _placed(name: str, shape: tuple[int, ...]) -> Layer:
    m = _BLOCK.match(name)
    if m is None:
        return Layer(name, shape)
    tower = "image" if m.group("visual") else "text"
    return Layer(name, shape, tower, int(m.group("block")), m.group("kind"))


def linear_layers(model: nn.Module) -> list[Layer]:
    """Every ``nn.Linear`` and the fused input projection of every ``nn.MultiheadAttention``
    (``<attn>.in_proj``: its ``in_proj_weight``), in module order."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            found.append(_placed(f"{name}.in_proj", tuple(module.in_proj_weight.shape)))
        elif isinstance(module, nn.Linear):  # also attention's out_proj (a Linear subclass)
            found.append(_placed(name, tuple(module.weight.shape)))
    return found


def modules(model: nn.Module) -> list[tuple[str, str]]:
    """Every named module and its class name, in module order."""
    return [(name, type(m).__name__) for name, m in model.named_modules() if name]


def parameters(model: nn.Module) -> list[tuple[str, tuple[int, ...], int]]:
    """Every parameter: name, shape, number of elements."""
    return [(n, tuple(p.shape), p.numel()) for n, p in model.named_parameters()]
