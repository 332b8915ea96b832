"""Continual-learning metrics computed from accuracy matrices (pure numpy, no I/O).

This module owns the metric definitions for both benchmark protocols:

* MTIL (multi-domain task-incremental learning, as in ZSCL): Transfer, Avg and Last,
  computed exactly like ZSCL's results notebook, plus the zero-shot baseline matrix.
* CIL (class-incremental learning): average incremental accuracy, last accuracy,
  forgetting in two conventions and backward transfer (BWT). ``forgetting`` is the seeds'
  convention (NSP², PGP and Mammoth, PyCIL, PILOT): the best accuracy on a task over every
  evaluation, the last included, minus the final one, so each term is >= 0.
  ``forgetting_chaudhry`` is Chaudhry et al. 2018: the best over the evaluations *before*
  the last, so a task that ends above its earlier best counts negative. The first equals the
  mean of ``max(0, .)`` of the second's per-task terms.

An accuracy matrix ``A[t, i]`` holds the top-1 accuracy (percent) on eval task ``i`` of the
checkpoint taken after training task ``t``; rows and columns are in training order and
indices are 0-based. All results are plain Python floats and are never rounded here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from clipcl.errors import ClipclError

__all__ = ["CILMetrics", "MTILMetrics", "cil_metrics", "mtil_metrics", "zeroshot_matrix"]


def _nan_to_none(values: Sequence[float]) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values]


def _as_square(matrix: ArrayLike, protocol: str) -> NDArray[np.float64]:
    """Convert ``matrix`` to a float64 square 2-D array or raise ClipclError."""
    try:
        arr = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ClipclError(
            f"{protocol} accuracy matrix is not numeric ({exc}); expected a square T x T "
            "matrix of numbers"
        ) from exc
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ClipclError(
            f"{protocol} accuracy matrix must be square (T x T, one row per trained task and "
            f"one column per eval task); got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ClipclError(f"{protocol} accuracy matrix is empty; expected at least 1 task")
    return arr


@dataclass(frozen=True)
class MTILMetrics:
    """MTIL scores of one run (percent).

    Attributes:
        transfer: Mean zero-shot transfer: over tasks 2..T, the mean accuracy on that task
            of the checkpoints trained before it. NaN when T == 1.
        avg: Mean of all T*T entries of the accuracy matrix.
        last: Mean of the final row (accuracy of the final checkpoint on every task).
        transfer_per_task: Per-task transfer; the first entry is NaN (undefined).
        avg_per_task: Column means of the matrix.
        last_per_task: The final row of the matrix.
    """

    transfer: float
    avg: float
    last: float
    transfer_per_task: tuple[float, ...]
    avg_per_task: tuple[float, ...]
    last_per_task: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the headline numbers plus per-task lists (NaN turned into None)."""
        return {
            "transfer": None if math.isnan(self.transfer) else self.transfer,
            "avg": self.avg,
            "last": self.last,
            "per_task": {
                "transfer": _nan_to_none(self.transfer_per_task),
                "avg": _nan_to_none(self.avg_per_task),
                "last": _nan_to_none(self.last_per_task),
            },
        }


def mtil_metrics(matrix: ArrayLike) -> MTILMetrics:
    """Compute Transfer, Avg and Last the way ZSCL's results notebook does.

    Args:
        matrix: Square T x T accuracy matrix ``A[t, i]`` in training order, no NaN entries.

    Returns:
        The MTIL metrics with per-task breakdowns.

    Raises:
        ClipclError: If the matrix is not square, is empty or contains NaN.
    """
    arr = _as_square(matrix, "MTIL")
    if np.isnan(arr).any():
        rows, cols = np.nonzero(np.isnan(arr))
        raise ClipclError(
            f"MTIL accuracy matrix has NaN entries (first at row {int(rows[0])}, column "
            f"{int(cols[0])}); MTIL needs every checkpoint evaluated on every task"
        )
    n_tasks = arr.shape[0]
    transfer_per_task = [math.nan] + [float(arr[:i, i].mean()) for i in range(1, n_tasks)]
    transfer = float(np.mean(transfer_per_task[1:])) if n_tasks >= 2 else math.nan
    avg_per_task = arr.mean(axis=0)
    return MTILMetrics(
        transfer=transfer,
        avg=float(avg_per_task.mean()),
        last=float(arr[-1].mean()),
        transfer_per_task=tuple(transfer_per_task),
        avg_per_task=tuple(float(v) for v in avg_per_task),
        last_per_task=tuple(float(v) for v in arr[-1]),
    )


