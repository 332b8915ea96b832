"""The data of the report's figures, as pure functions of the store's frames and the chains'
training curves (no matplotlib here: :mod:`clipcl.results.report` draws what these return, and
tests check these numbers instead of pixels).

Chains are grouped as the results table groups them: by benchmark, method and the non-seed
settings (the ``config`` hash tells settings apart). A group's label is its method followed by
its settings (``zscl lr=1e-05``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from clipcl.results.curves import TrainPoint
from clipcl.results.tables import CORE_COLUMNS, METRICS, _sort_key, chain_matrices

__all__ = [
    "HEADLINE",
    "Headline",
    "MatrixFigure",
    "cost_per_group",
    "eval_task_lines",
    "group_label",
    "headline",
    "loss_series",
    "matrix_figures",
]

#: The metrics the headline figure shows per protocol.
HEADLINE: dict[str, tuple[str, ...]] = {
    "til": METRICS["til"],
    "cil": ("avg", "last", "forgetting"),
}


def _settings_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in CORE_COLUMNS]


def _present(value: Any) -> bool:
    return not (value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)))


def group_label(row: Mapping[str, Any], settings: Sequence[str]) -> str:
    """``method k=v ...`` of a frame row: its method and the settings it has a value for."""
    parts = [str(row["method"])]
    for key in settings:
        value = row.get(key)
        if _present(value):
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            parts.append(f"{key.rsplit('.', 1)[-1]}={shown}")
    return " ".join(parts)


@dataclass(frozen=True)
class MatrixFigure:
    """The accuracy matrix of one group, averaged over its chains (seeds).

    Attributes:
        benchmark: The benchmark.
        protocol: ``til`` or ``cil``.
        label: The group's label (:func:`group_label`).
        method: The method.
        tasks: Task names in order.
        matrix: (T, T) percent, mean over the chains that have the cell; row i = after task
            i, column j = eval task j; NaN where no chain has it (always for the CIL upper
            triangle).
        zeroshot: (T,) the mean zero-shot accuracy per eval task (the row above the matrix).
        chain_ids: The chains averaged, sorted by seed.
        seeds: The chains' seeds, in the same order.
    """

    benchmark: str
    protocol: str
    label: str
    method: str
    tasks: list[str]
    matrix: np.ndarray
    zeroshot: np.ndarray
    chain_ids: tuple[str, ...]
    seeds: tuple[int, ...]


def _groups(df: pd.DataFrame) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    """The chains (one row each) by group, sorted as the results table sorts its rows:
    benchmark, method, then the settings' values (numbers by value)."""
    keys = ["benchmark", "method", "config"] if "config" in df.columns else ["benchmark", "method"]
    firsts = df.drop_duplicates("chain_id")
    settings = _settings_columns(df)

    def order(item: tuple[tuple[Any, ...], pd.DataFrame]) -> tuple[Any, ...]:
        first = item[1].iloc[0]
        values = [_sort_key(first[c]) for c in settings]
        return (str(first["benchmark"]), str(first["method"]), *values, str(item[0]))

    return sorted(firsts.groupby(keys, dropna=False, sort=False), key=order)


def _task_names(df: pd.DataFrame, benchmark: str, size: int) -> list[str]:
    rows = df[(df["benchmark"] == benchmark) & (df["eval_task"] >= 0)]
    named = dict(zip(rows["eval_task"], rows["eval_name"].astype(str), strict=False))
    return [named.get(i, f"task {i}") for i in range(size)]


