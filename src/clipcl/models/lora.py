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

- the packed q/k/v **in-projection** of ``nn.MultiheadAttention`` (target ``attn.in_proj``, named
  ``<block>.attn.in_proj``): one pair per projection (``q``, ``k``, ``v``, each ``d × d``) in a
  parametrization of ``in_proj_weight`` that adds ``cat(ΔW_q, ΔW_k, ΔW_v)``.

**Shared LoRA** (:func:`share_lora`, the seed framework's ``--lora-shared``): every adapted layer
with the same key uses one master pair — the same ``lora_A`` / ``lora_B`` parameter objects. The
key is the layer type and its dimensions: attention ``("attn", width, heads)`` (q, k, v and o of
all blocks of that shape share one master) or, with ``split_qkvo``, ``("attn", proj, width,
heads)`` (one master per projection type); MLP layers ``("mlp", in, out)``. Attention and MLP
layers never share; the first layer of a key (by name) is its master.

The adapters are sub-modules of the adapted layers, so their ``lora_A`` / ``lora_B`` are part of
the model's ``state_dict`` (checkpoints and resume need nothing else; a shared master appears
under each layer's key, one tensor). State-dict keys: a hooked layer keeps ``<layer>.weight`` and
gains ``<layer>.lora.lora_A``; a parametrized one holds ``<layer>.parametrizations.weight.original``
and ``<layer>.parametrizations.weight.0.lora_A``; an in-projection
``<attn>.parametrizations.in_proj_weight.0.q.lora_A`` (and ``k``, ``v``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from types import SimpleNamespace

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


class QKVLoRA(nn.Module):
    """Adapters of the packed in-projection ``(3d, d)`` of ``nn.MultiheadAttention``, as a
    parametrization of ``in_proj_weight``: ``W ↦ W + cat(ΔW_q, ΔW_k, ΔW_v)``."""

    def __init__(self, mha: nn.MultiheadAttention, rank: int, alpha: float) -> None:
        super().__init__()
        w, d = mha.in_proj_weight, mha.embed_dim
        if w is None or w.shape != (3 * d, d):
            raise ValueError("attn.in_proj needs a packed (3d, d) in_proj_weight")
        dims = SimpleNamespace(weight=w, in_features=d, out_features=d)
        self.q = LoRA(dims, rank, alpha)  # type: ignore[arg-type]
        self.k = LoRA(dims, rank, alpha)  # type: ignore[arg-type]
        self.v = LoRA(dims, rank, alpha)  # type: ignore[arg-type]

    def pairs(self) -> list[tuple[str, LoRA]]:
        return [("q", self.q), ("k", self.k), ("v", self.v)]

    def reset_parameters(self) -> None:
        for _, pair in self.pairs():
            pair.reset_parameters()

    def delta_weight(self) -> torch.Tensor:
        """``cat(ΔW_q, ΔW_k, ΔW_v)`` (3d, d)."""
        return torch.cat([pair.delta_weight() for _, pair in self.pairs()], dim=0)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta_weight()  # (3d, d)


Adapter = LoRA | QKVLoRA
IN_PROJ = "attn.in_proj"


class _AddLoRA:
    """Forward hook of a hooked layer: ``y ← y + lora(x)``."""

    def __init__(self, lora: LoRA) -> None:
        self.lora = lora

    def __call__(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor:
        return output + self.lora(inputs[0])  # (..., out)


def lora_modules(root: nn.Module, targets: Sequence[str]) -> dict[str, nn.Module]:
    """Layers of transformer blocks whose name ends in one of ``targets``, by name.

    A layer matches target ``t`` when its name is ``….resblocks.<i>.<t>`` (e.g.
    ``visual.transformer.resblocks.3.attn.out_proj`` for ``attn.out_proj``); ``attn.in_proj``
    names the block's ``nn.MultiheadAttention`` (``….resblocks.<i>.attn.in_proj``, whose packed
    ``in_proj_weight`` is adapted).

    Raises:
        ValueError: a matching module is not an ``nn.Linear`` (a multi-head attention for
            ``attn.in_proj``).
    """
    found: dict[str, nn.Module] = {}
    for target in targets:
        module_target = "attn" if target == IN_PROJ else target
        want = nn.MultiheadAttention if target == IN_PROJ else nn.Linear
        pattern = re.compile(rf"(^|\.)resblocks\.\d+\.{re.escape(module_target)}$")
        for name, m in root.named_modules():
            if not pattern.search(name):
                continue
            if not isinstance(m, want):
                raise ValueError(f"LoRA target {name} is a {type(m).__name__}, not {want.__name__}")
            found[name + (".in_proj" if target == IN_PROJ else "")] = m
    return dict(sorted(found.items()))


def _weight_read_by_parent(root: nn.Module, name: str) -> bool:
    parent = root.get_submodule(name.rpartition(".")[0]) if "." in name else root
    return isinstance(parent, nn.MultiheadAttention)


def add_lora(
    root: nn.Module,
    layers: dict[str, nn.Module],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
) -> dict[str, Adapter]:
    """Attach a fresh LoRA to each of ``layers`` (named within ``root``); return them by name."""
    adapters: dict[str, Adapter] = {}
    for name, linear in layers.items():
        if name.endswith("." + IN_PROJ):
            assert isinstance(linear, nn.MultiheadAttention)
            qkv = QKVLoRA(linear, rank, alpha)
            parametrize.register_parametrization(linear, "in_proj_weight", qkv)
            adapters[name] = qkv
            continue
        assert isinstance(linear, nn.Linear)
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
    if isinstance(linear, nn.MultiheadAttention):
        return linear.get_parameter("parametrizations.in_proj_weight.original")
    name = "parametrizations.weight.original" if parametrize.is_parametrized(linear) else "weight"
    return linear.get_parameter(name)


def _layer(root: nn.Module, name: str) -> nn.Module:
    """The adapted module of an adapter's name (the attention for ``….attn.in_proj``)."""
    if name.endswith("." + IN_PROJ):
        name = name.removesuffix(".in_proj")
    return root.get_submodule(name)


def adapter_pairs(name: str, adapter: Adapter) -> Iterator[tuple[str | None, LoRA]]:
    """An adapter's (projection, pair): q/k/v of an in-projection, ``o`` of an attention
    out-projection, ``None`` for an MLP layer."""
    if isinstance(adapter, QKVLoRA):
        yield from adapter.pairs()
    else:
        yield ("o" if name.endswith(".attn.out_proj") else None), adapter


def share_key(root: nn.Module, name: str, proj: str | None, split_qkvo: bool) -> tuple:
    """The key of a pair under shared LoRA (see the module docstring)."""
    if proj is not None:
        mha = root.get_submodule(name.rpartition(".attn")[0] + ".attn")
        shape = (mha.embed_dim, mha.num_heads)
        return ("attn", proj, *shape) if split_qkvo else ("attn", *shape)
    linear = root.get_submodule(name)
    return ("mlp", linear.in_features, linear.out_features)


def share_lora(
    root: nn.Module, adapters: dict[str, Adapter], split_qkvo: bool
) -> dict[tuple, LoRA]:
    """Make every pair use its key's master ``lora_A`` / ``lora_B`` (the first by name);
    returns the masters by key."""
    masters: dict[tuple, LoRA] = {}
    for name in sorted(adapters):
        for proj, pair in adapter_pairs(name, adapters[name]):
            key = share_key(root, name, proj, split_qkvo)
            master = masters.setdefault(key, pair)
            if master is not pair:
                pair.lora_A = master.lora_A
                pair.lora_B = master.lora_B
    return masters


def unique_parameters(adapters: dict[str, Adapter]) -> list[nn.Parameter]:
    """The adapters' parameters, each once (shared masters are one parameter)."""
    seen: dict[int, nn.Parameter] = {}
    for adapter in adapters.values():
        for p in adapter.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


@torch.no_grad()
def merge_lora(root: nn.Module, adapters: dict[str, Adapter]) -> None:
    """Fold each adapter into its base weight (``W ← W + (alpha / r) · B A``), then reset them
    (every layer is folded before any shared master is reset).

    For parametrized layers the effective weight is unchanged bit for bit (``W + ΔW`` is what the
    parametrization computed); for hooked layers it is unchanged up to float rounding.
    """
    deltas = {name: lora.delta_weight() for name, lora in adapters.items()}
    for name, delta in deltas.items():
        w = base_weight(_layer(root, name))
        w.copy_(w + delta)
    for lora in adapters.values():
        lora.reset_parameters()
