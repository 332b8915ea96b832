"""Deep visual prompts (NSP², Lu et al. 2024, §3): M learnable tokens per prompted block of the
open_clip image tower that act only as extra keys and values of that block's self-attention.

A prompted block computes, for its image tokens ``X`` (N, D) and prompts ``P`` (M, D)::

    A = softmax(LN1(X) W_qᵀ [LN1(X); LN1(P)] W_kᵀ / √dh) [LN1(X); LN1(P)] W_vᵀ     # (N, D) per head

i.e. NSP²'s ``attn(norm1(concat(x, prompt)))[:, :N]``: the prompts are appended to the tokens
before LN1, and the rows of the attention output that belong to them are dropped. Since a query
row only depends on its own token, the same result comes from giving ``attn`` the image tokens
as queries and ``[LN1(X); LN1(P)]`` as keys/values — which is how it is attached here, without
forking open_clip: a forward pre-hook (``with_kwargs``) on the block's ``attn``
(``nn.MultiheadAttention``) appends ``ln_1(P)`` to its key and value inputs along the token axis
(axis 1 when ``attn.batch_first``, open_clip 3.3's layout, else axis 0) and pads an attention
mask or key-padding mask with M unmasked columns. The output keeps the shape of the queries, so
the prompt rows never exist.

Each prompt is a :class:`BlockPrompt` sub-module of its block (state-dict key
``….resblocks.<i>.prompt.tokens``, shape (M, D)), so checkpoints and resume hold it. Init:
``U(−a, a)``, a = 1 as in NSP²'s code (``nn.init.uniform_(prompt, -1, 1)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipcl.errors import ClipclError


class BlockPrompt(nn.Module):
    """The M prompt tokens of one block and the LayerNorm (the block's ``ln_1``) they pass."""

    def __init__(self, length: int, width: int, ln: nn.Module, init_range: float = 1.0) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(length, width))  # (M, D)
        nn.init.uniform_(self.tokens, -init_range, init_range)
        # Not a sub-module: ln_1 already belongs to the block (no duplicate state-dict entry).
        self._ln = [ln]

    @property
    def length(self) -> int:
        return self.tokens.shape[0]

    def normed(self) -> torch.Tensor:
        """``ln_1(P)`` (M, D): the prompts as the attention sees them."""
        return self._ln[0](self.tokens)  # (M, D)

    def extend(self, kv: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
        """Key/value input with ``ln_1(P)`` appended along the token axis.

        Args:
            kv: (B, N, D) when ``batch_first`` else (N, B, D).

        Returns:
            (B, N + M, D) or (N + M, B, D), in ``kv``'s dtype.
        """
        p = self.normed().to(kv.dtype)  # (M, D)
        if batch_first:
            return torch.cat([kv, p.unsqueeze(0).expand(kv.shape[0], -1, -1)], dim=1)
        return torch.cat([kv, p.unsqueeze(1).expand(-1, kv.shape[1], -1)], dim=0)


def _pad_columns(mask: torch.Tensor | None, extra: int) -> torch.Tensor | None:
    """Append ``extra`` unmasked key columns to an attention / key-padding mask (last axis)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return F.pad(mask, (0, extra), value=False)
    return F.pad(mask, (0, extra), value=0.0)


class _AppendPrompt:
    """Forward pre-hook of ``nn.MultiheadAttention``: keys/values ← ``[kv; ln_1(P)]``."""

    NAMES = ("query", "key", "value")

    def __init__(self, prompt: BlockPrompt) -> None:
        self.prompt = prompt

    def __call__(
        self, attn: nn.MultiheadAttention, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[tuple, dict[str, Any]]:
        values = dict(zip(self.NAMES, args, strict=False)) | {
            k: kwargs.pop(k) for k in self.NAMES if k in kwargs
        }
        if kwargs.get("is_causal"):
            raise ValueError("deep prompts do not support causal attention (image tower only)")
        key, value = values["key"], values["value"]
        new_key = self.prompt.extend(key, attn.batch_first)
        new_value = new_key if value is key else self.prompt.extend(value, attn.batch_first)
        m = self.prompt.length
        for name in ("attn_mask", "key_padding_mask"):
            if name in kwargs:
                kwargs[name] = _pad_columns(kwargs[name], m)
        rest = args[3:]
        if len(rest) >= 1:  # key_padding_mask passed positionally
            rest = (_pad_columns(rest[0], m), *rest[1:])
        if len(rest) >= 3:  # attn_mask passed positionally (after need_weights)
            rest = (*rest[:2], _pad_columns(rest[2], m), *rest[3:])
        return (values["query"], new_key, new_value, *rest), kwargs


def image_blocks(visual: nn.Module) -> list[nn.Module]:
    """The residual attention blocks of an open_clip image tower, in order."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None:
        raise ClipclError(
            f"deep prompts need a ViT image tower; {type(visual).__name__} has no transformer "
            "blocks (a ViT CLIP such as ViT-B-16 has them, a ResNet image tower does not)"
        )
    for i, block in enumerate(blocks):
        if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention) or not hasattr(
            block, "ln_1"
        ):
            raise ValueError(
                f"image block {i} ({type(block).__name__}) has no nn.MultiheadAttention 'attn' "
                "and 'ln_1'; deep prompts need open_clip's ResidualAttentionBlock"
            )
    return list(blocks)


def block_attention(block: nn.Module) -> nn.MultiheadAttention:
    """The ``attn`` of an open_clip residual block (checked by :func:`image_blocks`)."""
    attn = block.get_submodule("attn")
    assert isinstance(attn, nn.MultiheadAttention)
    return attn


def add_deep_prompts(
    visual: nn.Module, blocks: Sequence[int], length: int, init_range: float = 1.0
) -> dict[int, BlockPrompt]:
    """Attach ``length`` prompt tokens to each of ``blocks`` of the image tower ``visual``.

    ``length == 0`` or no blocks attaches nothing (the model is unchanged).

    Returns:
        The prompts by block index (each also ``visual.transformer.resblocks[i].prompt``).

    Raises:
        ValueError: a block index outside the tower, repeated, or a block already prompted.
    """
    resblocks = image_blocks(visual)
    depth = len(resblocks)
    bad = [i for i in blocks if not 0 <= i < depth]
    if bad:
        raise ValueError(
            f"prompt blocks {bad} do not exist: this image tower has {depth} blocks "
            f"(0..{depth - 1})"
        )
    if len(set(blocks)) != len(blocks):
        raise ValueError(f"prompt blocks listed twice: {list(blocks)}")
    if length < 0:
        raise ValueError(f"prompt length must be >= 0, got {length}")
    prompts: dict[int, BlockPrompt] = {}
    if length == 0:
        return prompts
    for i in sorted(blocks):
        block = resblocks[i]
        if hasattr(block, "prompt"):
            raise ValueError(f"image block {i} already has a prompt")
        attn = block_attention(block)
        w = attn.in_proj_weight
        prompt = BlockPrompt(length, attn.embed_dim, block.get_submodule("ln_1"), init_range)
        prompt.to(device=w.device, dtype=w.dtype)
        block.add_module("prompt", prompt)
        attn.register_forward_pre_hook(_AppendPrompt(prompt), with_kwargs=True)
        prompts[i] = prompt
    return prompts
