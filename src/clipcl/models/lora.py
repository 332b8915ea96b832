"""Low-rank adapters (LoRA, Hu et al. 2021) on the ``nn.Linear`` layers of an open_clip model.

A LoRA adds ``ΔW = (alpha / r) · B A`` to a frozen weight ``W (out, in)``, with ``A (r, in)``
Kaiming-uniform and ``B (out, r)`` zero, so an adapted model computes exactly what the plain
model does until ``B`` learns. Two ways to attach it, chosen per layer by how the layer's weight
is consumed:

- a layer **called as a module** (``mlp.c_fc``, ``mlp.c_proj``): a forward hook adds
  ``(alpha / r) · B A dropout(x)`` to its output (dropout acts on the LoRA input path only);
- a layer whose **weight is read by its parent** (``nn.MultiheadAttention.out_proj``: the weight
  goes into ``F.multi_head_attention_forward`` and the module's own forward never runs, so a
  hook or module swap would do nothing): a ``torch.nn.utils.parametrize`` parametrization makes
  ``.weight`` itself ``W + (alpha / r) · B A``. Its input is internal to the attention, so
  there is no LoRA-input dropout on such layers.

The adapters are sub-modules of the adapted layers, so their ``lora_A`` / ``lora_B`` are part of
the model's ``state_dict`` (checkpoints and resume need nothing else). State-dict keys: a hooked
layer keeps ``<layer>.weight`` and gains ``<layer>.lora.lora_A``; a parametrized one holds
``<layer>.parametrizations.weight.original`` and ``<layer>.parametrizations.weight.0.lora_A``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


class LoRA(nn.Module):
    """The low-rank pair of one linear layer ``W (out, in)``; used as a forward-hook adapter."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        w = linear.weight
        self.rank = rank
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(
            torch.empty(rank, linear.in_features, dtype=w.dtype, device=w.device)
        )
        self.lora_B = nn.Parameter(
            torch.empty(linear.out_features, rank, dtype=w.dtype, device=w.device)
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fresh adapter: ``A`` Kaiming-uniform (as ``nn.Linear``), ``B = 0`` (so ``ΔW = 0``)."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) · B A`` (out, in)."""
        return self.scale * (self.lora_B @ self.lora_A)  # (out, r) @ (r, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The LoRA path of a hooked layer: ``(alpha / r) · B A dropout(x)`` (..., out)."""
        h = F.linear(self.dropout(x), self.lora_A)  # (..., r)
        return self.scale * F.linear(h, self.lora_B)  # (..., out)


class LoRAWeight(LoRA):
    """The same pair as a parametrization of ``weight``: ``W ↦ W + (alpha / r) · B A``."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return weight + self.delta_weight()  # (out, in)


class _AddLoRA:
    """Forward hook of a hooked layer: ``y ← y + lora(x)``."""

    def __init__(self, lora: LoRA) -> None:
        self.lora = lora

    def __call__(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor:
        return output + self.lora(inputs[0])  # (..., out)


def lora_modules(root: nn.Module, targets: Sequence[str]) -> dict[str, nn.Linear]:
    """Linear layers of transformer blocks whose name ends in one of ``targets``, by name.

    A layer matches target ``t`` when its name is ``….resblocks.<i>.<t>`` (e.g.
    ``visual.transformer.resblocks.3.attn.out_proj`` for ``attn.out_proj``).

    Raises:
        ValueError: a matching module is not an ``nn.Linear``.
    """
    found: dict[str, nn.Linear] = {}
    for target in targets:
        pattern = re.compile(rf"(^|\.)resblocks\.\d+\.{re.escape(target)}$")
        for name, m in root.named_modules():
            if not pattern.search(name):
                continue
            if not isinstance(m, nn.Linear):
                raise ValueError(f"LoRA target {name} is a {type(m).__name__}, not nn.Linear")
            found[name] = m
    return dict(sorted(found.items()))


def _weight_read_by_parent(root: nn.Module, name: str) -> bool:
    parent = root.get_submodule(name.rpartition(".")[0]) if "." in name else root
    return isinstance(parent, nn.MultiheadAttention)


def add_lora(
    root: nn.Module,
    layers: dict[str, nn.Linear],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
) -> dict[str, LoRA]:
    """Attach a fresh LoRA to each of ``layers`` (named within ``root``); return them by name."""
    adapters: dict[str, LoRA] = {}
    for name, linear in layers.items():
        if _weight_read_by_parent(root, name):
            lora: LoRA = LoRAWeight(linear, rank, alpha)
            parametrize.register_parametrization(linear, "weight", lora)
        else:
            lora = LoRA(linear, rank, alpha, dropout)
            linear.add_module("lora", lora)
            linear.register_forward_hook(_AddLoRA(lora))
        adapters[name] = lora
    return adapters


def base_weight(linear: nn.Module) -> torch.Tensor:
    """The frozen ``W`` of an adapted layer (without the LoRA delta)."""
    name = "parametrizations.weight.original" if parametrize.is_parametrized(linear) else "weight"
    return linear.get_parameter(name)


@torch.no_grad()
def merge_lora(root: nn.Module, adapters: dict[str, LoRA]) -> None:
    """Fold each adapter into its base weight (``W ← W + (alpha / r) · B A``) and reset it.

    For parametrized layers the effective weight is unchanged bit for bit (``W + ΔW`` is what the
    parametrization computed); for hooked layers it is unchanged up to float rounding.
    """
    for name, lora in adapters.items():
        w = base_weight(root.get_submodule(name))
        w.copy_(w + lora.delta_weight())
        lora.reset_parameters()
