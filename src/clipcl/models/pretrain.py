"""Contrastive pretraining of the tiny CLIP on the procedural world (``clipcl pretrain-tiny``).

Every step draws a fresh batch of captioned scenes from ``world.sample_pretraining_batch`` with a
seed derived from (seed, step), so the run is a pure function of its arguments. The result is an
open_clip state dict (fp16, to keep the packaged file small) plus a provenance JSON.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F

from clipcl.data import world
from clipcl.durable import atomic_write_json
from clipcl.models.checkpoint import save_checkpoint
from clipcl.models.clip import ClipModel
from clipcl.models.factory import ModelConfig, build_model
from clipcl.schedules import warmup_cosine

PACKAGED_WEIGHTS = Path(__file__).parent / "weights" / "clipcl-tiny.pt"
PACKAGED_PROVENANCE = PACKAGED_WEIGHTS.with_suffix(".json")


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (image, caption) pairs (Radford et al. 2021)."""
    logits = scale * img @ txt.t()  # (B, B)
    target = torch.arange(img.shape[0], device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def pretrain_tiny(
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 5e-4,
    weight_decay: float = 0.1,
    warmup_steps: int = 200,
    seed: int = 0,
    on_step: Callable[[int, int, float], None] | None = None,
) -> ClipModel:
    """Train ``clipcl-tiny`` from random initialisation; return the model (fp32, eval mode)."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch="tiny", pretrained="none"), torch.device("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
    )
    model.train()
    for step in range(steps):
        cur = warmup_cosine(step, lr, warmup_steps, steps)
        for group in opt.param_groups:
            group["lr"] = cur
        images, captions = world.sample_pretraining_batch(seed * 10**7 + step, batch_size)
        img = model.encode_image(model.preprocess(images))  # (B, D)
        txt = model.encode_text(model.tokenize(captions))  # (B, D)
        loss = clip_loss(img, txt, model.logit_scale())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # as CLIP: cap the temperature at 100
            model.clip.logit_scale.clamp_(0, math.log(100))
        if on_step is not None:
            on_step(step + 1, steps, float(loss.detach()))
    model.eval()
    return model


def save_pretrained(model: ClipModel, out: Path, provenance: dict[str, Any]) -> str:
    """Write the open_clip state dict (fp16) to ``out`` and ``out.json``; return the SHA-256."""
    state = {
        k: v.detach().half() if v.is_floating_point() else v
        for k, v in model.clip.state_dict().items()
    }
    sha = save_checkpoint(state, out)
    atomic_write_json(Path(out).with_suffix(".json"), {**provenance, "sha256": sha})
    return sha


def provenance(args: dict[str, Any], seconds: float, zeroshot: dict[str, Any]) -> dict[str, Any]:
    return {
        "command": "clipcl pretrain-tiny "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in args.items()),
        "arguments": args,
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "zeroshot": zeroshot,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
