"""Prompt tuning attached to an open_clip CLIP without forking it: a shared shallow image prompt
and per-task CoOp text contexts (the modules PGP trains; Qiao et al., ICLR 2024).

- :class:`ImagePrompt`: ``L_p`` learnable tokens (L_p, W) inserted once into the image sequence
  right after the CLS token, after the positional embedding and before ``ln_pre`` — a forward
  pre-hook on ``visual.ln_pre`` rewrites its input ``[cls, patches] → [cls, prompt, patches]``.
  The prompt tokens get no positional embedding and do pass through ``ln_pre`` (as in PGP's
  CLIP code). CLS stays at index 0, so open_clip's token pooling is unchanged. Disabled or of
  length 0, the hook returns the sequence untouched (features bit-identical to the plain model).
- :class:`TaskContexts`: CoOp (Zhou et al., IJCV 2022) contexts, one (n_ctx, W_text) tensor
  per task. The class prompt ``"[SOS] ctx_1 … ctx_n {classname}. [EOT]"`` is built by
  tokenising ``"X X … X {classname}."`` (CoOp's scaffold), embedding it with the frozen token
  embedding and replacing the ``n`` X positions by the context; the rest of
  ``CLIP.encode_text`` (positional embedding, text transformer, ``ln_final``, EOT pooling,
  projection) is replicated from the embedding step on (:func:`encode_with_context`).

State: the prompt is ``clip.visual.image_prompt.prompt``; the contexts are
``clip.text_contexts.contexts.<task key>``, so checkpoints hold them. Contexts are created lazily
(by the method, when a task starts); :meth:`TaskContexts._load_from_state_dict` creates the ones
a checkpoint holds before loading, the same trick ``ClipModel.load_state_dict`` uses for heads,
so a resumed chain needs no other state. Scaffolds (token ids and the frozen embeddings around
the context) are derived data, rebuilt on demand and never saved.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn

from clipcl.errors import ClipclError
from clipcl.models.clip import ClipModel

CTX_INIT_STD = 0.02  # CoOp's generic-context initialisation N(0, 0.02²)
SCAFFOLD_WORD = "X"  # placeholder word whose token positions the context replaces


class ImagePrompt(nn.Module):
    """``L_p`` shared prompt tokens (L_p, W) for the image tower."""

    def __init__(self, length: int, width: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        if length < 0:
            raise ValueError(f"prompt length must be >= 0, got {length}")
        self.prompt = nn.Parameter(torch.empty(length, width, dtype=dtype, device=device))
        self.enabled = True
        if length:
            # PGP keeps the prompt as the weight of an nn.Linear(W, L_p): Kaiming-uniform with
            # a = √5, i.e. U(−1/√W, 1/√W).
            nn.init.kaiming_uniform_(self.prompt, a=math.sqrt(5))

    @property
    def length(self) -> int:
        return self.prompt.shape[0]

    def insert(self, x: torch.Tensor) -> torch.Tensor:
        """``[cls, patches]`` (B, 1 + N, W) → ``[cls, prompt, patches]`` (B, 1 + L_p + N, W)."""
        if not self.enabled or self.length == 0:
            return x
        prompt = self.prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, L_p, W)
        return torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)


class _InsertPrompt:
    """Forward pre-hook of ``visual.ln_pre``: insert the prompt into its input sequence."""

    def __init__(self, prompt: ImagePrompt) -> None:
        self.prompt = prompt

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (self.prompt.insert(args[0]), *args[1:])


def require_vit_clip(clip: Any) -> None:
    """Refuse (``ClipclError``) a model the prompt modules cannot attach to."""
    visual: Any = getattr(clip, "visual", None)
    if not (hasattr(clip, "token_embedding") and hasattr(visual, "ln_pre")):
        raise ClipclError(
            f"prompt tuning needs an open_clip CLIP with a ViT image tower and a built-in text "
            f"tower, got {type(clip).__name__} / {type(visual).__name__}"
        )
    if not getattr(visual.transformer, "batch_first", True):
        raise ClipclError("prompt tuning needs a batch-first open_clip vision transformer")


def add_image_prompt(clip: Any, length: int) -> ImagePrompt:
    """Attach a fresh :class:`ImagePrompt` of ``length`` tokens as ``clip.visual.image_prompt``."""
    require_vit_clip(clip)
    visual = clip.visual
    pos = visual.positional_embedding  # (1 + N, W)
    prompt = ImagePrompt(length, pos.shape[-1], pos.dtype, pos.device)
    visual.add_module("image_prompt", prompt)
    visual.ln_pre.register_forward_pre_hook(_InsertPrompt(prompt))
    return prompt


def context_key(task_name: str) -> str:
    """Parameter name of a task's context (``ParameterDict`` keys may not contain dots)."""
    return re.sub(r"[^0-9A-Za-z_-]", "_", task_name)


