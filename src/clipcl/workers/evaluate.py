"""Evaluation of a checkpoint on every task's test set under the benchmark's protocol."""

from __future__ import annotations

import torch

from clipcl.data import Benchmark, Task, make_loader
from clipcl.methods import Method
from clipcl.models import ClipModel, Precision, autocast
from clipcl.results.records import ZEROSHOT, EvalRow


def classifier_for(
    model: ClipModel, task: Task, precision: Precision, method: Method | None = None
) -> torch.Tensor:
    """The method's classifier for the task if it has one, else the task's learned head, else
    its template-ensemble class embeddings (C, D)."""
    if method is not None:
        with autocast(model.device, precision):
            clf = method.classifier(task, training=False)
        if clf is not None:
            return clf.detach().float()
    head = model.head(task.name)
    if head is not None:
        return head.detach().float()
    with autocast(model.device, precision):
        return model.class_embeddings(task.class_names, task.templates).float()


@torch.no_grad()
def _count_correct(
    model: ClipModel,
    task: Task,
    classifier: torch.Tensor,
    offset: int,
    batch_size: int,
    precision: Precision,
    num_workers: int,
) -> tuple[int, int, int]:
    """(top-1 correct, total, top-5 correct) of ``task``'s test images; label ``y`` is class
    ``y + offset`` of ``classifier``'s rows (top-5: among the min(5, C) highest scores)."""
    loader = make_loader(
        task.test,
        batch_size,
        shuffle=False,
        seed=0,
        num_workers=num_workers,
        pin_memory=model.device.type == "cuda",
    )
    device = model.device
    hits = torch.zeros(2, dtype=torch.long, device=device)  # (top-1, top-5) on the device
    total = 0
    k = min(5, classifier.shape[0])
    for images, labels in loader:
        with autocast(device, precision):
            feats = model.encode_image(model.preprocess(images)).float()  # (B, D)
        scores = feats @ classifier.t()  # (B, C)
        target = labels.to(device, non_blocking=True) + offset  # (B,)
        pred = scores.argmax(dim=-1)  # (B,) the first of tied maxima, as always
        top = scores.topk(k, dim=-1).indices  # (B, k)
        hits[0] += (pred == target).sum()
        hits[1] += (top == target.unsqueeze(1)).any(dim=1).sum()
        total += int(labels.numel())
    correct, correct5 = hits.tolist()  # the task's one read back to the host
    return correct, total, correct5


@torch.no_grad()
def evaluate_heldout(
    model: ClipModel,
    sets: list[Task],
    trained_index: int,
    trained_name: str,
    chain_id: str,
    *,
    batch_size: int = 256,
    precision: Precision = "fp32",
    num_workers: int = 0,
) -> list[EvalRow]:
    """Rows of the held-out sets (``eval.extra``) for the model after ``trained_index``: each
    set's test images among its own classes, classified by the template-ensemble embeddings
    of its class prompts (never a method's classifier or a task's head: the set is no task);
    ``eval_task`` is the set's position in ``sets``."""
    model.eval()
    rows = []
    for j, task in enumerate(sets):
        with autocast(model.device, precision):
            clf = model.class_embeddings(task.class_names, task.templates).float()  # (C, D)
        correct, total, correct5 = _count_correct(
            model, task, clf, 0, batch_size, precision, num_workers
        )
        rows.append(
            EvalRow(
                chain_id,
                trained_index,
                trained_name,
                j,
                task.name,
                correct,
                total,
                correct5=correct5,
            )
        )
    return rows


@torch.no_grad()
def evaluate(
    model: ClipModel,
    benchmark: Benchmark,
    trained_index: int,
    chain_id: str,
    *,
    batch_size: int = 256,
    precision: Precision = "fp32",
    num_workers: int = 0,
    method: Method | None = None,
    only: int | None = None,
) -> list[EvalRow]:
    """Rows for the checkpoint after task ``trained_index`` (``ZEROSHOT`` = before task 1).

    ``til``: every task's test images among its own classes.
    ``cil``: the test images of each seen task among all seen classes (the zero-shot pass,
    having seen no task, uses every class of the benchmark). ``method`` supplies classifiers
    through its ``classifier`` hook (e.g. learned text contexts). ``only``: just that
    task's row (same classifier and protocol as in the full evaluation).
    """
    model.eval()
    tasks = benchmark.tasks
    trained_name = "zeroshot" if trained_index == ZEROSHOT else tasks[trained_index].name
    rows: list[EvalRow] = []

    def row(i: int, correct: int, total: int, correct5: int) -> EvalRow:
        return EvalRow(
            chain_id,
            trained_index,
            trained_name,
            i,
            tasks[i].name,
            correct,
            total,
            correct5=correct5,
        )

    if benchmark.protocol == "til":
        for i, task in enumerate(tasks):
            if only is not None and i != only:
                continue
            clf = classifier_for(model, task, precision, method)
            rows.append(
                row(i, *_count_correct(model, task, clf, 0, batch_size, precision, num_workers))
            )
        return rows
    seen = tasks if trained_index == ZEROSHOT else tasks[: trained_index + 1]
    clf = torch.cat([classifier_for(model, t, precision, method) for t in seen])  # (sum C, D)
    offset = 0
    for i, task in enumerate(seen):
        if only is not None and i != only:
            offset += task.num_classes
            continue
        rows.append(
            row(i, *_count_correct(model, task, clf, offset, batch_size, precision, num_workers))
        )
        offset += task.num_classes
    return rows