def _nanmean(stack: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN where every value is (without a warning)."""
    count = np.isfinite(stack).sum(axis=0)
    total = np.where(np.isfinite(stack), stack, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def matrix_figures(df: pd.DataFrame) -> list[MatrixFigure]:
    """One :class:`MatrixFigure` per group of chains of an eval-rows frame (as
    :meth:`ResultsStore.eval_rows_frame` returns it), sorted by benchmark, method, settings."""
    matrices = chain_matrices(df)
    settings = _settings_columns(df)
    out = []
    for _, chains in _groups(df):
        chains = chains.sort_values("seed", kind="stable")
        first = chains.iloc[0]
        ids = [str(c) for c in chains["chain_id"]]
        size = max(matrices[c][0].shape[0] for c in ids)
        acc = np.full((len(ids), size, size), np.nan)
        zs = np.full((len(ids), size), np.nan)
        for n, chain in enumerate(ids):
            m, _, z = matrices[chain]
            acc[n, : len(m), : len(m)], zs[n, : len(z)] = m, z
        matrix = _nanmean(acc)
        protocol = str(first["protocol"])
        if protocol == "cil":
            matrix[np.triu_indices(size, k=1)] = np.nan
        out.append(
            MatrixFigure(
                benchmark=str(first["benchmark"]),
                protocol=protocol,
                label=group_label(first, settings),
                method=str(first["method"]),
                tasks=_task_names(df, str(first["benchmark"]), size),
                matrix=matrix,
                zeroshot=_nanmean(zs),
                chain_ids=tuple(ids),
                seeds=tuple(int(s) for s in chains["seed"].fillna(-1)),
            )
        )
    return out


def eval_task_lines(fig: MatrixFigure) -> dict[str, tuple[list[int], list[float]]]:
    """Per eval task, its accuracy over training: x = the task trained last (-1: zero-shot,
    before any training), y = the group's mean accuracy; only measured points."""
    lines = {}
    for j, name in enumerate(fig.tasks):
        xs, ys = [], []
        for i, value in [(-1, fig.zeroshot[j]), *enumerate(fig.matrix[:, j])]:
            if np.isfinite(value):
                xs.append(i)
                ys.append(float(value))
        lines[name] = (xs, ys)
    return lines


@dataclass(frozen=True)
class Headline:
    """The headline metrics of one benchmark: ``means[g, m]`` ± ``stds[g, m]`` (sample std over
    seeds; NaN for one seed) of group ``labels[g]`` and metric ``metrics[m]``."""

    benchmark: str
    protocol: str
    labels: list[str]
    metrics: tuple[str, ...]
    means: np.ndarray
    stds: np.ndarray
    seeds: list[int]


def headline(summary: pd.DataFrame) -> list[Headline]:
    """Per benchmark of a :func:`~clipcl.results.tables.summarize` table, its headline metrics
    (:data:`HEADLINE`) per group."""
    settings = [
        c
        for c in summary.columns
        if c not in CORE_COLUMNS and c != "seeds" and not c.endswith(("_mean", "_std"))
    ]
    out = []
    for (benchmark, protocol), rows in summary.groupby(["benchmark", "protocol"], sort=True):
        metrics = HEADLINE.get(str(protocol), ())
        means = np.array(
            [[r.get(f"{m}_mean", np.nan) for m in metrics] for _, r in rows.iterrows()]
        )
        stds = np.array([[r.get(f"{m}_std", np.nan) for m in metrics] for _, r in rows.iterrows()])
        out.append(
            Headline(
                str(benchmark),
                str(protocol),
                [group_label(r, settings) for _, r in rows.iterrows()],
                metrics,
                means.astype(float).reshape(len(rows), len(metrics)),
                stds.astype(float).reshape(len(rows), len(metrics)),
                [int(s) for s in rows["seeds"]],
            )
        )
    return out


def loss_series(
    points: Sequence[TrainPoint],
) -> tuple[dict[str, tuple[list[int], list[float]]], list[int]]:
    """A chain's training curves over the whole chain: ``(series, boundaries)``.

    ``series``: "loss" and each loss term ("ce", "extra") → (x, y), x the step counted from the
    chain's first step (task k's steps follow task k − 1's); ``boundaries``: the x where each
    task after the first begins."""
    steps: dict[int, int] = {}
    for p in points:
        steps[p.task] = p.steps
    offset, at = 0, {}
    for task in sorted(steps):
        at[task] = offset
        offset += steps[task]
    series: dict[str, tuple[list[int], list[float]]] = {}
    for p in sorted(points, key=lambda p: (p.task, p.step)):
        x = at[p.task] + p.step
        for name, value in [("loss", p.loss), *sorted(p.terms.items())]:
            xs, ys = series.setdefault(name, ([], []))
            xs.append(x)
            ys.append(value)
    return series, [at[t] for t in sorted(at)][1:]


def intask_series(
    intask: pd.DataFrame, after: pd.DataFrame, steps: Mapping[int, int]
) -> tuple[dict[str, tuple[list[int], list[float]]], list[int]]:
    """One chain's accuracy inside its tasks (``eval.interval_steps``): ``(series, boundaries)``.

    ``series``: each eval task evaluated in-task → (x, top-1), x the step counted from the
    chain's first step as in :func:`loss_series`; the points are its in-task rows (``intask``:
    the chain's ``intask_rows_frame`` rows) and its rows after each task (``after``: the chain's
    ``eval_rows_frame`` rows, at x = the task's end). ``steps``: task → its number of steps;
    tasks without one are left out. ``boundaries``: the x where each task after the first
    begins."""
    at, offset = {}, 0
    for task in sorted(steps):
        at[task] = offset
        offset += steps[task]
    names = list(dict.fromkeys(intask.sort_values("eval_task")["eval_name"].astype(str)))
    points: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
    for r in intask.itertuples(index=False):
        if r.trained_task in at:
            points[str(r.eval_name)].append((at[r.trained_task] + int(r.step), float(r.top1)))
    for r in after.itertuples(index=False):
        if r.trained_task in at and str(r.eval_name) in points:
            x = at[r.trained_task] + steps[r.trained_task]
            points[str(r.eval_name)].append((x, float(r.top1)))
    series = {}
    for name, pts in points.items():
        pts.sort()
        series[name] = ([x for x, _ in pts], [y for _, y in pts])
    return series, [at[t] for t in sorted(at)][1:]


def cost_per_group(
    df: pd.DataFrame, seconds: pd.DataFrame, gpus: int = 0, cpus: int = 1
) -> pd.DataFrame:
    """Wall time per group: one row per (benchmark, label) with chains, the mean seconds per
    task and per chain (finished tasks), the hours of all its chains together, and those hours
    as device-hours: ``gpu_hours`` (tasks that ran on a CUDA device × ``gpus`` per chain, at
    least 1), ``cpu_hours`` (tasks that ran on the CPU × ``cpus`` per chain), ``unknown_hours``
    (tasks whose records are older than the device field) and ``devices`` (the devices seen).

    Args:
        df: Eval rows (for the chains' groups).
        seconds: :meth:`ResultsStore.task_seconds_frame`.
        gpus: GPUs per chain (the sweep's ``resources.gpus``).
        cpus: CPUs per chain (the sweep's ``resources.cpus``).
    """
    settings = _settings_columns(df)
    known = seconds[seconds["seconds"].notna()]
    device = known["device"] if "device" in known else pd.Series(None, index=known.index)
    rows = []
    for _, chains in _groups(df):
        first = chains.iloc[0]
        mask = known["chain_id"].isin(set(chains["chain_id"]))
        mine, where = known[mask], device[mask]
        per_chain = mine.groupby("chain_id")["seconds"].sum()
        on_cpu = where == "cpu"
        unknown = where.isna()
        on_gpu = ~on_cpu & ~unknown
        rows.append(
            {
                "benchmark": str(first["benchmark"]),
                "label": group_label(first, settings),
                "chains": len(chains),
                "task_s": float(mine["seconds"].mean()) if len(mine) else math.nan,
                "chain_s": float(per_chain.mean()) if len(per_chain) else math.nan,
                "hours": float(mine["seconds"].sum()) / 3600,
                "gpu_hours": float(mine["seconds"][on_gpu].sum()) * max(1, gpus) / 3600,
                "cpu_hours": float(mine["seconds"][on_cpu].sum()) * max(1, cpus) / 3600,
                "unknown_hours": float(mine["seconds"][unknown].sum()) / 3600,
                "devices": ", ".join(sorted(set(where.dropna().astype(str)))),
            }
        )
    columns = ["benchmark", "label", "chains", "task_s", "chain_s", "hours", "gpu_hours"]
    columns += ["cpu_hours", "unknown_hours", "devices"]
    return pd.DataFrame(rows, columns=columns)