class TaskContexts(nn.Module):
    """Per-task CoOp context vectors, keyed by :func:`context_key` of the task name."""

    _anchor: torch.Tensor

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.contexts = nn.ParameterDict()
        # Follows the model across .to(device), so contexts made at load time land on its device.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    def add(self, key: str, init: torch.Tensor) -> nn.Parameter:
        """Create the context ``key`` from ``init`` (n_ctx, W); return the existing one if any."""
        if key not in self.contexts:
            if init.dim() != 2 or init.shape[1] != self.width:
                raise ValueError(f"context must be (n_ctx, {self.width}), got {tuple(init.shape)}")
            self.contexts[key] = nn.Parameter(init.detach().clone())
        return self.contexts[key]

    def get(self, key: str) -> nn.Parameter | None:
        return self.contexts[key] if key in self.contexts else None  # noqa: SIM401 (ParameterDict)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Contexts are created lazily; make room for those in the checkpoint before loading.
        head = prefix + "contexts."
        for name, value in state_dict.items():
            if name.startswith(head) and name[len(head) :] not in self.contexts:
                self.contexts[name[len(head) :]] = nn.Parameter(
                    torch.empty_like(value, device=self._anchor.device)
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def add_text_contexts(clip: Any) -> TaskContexts:
    """Attach an empty :class:`TaskContexts` as ``clip.text_contexts``."""
    require_vit_clip(clip)
    contexts = TaskContexts(clip.token_embedding.weight.shape[1])
    clip.add_module("text_contexts", contexts)
    return contexts


@dataclass(frozen=True)
class Scaffold:
    """The frozen parts of a task's class prompts around an ``n_ctx``-token context."""

    tokens: torch.Tensor  # (C, L) token ids of "X … X {name}." (EOT position for pooling)
    prefix: torch.Tensor  # (C, 1, W) embedding of [SOS]
    suffix: torch.Tensor  # (C, L − 1 − n_ctx, W) embeddings of "{name}. [EOT] pad…"


def _phrase_ids(model: ClipModel, phrase: str) -> torch.Tensor:
    """Token ids of ``phrase`` without [SOS] / [EOT] (EOT = the largest id, open_clip's rule)."""
    ids = model.tokenize([phrase])[0]  # (L,)
    return ids[1 : int(ids.argmax())]


def phrase_context(model: ClipModel, phrase: str) -> torch.Tensor:
    """Context initialised from ``phrase`` (n_tokens, W): its frozen token embeddings (CoOp)."""
    ids = _phrase_ids(model, phrase)
    if ids.numel() == 0:
        raise ClipclError(f"context init phrase {phrase!r} has no tokens")
    with torch.no_grad():
        return model.clip.token_embedding(ids).float()  # (n, W)


def random_context(
    n_ctx: int, width: int, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """CoOp's generic context: N(0, 0.02²) entries (n_ctx, W), drawn on the CPU from
    ``generator`` (the global RNG when None), then moved to ``device``."""
    return (torch.randn(n_ctx, width, generator=generator) * CTX_INIT_STD).to(device)


@torch.no_grad()
def build_scaffold(model: ClipModel, class_names: Sequence[str], n_ctx: int) -> Scaffold:
    """Token ids and frozen embeddings of ``"X … X {name}."`` (``n_ctx`` X's) for each class."""
    ids = _phrase_ids(model, SCAFFOLD_WORD)
    if ids.numel() != 1:
        raise RuntimeError(f"the scaffold word {SCAFFOLD_WORD!r} is not one token")
    lead = " ".join([SCAFFOLD_WORD] * n_ctx)
    texts = [f"{lead} {name}." if n_ctx else f"{name}." for name in class_names]
    tokens = model.tokenize(texts)  # (C, L)
    eot = tokens.argmax(dim=-1)  # (C,)
    if bool((eot <= n_ctx + 1).any()) or bool((tokens[:, 1 : 1 + n_ctx] != ids[0]).any()):
        raise ClipclError(
            f"{n_ctx} context tokens and the class name do not fit the text context length "
            f"{tokens.shape[1]} of model {model.arch}"
        )
    emb = model.clip.token_embedding(tokens)  # (C, L, W)
    return Scaffold(tokens=tokens, prefix=emb[:, :1], suffix=emb[:, 1 + n_ctx :])


def encode_with_context(model: ClipModel, ctx: torch.Tensor, scaffold: Scaffold) -> torch.Tensor:
    """L2-normalised class embeddings (C, D) of the scaffold's classes under context ``ctx``.

    ``CLIP.encode_text`` (open_clip 3.3) from the token-embedding step on, with the context's
    rows in place of the X tokens; gradients flow into ``ctx``.
    """
    clip = model.clip
    cast_dtype = clip.transformer.get_cast_dtype()
    c = scaffold.tokens.shape[0]
    x = torch.cat(
        [
            scaffold.prefix,
            ctx.unsqueeze(0).expand(c, -1, -1).to(scaffold.prefix.dtype),
            scaffold.suffix,
        ],
        dim=1,
    ).to(cast_dtype)  # (C, L, W)
    x = x + clip.positional_embedding.to(cast_dtype)
    x = clip.transformer(x, attn_mask=clip.attn_mask)  # (C, L, W)
    x = clip.ln_final(x)
    x = text_global_pool(
        x, scaffold.tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None)
    )  # (C, W)
    if clip.text_projection is not None:
        if isinstance(clip.text_projection, nn.Linear):
            x = clip.text_projection(x)
        else:
            x = x @ clip.text_projection  # (C, D)
    return F.normalize(x, dim=-1)
