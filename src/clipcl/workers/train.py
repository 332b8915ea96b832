"""The one training loop: trains a task for a fixed number of steps, calling the Method hooks.

It can start inside a task (:class:`TrainResume`, from a mid-task snapshot) and hands its state
to a hook after every step (:class:`StepState`), which snapshots it when due.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from clipcl.data import cycle, make_loader
from clipcl.methods import Method, StepOutputs, TaskContext
from clipcl.models import ClipModel, autocast
from clipcl.schedules import constant, multistep, warmup_cosine
from clipcl.workers.snapshot import restore_rng
from clipcl.workers.spec import TrainConfig

__all__ = [
    "StepState",
    "TrainResume",
    "lr_at",
    "make_loader",  # moved to data
    "make_optimizer",
    "train_task",
]

StepCallback = Callable[[int, int, float], None]  # (step, total_steps, loss)


@dataclass
class TrainResume:
    """Where a task's training resumes: after ``step`` steps, with these states."""

    step: int
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, Any]  # clipcl.workers.snapshot.capture_rng() after that step
    recent: list[float] = field(default_factory=list)


#: Steps between reads of the loss back to the host on CUDA (progress, the NaN check, the mean
#: of the last 10): one transfer of the queued losses, so the host never waits for the GPU inside
#: a step. The CPU reads every step (it costs nothing there), so its behaviour is unchanged.
SYNC_EVERY_CUDA = 32
SYNC_EVERY_CPU = 1


class _Losses:
    """The steps' losses, read back to the host in batches: on each read every queued loss is
    checked (a non-finite one raises, naming its step) and the last 10 are kept."""

    def __init__(self, task: str, recent: list[float]) -> None:
        self.task = task
        self.recent = list(recent)
        self.pending: list[tuple[int, torch.Tensor]] = []  # (0-based step, 0-d loss tensor)

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.pending.append((step, loss))

    def read(self) -> float:
        """Read the queued losses (one host transfer); return the newest."""
        if self.pending:
            values = torch.stack([t for _, t in self.pending]).float().cpu().tolist()
            for (step, _), value in zip(self.pending, values, strict=True):
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"loss became {value} at step {step} of task {self.task}"
                    )
            self.pending = []
            self.recent = (self.recent + values)[-10:]
        return self.recent[-1] if self.recent else float("nan")


@dataclass
class StepState:
    """The loop's state after a step, for the step hook (a snapshot is made of it).

    The step's loss and its terms stay on the device until read: :attr:`loss` and
    :attr:`recent` read them (a GPU sync), ``loss_tensor`` and ``terms`` do not."""

    step: int  # steps finished
    steps: int
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    losses: _Losses
    loss_tensor: torch.Tensor  # the step's total loss (0-d, detached)
    lr: float = float("nan")  # the step's learning rate
    #: The step's loss terms, as tensors (read only when wanted: each read may sync a GPU):
    #: "ce" the cross-entropy, "extra" the method's extra loss (absent when it has none) and
    #: the method's named terms (``Method.extra_loss_terms``, e.g. ZSCL's "l2" and "distill").
    terms: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        """The step's total loss (a host read)."""
        return float(self.loss_tensor)

    @property
    def recent(self) -> list[float]:
        """The losses of the last 10 steps up to this one (reads every queued loss; raises
        ``FloatingPointError`` if one is not finite)."""
        self.losses.read()
        return list(self.losses.recent)


StepHook = Callable[[StepState], None]


def make_optimizer(
    params: list[torch.nn.Parameter],
    cfg: TrainConfig,
    lr: float,
    weight_decay: float | None = None,
):
    """The task's optimizer: ``adamw`` (decoupled decay), ``adam`` (L2 inside Adam) or ``sgd``;
    ``weight_decay`` None = ``cfg.weight_decay``. Adam(W) uses torch's fused kernel when
    ``cfg.fused_optimizer`` and every parameter is on a CUDA device (the CPU keeps the default
    implementation, so CPU results do not change)."""
    wd = cfg.weight_decay if weight_decay is None else weight_decay
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    fused = cfg.fused_optimizer and bool(params) and all(p.is_cuda for p in params)
    kernel = True if fused else None  # None: torch's default (the per-tensor loop here)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=kernel)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=kernel)


#: The torch.compile backend of ``train.compile`` (tests trace with "aot_eager": no C compiler).
COMPILE_BACKEND = "inductor"


