"""Training curves: the points of ``train.jsonl`` (:attr:`RunDir.train_path`), how the worker
writes them (:class:`TrainLog`) and how they are read back consistently (:func:`read_points`).

A point is taken every ``max(1, steps // POINTS_PER_TASK)`` steps and after the last step of a
task: the step, the total loss, the loss terms (``ce``: cross-entropy; ``extra``: the method's
extra loss, when it has one; and its named parts, ``Method.extra_loss_terms``: ZSCL's ``l2`` and
``distill``, NSP²'s ``ln``), the learning rate and the seconds of training so far in the task.
Points are buffered and appended with fsync when the task ends and before every mid-task
snapshot, so a snapshot never holds a step whose points are not on disk.

Every training attempt of a task first appends a start line ``{"task": k, "start": s}`` (``s``:
the step it starts after; 0 from scratch, the snapshot's step on a mid-task resume). A reader
applies it: points of task ``k`` after step ``s`` and every point of a later task belong to a
lost attempt and are dropped. So a retrained task's points replace the lost attempt's, a task
resumed from a snapshot keeps the points up to the snapshot, and nothing is duplicated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipcl.durable import append_lines_durably
from clipcl.results.records import CorruptRecords

__all__ = ["POINTS_PER_TASK", "TrainLog", "TrainPoint", "read_points"]

#: About this many points per task (plus the last step's).
POINTS_PER_TASK = 50


@dataclass(frozen=True)
class TrainPoint:
    """The training state of task ``task`` after ``step`` of its ``steps`` steps."""

    task: int
    step: int
    steps: int
    loss: float  # the total loss of the step
    lr: float
    seconds: float  # training seconds of the task so far (across resumed attempts)
    terms: dict[str, float] = field(default_factory=dict)  # "ce", "extra"

    def to_json(self) -> str:
        return json.dumps(
            {
                "task": self.task,
                "step": self.step,
                "steps": self.steps,
                "loss": self.loss,
                "lr": self.lr,
                "seconds": round(self.seconds, 4),
                "terms": self.terms,
            },
            sort_keys=True,
        )


def every_for(steps: int) -> int:
    """The point spacing of a ``steps``-step task."""
    return max(1, steps // POINTS_PER_TASK)


def _parse(line: str) -> TrainPoint | tuple[int, int]:
    """A point, or a start line as (task, start step).

    Raises:
        ValueError, KeyError, TypeError: ``line`` is neither.
    """
    d = json.loads(line)
    if "start" in d:
        return int(d["task"]), int(d["start"])
    terms = {str(k): float(v) for k, v in dict(d.get("terms", {})).items()}
    return TrainPoint(
        int(d["task"]),
        int(d["step"]),
        int(d["steps"]),
        float(d["loss"]),
        float(d["lr"]),
        float(d["seconds"]),
        terms,
    )


def read_points(path: Path) -> list[TrainPoint]:
    """The consistent points of ``path`` (see the module docstring), sorted by (task, step);
    a torn last line (a crash while appending) is skipped; no file: no points.

    Raises:
        CorruptRecords: A line before the last is neither a point nor a start line.
    """
    if not path.is_file():
        return []
    points: dict[tuple[int, int], TrainPoint] = {}
    lines = path.read_text(errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            got = _parse(line)
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                continue
            raise CorruptRecords(f"{path}: line {number} is not a training point") from None
        if isinstance(got, TrainPoint):
            points[(got.task, got.step)] = got
            continue
        task, start = got
        points = {
            key: p
            for key, p in points.items()
            if key[0] < task or (key[0] == task and key[1] <= start)
        }
    return [points[key] for key in sorted(points)]


class TrainLog:
    """Writes the points of one training attempt of a task to ``train.jsonl``.

    Creating it appends the attempt's start line (durably). :meth:`record` keeps the points that
    are due; :meth:`flush` appends them with fsync (the end of the task, before a snapshot).

    Args:
        path: The chain's ``train.jsonl``.
        task: The task index.
        steps: The task's number of steps.
        first_step: The step this attempt starts after (a snapshot's step, or 0).
    """

    def __init__(self, path: Path, task: int, steps: int, first_step: int = 0) -> None:
        self.path, self.task, self.steps = path, task, steps
        self.every = every_for(steps)
        self.offset_s = 0.0
        if first_step > 0:  # the seconds of the steps before the snapshot
            before = [p for p in read_points(path) if p.task == task and p.step <= first_step]
            self.offset_s = before[-1].seconds if before else 0.0
        self._t0 = time.monotonic()
        self._pending: list[tuple[int, Any, float, float, dict[str, Any]]] = []
        append_lines_durably(path, [json.dumps({"start": first_step, "task": task})])

    def due(self, step: int) -> bool:
        """Whether a point is taken after ``step`` (1-based steps finished)."""
        return step % self.every == 0 or step == self.steps

    def record(self, step: int, loss: Any, lr: float, terms: Mapping[str, Any]) -> None:
        """Keep the point of ``step`` (the caller checks :meth:`due` first). The loss and the
        terms may be device tensors: they are read back to the host, all in one transfer,
        when the points are flushed (so taking a point never waits for a GPU)."""
        seconds = self.offset_s + time.monotonic() - self._t0
        kept = {k: v for k, v in terms.items() if v is not None}
        self._pending.append((step, loss, float(lr), seconds, kept))

    def flush(self) -> None:
        """Append the kept points durably (nothing to do when there are none)."""
        if not self._pending:
            return
        values = [p[1] for p in self._pending] + [v for p in self._pending for v in p[4].values()]
        tensors = [v for v in values if hasattr(v, "detach")]
        read: dict[int, float] = {}
        if tensors:
            import torch  # here: reading curves needs no torch

            host = torch.stack([t.detach().float().reshape(()) for t in tensors]).cpu().tolist()
            read = {id(t): v for t, v in zip(tensors, host, strict=True)}

        def value(v: Any) -> float:
            return read[id(v)] if hasattr(v, "detach") else float(v)

        lines = []
        for step, loss, lr, seconds, terms in self._pending:
            clean = {k: value(v) for k, v in terms.items()}
            point = TrainPoint(self.task, step, self.steps, value(loss), lr, seconds, clean)
            lines.append(point.to_json())
        append_lines_durably(self.path, lines)
        self._pending = []
