"""The ``Method`` contract: hooks called at fixed points of the worker's single training loop.

Loop order per task (the worker: ``run_chain`` in workers/chain.py, ``train_task`` in
workers/train.py)::

    seed everything from (chain seed, k); ctx.seed = that derived seed; loader seeded by it
    method.before_task(ctx)                      # choose trainable params, add heads, ...
    if method.trains:                            # train_task:
        optimizer = fresh, over the parameters with requires_grad now
        model.train()
        for step in range(steps):
            set the step's learning rate
            images, labels = next(batches)       # uint8 (B, 3, H, W), (B,)
            with autocast(precision):            # a no-op for fp32
                feats = model.encode_image(model.preprocess(images))            # (B, D)
                classifier = method.classifier(task, training=True)
                             or the task's head or its first-template text embeddings  # (C, D)
                logits = model.logit_scale() * feats @ classifier.T              # (B, C)
                outputs = StepOutputs(logits.float(), feats.float())
                terms = method.extra_loss_terms((images, labels), outputs)  # extra_loss, named
            loss = CE(outputs.logits, labels, label_smoothing) + the terms' sum (when any)
            optimizer.zero_grad(); scaler.scale(loss).backward()
            method.after_backward()              # may edit .grad (scaled by GradScaler in fp16)
            clip the gradient norm (unscaled first) when grad_clip_norm is set
            scaler.step(optimizer); scaler.update()
            method.after_step()                  # may edit the update / the weights
            stop with FloatingPointError if the loss is not finite
        model.eval()
    method.after_task(ctx, loader)               # statistics, projectors, ensembling
    checkpoint {model, method.state_dict()} (training methods); evaluate every eval task

Evaluation uses ``method.classifier(task, training=False)`` when it returns one.
``train_defaults`` are TrainConfig values the method's paper uses (e.g. its optimizer); they sit
above the benchmark's defaults and below the sweep's ``train:`` settings.

``check_model(model)`` runs first, before anything is evaluated; ``setup(model)`` runs once per
chain after the zero-shot evaluation and before a checkpoint's method state is restored with
``load_state_dict`` (a resumed chain then continues with ``before_task`` of the next task).

A chain resumed *inside* task k (from a mid-task snapshot, workers/snapshot.py) restores task
k − 1's checkpoint, seeds, calls ``before_task`` as above, then restores the trainable weights
and ``load_task_state_dict`` with what ``task_state_dict`` returned after the snapshot's step,
and continues with the next step. Between two steps is the only time either is called.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader

from clipcl.data import Benchmark, Task
from clipcl.methods.configs import MethodConfig  # noqa: F401  (re-exported)
from clipcl.models import ClipModel


@dataclass(frozen=True)
class TaskContext:
    """What a hook knows about the task at hand."""

    index: int
    task: Task
    benchmark: Benchmark
    #: The task's seed: the worker's derived per-task seed ``seed_everything(spec.seed, index)``,
    #: which also orders the task's training batches. A function of (chain seed, task) alone, so
    #: a resumed chain re-derives it; methods draw from ``generator(...)``, never the global RNG.
    seed: int
    data_root: str | None = None  # the chain's data root (relative method paths resolve here)
    #: Training steps of the task (None where the caller does not say, e.g. a method that does
    #: not train); a method may plan its step schedule with it (OGD's sampled steps).
    steps: int | None = None

    def stream_seed(self, stream: str) -> int:
        """A seed for the method's random stream ``stream`` (a name such as "exemplars"): a
        deterministic function of (task seed, stream), distinct per stream."""
        salt = zlib.crc32(stream.encode())
        return (self.seed * 1_000_003 + salt) % 2**63

    def generator(self, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh ``torch.Generator`` on ``device`` seeded with ``stream_seed(stream)``.

        Built again from (seed, stream) in the same hook on resume, so it is never saved.
        """
        return torch.Generator(device=device).manual_seed(self.stream_seed(stream))


@dataclass
class StepOutputs:
    """Forward results of one training step, handed to ``extra_loss``."""

    logits: torch.Tensor  # (B, C) scaled cosine logits over the current task's classes
    image_features: torch.Tensor  # (B, D) L2-normalised


class Method:
    """Base class: a no-op continual learner that trains whatever ``setup`` leaves trainable."""

    name: ClassVar[str] = "base"
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: False for methods that never train (the loop then skips optimisation entirely).
    trains: ClassVar[bool] = True
    #: TrainConfig keys this method defaults (its paper's optimizer, ...); the sweep overrides them.
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: MethodConfig) -> None:
        self.config = config
        self.model: ClipModel | None = None

    def check_model(self, model: ClipModel) -> None:
        """Raise ``ClipclError`` if this method cannot work on ``model`` (e.g. it needs a ViT).

        Called before anything runs, so a mismatch costs no evaluation; must not change the model.
        """

    def setup(self, model: ClipModel) -> None:
        """Called once per chain with the freshly built model."""
        self.model = model

    def before_task(self, ctx: TaskContext) -> None:
        """Called before training task ``ctx.index``; may set ``requires_grad`` and add heads."""

    def classifier(self, task: Task, *, training: bool) -> torch.Tensor | None:
        """L2-normalised class embeddings (C, D) of ``task``'s classes, or None for the default.

        Called every training step with grad enabled (``training=True``) and under ``no_grad``
        in evaluation (class-incremental evaluation calls it for each seen task and concatenates).
        """
        return None

    def extra_loss(
        self, batch: tuple[torch.Tensor, torch.Tensor], outputs: StepOutputs
    ) -> torch.Tensor | None:
        """A loss term added to the cross-entropy, or None; runs under the step's autocast.

        May draw its own batches from the method's own generators and iterators (seeded from
        ``ctx.seed`` in ``before_task``, so a resumed chain draws the same ones) and forward
        the model or a teacher; must not change model weights or the optimizer.
        """
        return None

    def extra_loss_terms(
        self, batch: tuple[torch.Tensor, torch.Tensor], outputs: StepOutputs
    ) -> dict[str, torch.Tensor]:
        """``extra_loss`` as named terms, which the loop sums in order and the chain's training
        curve records one by one (``train.jsonl``). The default: ``extra_loss`` as one term
        named ``extra`` (none when it returns None). A method whose extra loss has parts
        overrides this, and its ``extra_loss`` returns their sum."""
        extra = self.extra_loss(batch, outputs)
        return {} if extra is None else {"extra": extra}

    def after_backward(self) -> None:
        """Called after ``loss.backward()``, before the optimizer step; may edit gradients."""

    def after_step(self) -> None:
        """Called after ``optimizer.step()``; may edit the weights (e.g. project the update)."""

    def after_task(self, ctx: TaskContext, loader: DataLoader) -> None:
        """Called after training task ``ctx.index``, before its checkpoint and evaluation."""

    def state_dict(self) -> dict[str, Any]:
        """Method state that must survive a resume (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def task_state_dict(self) -> dict[str, Any]:
        """What the steps of the current task changed besides the trainable weights and the
        optimizer: step counters, running averages, the state of generators drawn from in
        ``extra_loss``... (values as ``state_dict``'s). Empty for a method whose steps change
        nothing else: ``before_task`` rebuilds everything it needs."""
        return {}

    def load_task_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``task_state_dict`` returned, after ``before_task`` of the same task.

        Raises:
            ValueError: ``state`` does not fit this method and task (checked before any
            change).
        """
