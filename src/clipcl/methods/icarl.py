"""``icarl``: exemplar memory chosen by herding + distillation on exemplar batches (MTIL baseline).

After task t the just-trained model embeds every training image of task t; per class, herding
(Rebuffi et al., CVPR 2017, Alg. 4) orders the images so that the running mean of the chosen
L2-normalised features stays closest to the class mean. The memory holds at most
``memory_size`` exemplars over all seen classes: quotas are water-filled (:func:`allocate`), and
since herding order is kept, shrinking an old class is truncating its list. Exemplars are stored
as (task, index into that task's train split, label) — the benchmark is rebuilt deterministically
on resume, so checkpoints stay small.

While training task t ≥ 1, ``extra_loss`` draws an exemplar batch and adds
``distill_weight · τ² · mean_rows CE(softmax(z_teacher/τ), log_softmax(z_student/τ))`` (τ = 2;
ZSCL's ``distillation``). ``z`` are scaled cosine logits over each exemplar's own task classes
(first template); the teacher is a frozen copy of the model as it was at the end of the previous
task. No cross-entropy on exemplars: ZSCL's iCaRL never uses exemplar labels either.

Differences from ZSCL's MTIL code (``mtil/src/models/icarl.py``, ``dynamic_dataset.py``), kept
as options or documented: it distils towards the *pretrained* CLIP (``teacher: pretrained``)
over the *current* task's prompts encoded by the teacher for both models
(``kd_classes: current-task``); its herding runs per dataset rather than per class, skips task 0
(first ``memory_size`` images) and caps a dataset at 30 000 images; and its shipped script adds
the KD term only with ``--image_loss`` (which it does not pass).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from clipcl.methods.base import StepOutputs, TaskContext
from clipcl.methods.configs import (  # noqa: F401  (re-exported)
    IcarlConfig,
)
from clipcl.methods.finetune import Finetune
from clipcl.methods.registry import register_method
from clipcl.models import ClipModel


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """Herding order of ``m`` rows of ``features`` (n, D) (iCaRL, Alg. 4).

    Step k picks, among rows not yet chosen, the one whose addition brings the mean of the
    chosen rows closest (Euclidean) to the mean of all rows; ties go to the lowest index.
    Returns the chosen row indices (min(m, n),) in selection order.
    """
    x = features.detach().to("cpu", torch.float64)  # (n, D)
    n = x.shape[0]
    mu = x.mean(dim=0)  # (D,)
    running = torch.zeros_like(mu)  # sum of the chosen rows
    free = torch.ones(n, dtype=torch.bool)
    order: list[int] = []
    for k in range(min(m, n)):
        dist = ((mu - (running + x) / (k + 1)) ** 2).sum(dim=1)  # (n,)
        dist[~free] = float("inf")
        i = int(torch.argmin(dist))
        order.append(i)
        free[i] = False
        running += x[i]
    return torch.tensor(order, dtype=torch.long)


def allocate(caps: Sequence[int], budget: int) -> list[int]:
    """Split ``budget`` exemplars over classes holding at most ``caps[i]`` each.

    Water-filling: every class gets the same share, classes that cannot fill it keep all they
    have and the rest is shared again; the final remainder (< number of open classes) goes one
    each to the earliest open classes. Never exceeds a cap or the budget.
    """
    quotas = [0] * len(caps)
    remaining = budget
    open_ = [i for i, c in enumerate(caps) if c > 0]
    while open_ and remaining > 0:
        share = remaining // len(open_)
        if share == 0:
            for i in open_[:remaining]:
                quotas[i] += 1
            break
        still = []
        for i in open_:
            add = min(share, caps[i] - quotas[i])
            quotas[i] += add
            remaining -= add
            if quotas[i] < caps[i]:
                still.append(i)
        open_ = still
    return quotas


def distillation(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float
) -> torch.Tensor:
    """ZSCL's KD: ``τ² · mean_rows CE(softmax(z_t/τ), log_softmax(z_s/τ))`` for (B, C) logits."""
    p = F.softmax(teacher_logits / tau, dim=1)  # (B, C)
    return F.cross_entropy(student_logits / tau, p) * tau**2


