"""``joint``: the upper bound — every step also trains on the other tasks' data.

At task k each step adds, to the current batch's cross-entropy, the cross-entropy of one batch of
every other task in scope (``seen``: tasks 0..k−1, so after the last task the model has been
trained on all tasks together — the usual joint upper bound, read off ``Last``; ``all``: every
task of the benchmark from the first step on, the data of all tasks at once). Each batch is
classified among its own task's classes (task-incremental), with that task's first template.
Batches are drawn from per-task loaders seeded from the task seed and the other task's name
(``TaskContext.stream_seed``), so a resumed chain draws the same ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from clipcl.data import Task, cycle, make_loader
from clipcl.methods.base import StepOutputs, TaskContext
from clipcl.methods.configs import (  # noqa: F401  (re-exported)
    JointConfig,
)
from clipcl.methods.finetune import Finetune
from clipcl.methods.registry import register_method


@register_method
class Joint(Finetune):
    """Multi-task training on the tasks in scope (an upper bound, not a continual learner)."""

    name = "joint"
    Config = JointConfig
    config: JointConfig

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        tasks = ctx.benchmark.tasks
        others = tasks[: ctx.index] if self.config.scope == "seen" else tasks
        self._others: list[tuple[Task, Iterator]] = []
        self._loaders: list[DataLoader] = []
        for task in others:
            if task.name == ctx.task.name:
                continue
            loader = make_loader(
                task.train,
                self.config.batch_size,
                shuffle=True,
                seed=ctx.stream_seed(f"joint.{task.name}"),
                num_workers=0,
                pin_memory=False,
            )
            self._others.append((task, cycle(loader)))
            self._loaders.append(loader)
        self._drawn = 0  # batches drawn from each other task's stream in this task

    def task_state_dict(self) -> dict[str, Any]:
        """How far the other tasks' batch streams are (one batch each per step)."""
        return {"drawn": self._drawn}

    def load_task_state_dict(self, state: dict[str, Any]) -> None:
        drawn = int(state["drawn"])
        # the streams are seeded: skip ahead without loading the batches already drawn
        self._others = [
            (task, cycle(loader, drawn))
            for (task, _), loader in zip(self._others, self._loaders, strict=True)
        ]
        self._drawn = drawn

    def extra_loss(
        self, batch: tuple[torch.Tensor, torch.Tensor], outputs: StepOutputs
    ) -> torch.Tensor | None:
        model = self.model
        assert model is not None
        total = None
        for task, batches in self._others:
            images, labels = next(batches)
            labels = labels.to(model.device)
            feats = model.encode_image(model.preprocess(images))
            classes = model.class_embeddings(task.class_names, task.templates[:1])
            logits = model.logit_scale() * feats.float() @ classes.float().t()
            loss = F.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)
            total = loss if total is None else total + loss
        self._drawn += 1
        return total
