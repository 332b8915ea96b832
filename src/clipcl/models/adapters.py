"""Bottleneck adapters parallel to the MLP of every residual block of an open_clip CLIP (DMNSP).

DMNSP (Kang et al., ICCV 2025; METHODS.md §3) adds to each block of both towers

    out = h + MLP(LN2(h)) + scale · (W_up · Dropout(ReLU(W_down h + b_down)) + b_up)

where ``h`` is the post-attention residual stream (the input of ``ln_2``), bottleneck 64, scale
0.1, dropout 0.1. ``W_down`` is Kaiming-uniform (``nn.Linear``'s default) and ``W_up``, ``b_up``,
``b_down`` are zero, so an adapted model computes exactly what the plain model does until the
adapters learn.

Attached without forking open_clip: a forward pre-hook on the block's ``ln_2`` stashes ``h`` and a
forward hook on its ``mlp`` adds the adapter's output to the MLP's. Each :class:`Adapter` is
registered as the sub-module ``adapter`` of its block, so it is part of the model's
``state_dict`` (``….resblocks.<i>.adapter.down.weight``), moves with ``.to(device)`` and is saved
in checkpoints. :func:`adapters_of` returns them per tower, in layer order — use sites never parse
parameter names.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from clipcl.errors import ClipclError

Tower = Literal["image", "text"]
TOWERS: tuple[Tower, ...] = ("image", "text")


class Adapter(nn.Module):
    """``scale · (W_up · Dropout(ReLU(W_down h + b_down)) + b_up)`` of one block (width → width)."""

    def __init__(
        self,
        width: int,
        bottleneck: int = 64,
        scale: float = 0.1,
        dropout: float = 0.1,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"adapter bottleneck must be >= 1, got {bottleneck}")
        self.width = width
        self.scale = scale
        self.down = nn.Linear(width, bottleneck, dtype=dtype, device=device)
        self.up = nn.Linear(bottleneck, width, dtype=dtype, device=device)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``W_down`` Kaiming-uniform; ``W_up`` and both biases zero (the adapter outputs 0)."""
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Post-attention stream (..., width) → the adapter's addition to the block (..., width)."""
        z = self.dropout(F.relu(self.down(h)))  # (..., bottleneck)
        return self.scale * self.up(z)  # (..., width)


class _AdapterHooks:
    """One block's hooks: stash ``ln_2``'s input, add ``adapter(h)`` to ``mlp``'s output."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self._h: torch.Tensor | None = None

    def stash(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._h = args[0]  # (B, N, D) post-attention stream

    def add(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor):
        h, self._h = self._h, None
        if h is None:
            raise RuntimeError("adapter hook: the block's mlp ran without its ln_2 before it")
        return output + self.adapter(h)  # (B, N, D)


def transformer_blocks(clip: Any, tower: Tower) -> list[Any]:
    """The residual blocks of ``tower`` of an open_clip ``CLIP`` / ``CustomTextCLIP``, in order."""
    if tower == "image":
        trunk = getattr(clip.visual, "transformer", None)
    elif hasattr(clip, "text"):  # CustomTextCLIP keeps its text tower in ``.text``
        trunk = getattr(clip.text, "transformer", None)
    else:
        trunk = getattr(clip, "transformer", None)
    blocks = getattr(trunk, "resblocks", None)
    if blocks is None:
        owner = type(clip.visual if tower == "image" else clip).__name__
        raise ClipclError(
            f"adapters need transformer blocks in the {tower} tower; {owner} has none "
            "(a ViT CLIP such as ViT-B-16 has them, a ResNet image tower does not)"
        )
    return list(blocks)


def _check_block(block: Any, where: str) -> int:
    """Width of a standard open_clip block that can take an adapter; ValueError otherwise."""
    for part in ("ln_2", "mlp"):
        if not isinstance(getattr(block, part, None), nn.Module):
            raise ValueError(f"{where}: block has no '{part}' to attach an adapter to")
    if not isinstance(getattr(block, "ls_2", nn.Identity()), nn.Identity):
        raise ValueError(f"{where}: blocks with layer scale (ls_2) are not supported")
    if isinstance(getattr(block, "adapter", None), Adapter):
        raise ValueError(f"{where}: block already has an adapter")
    return int(block.mlp.c_fc.in_features)


def add_adapters(
    clip: Any,
    *,
    bottleneck: int = 64,
    scale: float = 0.1,
    dropout: float = 0.1,
    towers: tuple[Tower, ...] = TOWERS,
) -> dict[Tower, tuple[Adapter, ...]]:
    """Attach a fresh adapter to every block of ``towers``; return them as :func:`adapters_of`.

    Raises:
        ValueError: a block is not a standard open_clip block or already has an adapter.
    """
    for tower in towers:
        for i, block in enumerate(transformer_blocks(clip, tower)):
            width = _check_block(block, f"{tower} block {i}")
            w = block.mlp.c_fc.weight
            adapter = Adapter(width, bottleneck, scale, dropout, dtype=w.dtype, device=w.device)
            block.add_module("adapter", adapter)
            hooks = _AdapterHooks(adapter)
            block.ln_2.register_forward_pre_hook(hooks.stash)
            block.mlp.register_forward_hook(hooks.add)
    return adapters_of(clip)


def adapters_of(clip: Any) -> dict[Tower, tuple[Adapter, ...]]:
    """The attached adapters per tower, indexed by layer (empty tuple: tower not adapted)."""
    found: dict[Tower, tuple[Adapter, ...]] = {}
    for tower in TOWERS:
        layers = [getattr(b, "adapter", None) for b in transformer_blocks(clip, tower)]
        adapted = tuple(a for a in layers if isinstance(a, Adapter))
        if adapted and len(adapted) != len(layers):
            raise ValueError(f"{tower} tower: only {len(adapted)} of {len(layers)} blocks adapted")
        found[tower] = adapted
    return found


def adapter_parameters(adapters: dict[Tower, tuple[Adapter, ...]]) -> list[nn.Parameter]:
    """Every parameter of ``adapters`` (both towers, layer order)."""
    return [p for tower in TOWERS for a in adapters.get(tower, ()) for p in a.parameters()]