@register_method
class Icarl(Finetune):
    """Sequential fine-tuning plus herding exemplars distilled towards a frozen teacher."""

    name = "icarl"
    Config = IcarlConfig
    config: IcarlConfig

    def __init__(self, config: IcarlConfig) -> None:
        super().__init__(config)
        empty = torch.zeros(0, dtype=torch.long)
        # Exemplars, grouped by (task, label) and in herding order within a class.
        self.ex_task, self.ex_index, self.ex_label = empty, empty.clone(), empty.clone()
        self.train_batch_size: int | None = None  # learnt from the training loader
        self.teacher: ClipModel | None = None
        self._ctx: TaskContext | None = None
        self._gen = torch.Generator()
        self._teacher_text: dict[int, torch.Tensor] = {}
        self._student_text: dict[int, torch.Tensor] = {}  # only while the text tower is frozen

    # ----- hooks -----
    def setup(self, model: ClipModel) -> None:
        super().setup(model)
        if self.config.teacher == "pretrained":  # setup always sees the freshly built model
            self.teacher = _frozen_copy(model)

    def before_task(self, ctx: TaskContext) -> None:
        model = self.model
        assert model is not None
        if self.config.teacher == "previous" and len(self.ex_task) > 0:
            self.teacher = _frozen_copy(model)
        super().before_task(ctx)
        self._ctx = ctx
        self._teacher_text, self._student_text = {}, {}
        self._gen = ctx.generator("exemplars")  # from (chain seed, task): resumes identically

    def extra_loss(
        self, batch: tuple[torch.Tensor, torch.Tensor], outputs: StepOutputs
    ) -> torch.Tensor | None:
        """Distillation on a random exemplar batch (advances the exemplar generator)."""
        if (
            self.teacher is None
            or len(self.ex_task) == 0
            or self.config.distill_weight == 0
            or self._ctx is None
        ):
            return None
        size = self.config.batch_size or self.train_batch_size or len(batch[1])
        pick = torch.randperm(len(self.ex_task), generator=self._gen)[:size]
        pick = pick[torch.argsort(self.ex_task[pick], stable=True)]  # grouped by task
        return self.config.distill_weight * self.distill(pick)

    def after_task(self, ctx: TaskContext, loader: DataLoader) -> None:
        model = self.model
        assert model is not None
        self.train_batch_size = loader.batch_size
        if self.config.teacher == "previous":
            self.teacher = None
        self._teacher_text, self._student_text = {}, {}
        feats, labels = _features(
            model, ctx.task.train, loader.batch_size or 64, loader.num_workers
        )  # (N, D), (N,)
        members = [torch.nonzero(labels == c).flatten() for c in range(ctx.task.num_classes)]
        old = self._groups()
        quotas = allocate(
            [len(g) for g in old] + [len(m) for m in members], self.config.memory_size
        )
        task, index, label = [], [], []
        for (t, c, idx), q in zip(old, quotas[: len(old)], strict=True):
            task.append(torch.full((q,), t))
            index.append(idx[:q])
            label.append(torch.full((q,), c))
        for c, (idx, q) in enumerate(zip(members, quotas[len(old) :], strict=True)):
            chosen = idx[herding(feats[idx], q)]
            task.append(torch.full((len(chosen),), ctx.index))
            index.append(chosen)
            label.append(torch.full((len(chosen),), c))
        self.ex_task = torch.cat(task).long()
        self.ex_index = torch.cat(index).long()
        self.ex_label = torch.cat(label).long()

    def task_state_dict(self) -> dict[str, Any]:
        """The exemplar generator's state (the text caches are rebuilt from frozen towers)."""
        return {"generator": self._gen.get_state()}

    def load_task_state_dict(self, state: dict[str, Any]) -> None:
        self._gen.set_state(state["generator"].cpu())

    def state_dict(self) -> dict[str, Any]:
        return {
            "task": self.ex_task.clone(),
            "index": self.ex_index.clone(),
            "label": self.ex_label.clone(),
            "train_batch_size": self.train_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        task, index, label = (
            torch.as_tensor(state[k]).long().cpu() for k in ("task", "index", "label")
        )
        if not (task.ndim == 1 and task.shape == index.shape == label.shape):
            raise ValueError("icarl state: task, index and label must be 1-D and equally long")
        self.ex_task, self.ex_index, self.ex_label = task, index, label
        self.train_batch_size = state.get("train_batch_size")

    # ----- pieces -----
    def exemplar_counts(self) -> dict[tuple[int, int], int]:
        """Exemplars per (task index, label)."""
        return {(t, c): len(idx) for t, c, idx in self._groups()}

    def _groups(self) -> list[tuple[int, int, torch.Tensor]]:
        """Stored exemplars as (task, label, dataset indices in herding order), stored order."""
        groups: list[tuple[int, int, torch.Tensor]] = []
        if len(self.ex_task) == 0:
            return groups
        keys = torch.stack([self.ex_task, self.ex_label], dim=1)  # (M, 2)
        change = torch.ones(len(keys), dtype=torch.bool)
        change[1:] = (keys[1:] != keys[:-1]).any(dim=1)
        starts = torch.nonzero(change).flatten().tolist() + [len(keys)]
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            groups.append((int(keys[a, 0]), int(keys[a, 1]), self.ex_index[a:b]))
        return groups

    def distill(self, pick: torch.Tensor) -> torch.Tensor:
        """Unweighted KD over the exemplars ``pick`` (positions in the memory, grouped by task)."""
        model, teacher, ctx = self.model, self.teacher, self._ctx
        assert model is not None and teacher is not None and ctx is not None
        tasks = self.ex_task[pick]  # (B,)
        order = torch.unique_consecutive(tasks).tolist()
        pixels = torch.cat(
            [model.preprocess(self._images(t, self.ex_index[pick[tasks == t]])) for t in order]
        )  # (B, 3, S, S); per task, since image sizes may differ between datasets
        student = model.encode_image(pixels)  # (B, D)
        with torch.no_grad():
            target = teacher.encode_image(pixels)  # (B, D)
        s_scale, t_scale = model.logit_scale(), teacher.logit_scale().detach()
        tau = self.config.temperature
        if self.config.kd_classes == "current-task":
            text = self._teacher_embeddings(ctx.index)  # (C, D)
            return distillation(t_scale * target @ text.t(), s_scale * student @ text.t(), tau)
        total = student.new_zeros(())
        for t in order:
            rows = (tasks == t).to(student.device)  # (B,)
            z_s = s_scale * student[rows] @ self._student_embeddings(t).t()  # (b_t, C_t)
            z_t = t_scale * target[rows] @ self._teacher_embeddings(t).t()
            total = total + distillation(z_t, z_s, tau) * int(rows.sum())
        return total / len(pick)

    def _images(self, t: int, indices: torch.Tensor) -> torch.Tensor:
        """uint8 images (b, 3, H, W) of task ``t``'s training split at ``indices``."""
        assert self._ctx is not None
        dataset = self._ctx.benchmark.tasks[t].train
        return torch.stack([dataset[int(i)][0] for i in indices])

    def _student_embeddings(self, t: int) -> torch.Tensor:
        """The current model's class embeddings of task ``t`` (with gradients when its text
        tower trains; cached for the task otherwise)."""
        model, ctx = self.model, self._ctx
        assert model is not None and ctx is not None
        if t in self._student_text:
            return self._student_text[t]
        task = ctx.benchmark.tasks[t]
        text = model.class_embeddings(task.class_names, task.templates[:1])  # (C_t, D)
        if not model.text_tower_trainable():
            self._student_text[t] = text.detach()
        return text

    def _teacher_embeddings(self, t: int) -> torch.Tensor:
        """The teacher's class embeddings of task ``t`` (first template), cached per task."""
        assert self.teacher is not None and self._ctx is not None
        if t not in self._teacher_text:
            task = self._ctx.benchmark.tasks[t]
            with torch.no_grad():
                self._teacher_text[t] = self.teacher.class_embeddings(
                    task.class_names, task.templates[:1]
                )
        return self._teacher_text[t]


def _frozen_copy(model: ClipModel) -> ClipModel:
    """A frozen eval-mode copy of ``model`` (sharing its tokenizer, without its gradients)."""
    teacher = copy.deepcopy(model, memo={id(model.tokenizer): model.tokenizer})
    for p in teacher.parameters():
        p.grad = None
        p.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def _features(
    model: ClipModel, dataset: Dataset, batch_size: int, num_workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image features (N, D) and labels (N,) of ``dataset`` in index order."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    for images, y in DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers
    ):
        feats.append(model.encode_image(model.preprocess(images)).float().cpu())  # (b, D)
        labels.append(torch.as_tensor(y).long())
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels)
