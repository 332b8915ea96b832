"""Learning-rate schedules shared by chain training and tiny-CLIP pretraining."""

from __future__ import annotations

import math


def warmup_cosine(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * base_lr


def multistep(
    step: int, base_lr: float, warmup: int, total: int, milestones: tuple[float, ...], gamma: float
) -> float:
    """Linear warm-up, then ``base_lr · gamma^k`` where k milestones (fractions of ``total``)
    have been passed (NSP²: ×0.1 at 50 % and 80 %)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    passed = sum(step >= round(m * total) for m in milestones)
    return base_lr * gamma**passed


def constant(step: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up, then ``base_lr``."""
    return base_lr * (step + 1) / warmup if step < warmup else base_lr
