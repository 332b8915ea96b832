"""Activation capture for the projection family: forward hooks on chosen layers and the internals
of an ``nn.MultiheadAttention`` (queries, keys, attention probabilities, out-proj inputs).

``capture`` streams each hooked layer's input or output to a callback (so covariances accumulate
batch by batch, never holding a task's activations). ``attention_internals`` recomputes what
``F.multi_head_attention_forward`` keeps to itself, from the attention's own weights and its
input; it is what GPM needs for ``out_proj`` (whose input never passes a module boundary) and what
NSP² needs for its query-key and attention-probability statistics.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

CaptureFn = Callable[[str, torch.Tensor], None]


@contextlib.contextmanager
def capture(
    modules: Mapping[str, nn.Module],
    fn: CaptureFn,
    *,
    kind: Literal["input", "output"] = "input",
) -> Iterator[None]:
    """Within the block, every forward of ``modules[name]`` calls ``fn(name, tensor)``.

    ``tensor`` is the module's first positional input (its first keyword argument when called
    with keywords only; ``kind="input"``) or its output (the first element when it returns a
    tuple), detached. Hooks are removed on exit, also on error.
    """
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output) -> None:
            if kind == "input":
                value = args[0] if args else next(iter(kwargs.values()))
            else:
                value = output[0] if isinstance(output, tuple) else output
            fn(name, value.detach())

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class AttentionInternals:
    """What one multi-head attention computed (batch-first, heads split)."""

    q: torch.Tensor  # (B, H, N, dh) projected queries (with bias), not yet scaled
    k: torch.Tensor  # (B, H, Nk, dh)
    v: torch.Tensor  # (B, H, Nk, dh)
    probs: torch.Tensor  # (B, H, N, Nk) softmax(q kᵀ / √dh + mask)
    context: torch.Tensor  # (B, N, D) heads concatenated: the input of out_proj


def attention_internals(
    attn: nn.MultiheadAttention,
    x: torch.Tensor,
    kv: torch.Tensor | None = None,
    *,
    batch_first: bool = True,
    attn_mask: torch.Tensor | None = None,
) -> AttentionInternals:
    """Recompute the internals of ``attn(x, kv, kv)`` (self-attention when ``kv`` is None).

    Supports the packed ``in_proj_weight`` layout open_clip uses (q, k, v dims equal).

    Args:
        attn: the attention module.
        x: query input (B, N, D), or (N, B, D) when ``batch_first`` is False.
        kv: key/value input of the same layout (default ``x``).
        attn_mask: additive (N, Nk) float mask or boolean (True = masked), as the module takes.
    """
    if attn.in_proj_weight is None:
        raise ValueError("attention_internals needs a packed in_proj_weight (open_clip's layout)")
    kv = x if kv is None else kv
    if not batch_first:
        x, kv = x.transpose(0, 1), kv.transpose(0, 1)
    b, n, d = x.shape
    h = attn.num_heads
    dh = d // h
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)  # each (D, D)
    b_q = b_k = b_v = None
    if attn.in_proj_bias is not None:
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, -1, h, dh).transpose(1, 2)  # (B, H, N, dh)

    q = heads(F.linear(x, w_q, b_q))
    k = heads(F.linear(kv, w_k, b_k))
    v = heads(F.linear(kv, w_v, b_v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(dh)  # (B, H, N, Nk)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    probs = scores.softmax(dim=-1)  # (B, H, N, Nk)
    context = (probs @ v).transpose(1, 2).reshape(b, n, d)  # (B, N, D)
    return AttentionInternals(q=q, k=k, v=v, probs=probs, context=context)


def key_weights_per_head(attn: nn.MultiheadAttention) -> torch.Tensor:
    """``W_k`` split by head: (H, dh, D), so ``q_h @ W_k[h]`` maps a head's query to R^D."""
    d = attn.embed_dim
    h = attn.num_heads
    w_k = attn.in_proj_weight[d : 2 * d]  # (D, D): rows = output features
    return w_k.view(h, d // h, d)