class ImageEncoder:
    """``model.encode_image``, through ``torch.compile`` when ``enabled``; the first failure
    of the compiled function (dynamo cannot trace a hook, inductor has no compiler, ...) warns
    once and every later call runs eagerly. The model's modules are not wrapped, so its state
    dict and its hooks are the eager ones."""

    def __init__(self, model: ClipModel, enabled: bool) -> None:
        self.model = model
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        if enabled:
            self.compiled = torch.compile(model.encode_image, backend=COMPILE_BACKEND)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(pixels)
            except Exception as exc:  # noqa: BLE001 (any compile failure: fall back)
                self.compiled = None
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                warnings.warn(
                    f"train.compile: torch.compile failed ({type(exc).__name__}: {first});"
                    " training on without it",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.model.encode_image(pixels)


def set_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 for fp32 matmuls and convolutions on ``device`` when it is CUDA (``train.tf32``);
    nothing on the CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def lr_at(cfg: TrainConfig, step: int, base_lr: float, steps: int) -> float:
    """Learning rate of ``step`` (0-based) of a ``steps``-step task under ``cfg.schedule``."""
    if cfg.schedule == "multistep":
        return multistep(step, base_lr, cfg.warmup_steps, steps, cfg.lr_milestones, cfg.lr_gamma)
    if cfg.schedule == "constant":
        return constant(step, base_lr, cfg.warmup_steps)
    return warmup_cosine(step, base_lr, cfg.warmup_steps, steps)


def _total(parts: list[torch.Tensor]) -> torch.Tensor:
    """The sum of the extra-loss terms, left to right."""
    total = parts[0]
    for t in parts[1:]:
        total = total + t
    return total


def train_task(
    model: ClipModel,
    method: Method,
    ctx: TaskContext,
    cfg: TrainConfig,
    loader: DataLoader,
    on_step: StepCallback | None = None,
    *,
    resume: TrainResume | None = None,
    after_step: StepHook | None = None,
) -> float:
    """Train ``ctx.task`` for the configured steps; return the mean loss of the last 10 steps.

    A fresh optimizer over the parameters that require grad (after ``before_task``). Per step:
    learning rate of the step → under autocast: forward with the method's classifier (or the
    task's head / text embeddings) and ``method.extra_loss`` → CE with label smoothing over the
    task's classes + the extra term → backward → ``after_backward`` → clip → optimizer step →
    ``after_step``. The order is written out in ``clipcl.methods.base``.

    ``resume`` starts after its step, with its optimizer, scaler and RNG states and the batch
    stream skipped ahead (the caller has restored the weights and the method's task state);
    ``after_step`` receives the state after every step (it may raise to stop the task).
    """
    task = ctx.task
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError(
            f"method '{method.name}' left no trainable parameters for task {task.name}"
        )
    steps = cfg.steps_for(len(loader))
    base_lr = cfg.lr_for(ctx.index, task.name)
    optimizer = make_optimizer(params, cfg, base_lr, cfg.weight_decay_for(ctx.index))
    device = model.device
    set_tf32(device, cfg.tf32)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16" and device.type == "cuda")

    encode_image = ImageEncoder(model, cfg.compile)
    head = model.head(task.name)
    text_trainable = model.text_tower_trainable()
    fixed_text: torch.Tensor | None = None  # frozen text embeddings, computed once when used

    model.train()
    first = 0
    recent: list[float] = []
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        if scaler.is_enabled() and resume.scaler:
            scaler.load_state_dict(resume.scaler)
        first, recent = resume.step, list(resume.recent)
        restore_rng(resume.rng)  # last: nothing below draws before the step does
    losses = _Losses(task.name, recent)
    sync_every = SYNC_EVERY_CUDA if device.type == "cuda" else SYNC_EVERY_CPU
    batches = cycle(loader, start=first)
    for step in range(first, steps):
        lr = lr_at(cfg, step, base_lr, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, labels = next(batches)
        labels = labels.to(device, non_blocking=True)  # (B,)
        with autocast(device, cfg.precision):
            feats = encode_image(model.preprocess(images))  # (B, D)
            method_clf = method.classifier(task, training=True)
            if method_clf is not None:
                classifier = method_clf  # (C, D)
            elif head is not None:
                classifier = head  # (C, D)
            elif text_trainable:
                classifier = model.class_embeddings(task.class_names, task.templates[:1])
            else:
                if fixed_text is None:
                    with torch.no_grad():
                        fixed_text = model.class_embeddings(
                            task.class_names, task.templates[:1]
                        ).float()
                classifier = fixed_text  # (C, D)
            logits = model.logit_scale() * feats @ classifier.t()  # (B, C)
            outputs = StepOutputs(logits=logits.float(), image_features=feats.float())
            parts = method.extra_loss_terms((images, labels), outputs)  # autocast forwards too
        loss = F.cross_entropy(outputs.logits, labels, label_smoothing=cfg.label_smoothing)
        terms = {"ce": loss.detach()}
        if parts:
            extra = _total(list(parts.values()))
            terms["extra"] = extra.detach()
            terms.update({name: t.detach() for name, t in parts.items() if name != "extra"})
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
        loss = loss.detach()
        losses.add(step, loss)
        if (step + 1 - first) % sync_every == 0 or step + 1 == steps:
            value = losses.read()
            if on_step is not None:
                on_step(step + 1, steps, value)
        if after_step is not None:
            after_step(StepState(step + 1, steps, optimizer, scaler, losses, loss, lr, terms))
    model.eval()
    losses.read()
    return sum(losses.recent) / len(losses.recent) if losses.recent else float("nan")
