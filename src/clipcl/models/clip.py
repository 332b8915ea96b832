"""``ClipModel``: one open_clip CLIP plus what continual learning needs around it.

It owns image preprocessing on tensors, normalised image/text features, template-ensemble class
embeddings, optional per-task linear heads (the ``fc`` train modes), and the split of parameters
into image tower, text tower and the logit scale.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ClipModel(nn.Module):
    """An open_clip CLIP with preprocessing, class embeddings and per-task heads."""

    clip: Any  # open_clip.CLIP / CustomTextCLIP
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(
        self,
        clip: nn.Module,
        tokenizer,
        *,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        arch: str,
    ) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.arch = arch
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.heads = nn.ParameterDict()

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, H, W) at ``image_size`` → normalised float on the model's device."""
        x = images.to(self.device, non_blocking=True).float().div_(255.0)  # (B, 3, H, W)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return (x - self.pixel_mean) / self.pixel_std

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, S, S) → L2-normalised image features (B, D)."""
        return F.normalize(self.clip.encode_image(pixels), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (N, L) → L2-normalised text features (N, D)."""
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        """``s = exp(logit_scale)`` (100 for OpenAI weights)."""
        return self.clip.logit_scale.exp()

    def class_embeddings(
        self, class_names: Sequence[str], templates: Sequence[str], batch_size: int = 512
    ) -> torch.Tensor:
        """Template-ensemble class embeddings (C, D): normalise each, average, re-normalise.

        Gradients flow through when called with grad enabled (trainable text tower).
        """
        texts = [t.format(c) for c in class_names for t in templates]  # class-major
        feats = torch.cat(
            [
                self.encode_text(self.tokenize(texts[i : i + batch_size]))
                for i in range(0, len(texts), batch_size)
            ]
        )  # (C * K, D)
        feats = feats.view(len(class_names), len(templates), -1).mean(dim=1)  # (C, D)
        return F.normalize(feats, dim=-1)

    # ----- per-task linear heads (train modes image-fc / fc) -----
    def add_head(self, key: str, init: torch.Tensor) -> nn.Parameter:
        """Create (or return) the head for ``key`` initialised from class embeddings (C, D)."""
        if key not in self.heads:
            self.heads[key] = nn.Parameter(init.detach().clone().float())
        return self.heads[key]

    def head(self, key: str) -> torch.Tensor | None:
        return self.heads[key] if key in self.heads else None  # noqa: SIM401 (ParameterDict)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # Heads are created lazily; make room for those in the checkpoint before loading.
        for name, value in state_dict.items():
            if name.startswith("heads."):
                key = name[len("heads.") :]
                if key not in self.heads:
                    self.heads[key] = nn.Parameter(torch.empty_like(value, device=self.device))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ----- parameter groups -----
    def named_tower_parameters(self, tower: str) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters of ``tower`` ∈ {image, text, logit, heads} (names relative to ``clip``)."""
        for name, p in self.clip.named_parameters():
            if name.startswith("logit_"):
                group = "logit"
            elif name.startswith("visual."):
                group = "image"
            else:
                group = "text"
            if group == tower:
                yield name, p
        if tower == "heads":
            yield from self.heads.named_parameters()

    def text_tower_trainable(self) -> bool:
        return any(p.requires_grad for _, p in self.named_tower_parameters("text"))
