"""The one training loop: trains a task for a fixed number of steps, calling the Method hooks."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from clipcl.methods import Method, StepOutputs, TaskContext
from clipcl.models import ClipModel, autocast
from clipcl.schedules import warmup_cosine
from clipcl.workers.spec import TrainConfig

StepCallback = Callable[[int, int, float], None]  # (step, total_steps, loss)


def make_loader(
    dataset, batch_size: int, *, shuffle: bool, seed: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    """A DataLoader whose shuffling order depends only on ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=g,
        num_workers=num_workers,
        drop_last=shuffle and len(dataset) >= batch_size,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def _cycle(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def train_task(
    model: ClipModel,
    method: Method,
    ctx: TaskContext,
    cfg: TrainConfig,
    loader: DataLoader,
    on_step: StepCallback | None = None,
) -> float:
    """Train ``ctx.task`` for the configured steps; return the mean loss of the last 10 steps.

    Per step: forward (autocast) → CE with label smoothing over the task's classes
    + ``method.extra_loss`` → backward → ``after_backward`` → clip → optimizer step →
    ``after_step`` → learning-rate schedule.
    """
    task = ctx.task
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError(
            f"method '{method.name}' left no trainable parameters for task {task.name}"
        )
    steps = cfg.steps_for(len(loader))
    base_lr = cfg.lr_per_task.get(task.name, cfg.lr)
    optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=cfg.weight_decay)
    device = model.device
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16" and device.type == "cuda")

    head = model.head(task.name)
    text_trainable = model.text_tower_trainable()
    fixed_text = None
    if head is None and not text_trainable:
        with torch.no_grad(), autocast(device, cfg.precision):
            fixed_text = model.class_embeddings(task.class_names, task.templates[:1]).float()

    model.train()
    recent: list[float] = []
    batches = _cycle(loader)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, base_lr, cfg.warmup_steps, steps)
        images, labels = next(batches)
        labels = labels.to(device, non_blocking=True)  # (B,)
        with autocast(device, cfg.precision):
            feats = model.encode_image(model.preprocess(images))  # (B, D)
            if head is not None:
                classifier = head  # (C, D)
            elif fixed_text is not None:
                classifier = fixed_text  # (C, D)
            else:
                classifier = model.class_embeddings(task.class_names, task.templates[:1])
            logits = model.logit_scale() * feats @ classifier.t()  # (B, C)
        outputs = StepOutputs(logits=logits.float(), image_features=feats.float())
        loss = F.cross_entropy(outputs.logits, labels, label_smoothing=cfg.label_smoothing)
        extra = method.extra_loss((images, labels), outputs)
        if extra is not None:
            loss = loss + extra
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        method.after_backward()
        if cfg.grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        method.after_step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step} of task {task.name}")
        recent = (recent + [value])[-10:]
        if on_step is not None:
            on_step(step + 1, steps, value)
    model.eval()
    return sum(recent) / len(recent)