def zeroshot_matrix(accuracies: ArrayLike) -> NDArray[np.float64]:
    """Build the T x T matrix used to score zero-shot CLIP with the MTIL metrics.

    Args:
        accuracies: Zero-shot accuracy per task, in training order (length T >= 1).

    Returns:
        A float64 matrix whose every row equals ``accuracies``.

    Raises:
        ClipclError: If ``accuracies`` is not a non-empty 1-D sequence of numbers.
    """
    try:
        acc = np.asarray(accuracies, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ClipclError(f"zero-shot accuracies are not numeric ({exc})") from exc
    if acc.ndim != 1 or acc.size == 0:
        raise ClipclError(
            f"zero-shot accuracies must be a non-empty 1-D list (one per task); got shape "
            f"{acc.shape}"
        )
    return np.tile(acc, (acc.size, 1))


@dataclass(frozen=True)
class CILMetrics:
    """CIL scores of one run (percent).

    Attributes:
        avg: Average incremental accuracy, the mean of ``acc_per_step``.
        last: Accuracy over all classes after the final task.
        forgetting: The seeds' convention (NSP², PGP, Mammoth, PyCIL, PILOT): mean over
            tasks but the last of the best accuracy over every evaluation of the task, the
            final one included, minus the final accuracy (each term >= 0). NaN when T == 1.
        forgetting_chaudhry: Chaudhry et al. 2018: the same with the best taken over the
            evaluations before the final one (terms may be negative). NaN when T == 1.
        bwt: Backward transfer, mean over tasks but the last of final minus just-learned
            accuracy. NaN when T == 1.
        acc_per_step: Sample-weighted accuracy over the seen tasks after each step.
    """

    avg: float
    last: float
    forgetting: float
    forgetting_chaudhry: float
    bwt: float
    acc_per_step: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the headline numbers and ``acc_per_step`` (NaN turned into None)."""
        return {
            "avg": self.avg,
            "last": self.last,
            "forgetting": None if math.isnan(self.forgetting) else self.forgetting,
            "forgetting_chaudhry": (
                None if math.isnan(self.forgetting_chaudhry) else self.forgetting_chaudhry
            ),
            "bwt": None if math.isnan(self.bwt) else self.bwt,
            "acc_per_step": _nan_to_none(self.acc_per_step),
        }


def cil_metrics(matrix: ArrayLike, counts: Sequence[float] | None = None) -> CILMetrics:
    """Compute class-incremental metrics from a lower-triangular accuracy matrix.

    Args:
        matrix: Square T x T matrix; ``a[t, i]`` is the accuracy on task ``i``'s classes
            after training task ``t``. Only entries with ``i <= t`` are used (the upper
            triangle is ignored and may be NaN).
        counts: Number of test samples of each task, used to weight the per-step
            accuracy over the seen tasks; ``None`` weights all tasks equally.

    Returns:
        The CIL metrics.

    Raises:
        ClipclError: If the matrix is not square or empty, has NaN on or below the
            diagonal, or ``counts`` has the wrong length or a non-positive entry.
    """
    arr = _as_square(matrix, "CIL")
    n_tasks = arr.shape[0]
    lower = np.tril(np.ones((n_tasks, n_tasks), dtype=bool))
    bad = np.isnan(arr) & lower
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise ClipclError(
            f"CIL accuracy matrix has NaN on or below the diagonal (first at row "
            f"{int(rows[0])}, column {int(cols[0])}); only entries above the diagonal may "
            "be empty"
        )
    if counts is None:
        weights = np.ones(n_tasks, dtype=np.float64)
    else:
        try:
            weights = np.asarray(counts, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ClipclError(f"CIL counts are not numeric ({exc})") from exc
        if weights.ndim != 1 or weights.size != n_tasks:
            raise ClipclError(
                f"CIL counts must have one entry per task ({n_tasks}); got {weights.size}"
            )
        if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
            raise ClipclError(
                f"CIL counts must be positive finite numbers of test samples; got "
                f"{weights.tolist()}"
            )

    acc_per_step = tuple(
        float(np.dot(weights[: t + 1], arr[t, : t + 1]) / weights[: t + 1].sum())
        for t in range(n_tasks)
    )
    if n_tasks >= 2:
        final = arr[-1, :-1]
        # Chaudhry: best accuracy on task i over rows i..T-2 (the final row excluded)
        drop = np.array([arr[i:-1, i].max() for i in range(n_tasks - 1)]) - final
        forgetting_chaudhry = float(np.mean(drop))
        # seeds: best over rows i..T-1, i.e. max(best before, final) - final = max(0, drop)
        forgetting = float(np.mean(np.maximum(drop, 0.0)))
        bwt = float(np.mean(final - np.diag(arr)[:-1]))
    else:
        forgetting = forgetting_chaudhry = bwt = math.nan
    return CILMetrics(
        avg=float(np.mean(acc_per_step)),
        last=acc_per_step[-1],
        forgetting=forgetting,
        forgetting_chaudhry=forgetting_chaudhry,
        bwt=bwt,
        acc_per_step=acc_per_step,
    )
