"""``clipcl report``: one self-contained ``index.html`` of a sweep's results (every figure
embedded as a PNG data URI; no script, style sheet or font from anywhere) and the same figures
as PNG files beside it.

Per benchmark: the results table (as ``clipcl results``), the headline metrics per group with
seed error bars; per group (method + settings): the accuracy matrix averaged over seeds (zero-shot
row above it; the CIL upper triangle blank) and the accuracy of every eval task over training;
the training-loss curves of one chain per group; cost: wall time per task and chain, hours per
group, the sweep's provenance. The figures' data comes from :mod:`clipcl.results.figures`;
this module only draws it (matplotlib's Agg canvas, no pyplot state) and writes the files.
"""

from __future__ import annotations

import base64
import html
import io
import multiprocessing
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipcl.errors import ClipclError
from clipcl.results.curves import read_points
from clipcl.results.figures import (
    Headline,
    MatrixFigure,
    cost_per_group,
    eval_task_lines,
    headline,
    intask_series,
    loss_series,
    matrix_figures,
)
from clipcl.results.records import CorruptRecords, RunDir
from clipcl.results.tables import metric_label, render, summarize

__all__ = ["ReportResult", "write_report"]

INDEX = "index.html"


@dataclass
class ReportResult:
    """What :func:`write_report` wrote."""

    index: Path
    figures: list[Path] = field(default_factory=list)
    chains: int = 0
    finished: int = 0


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def draw_matrix(data: MatrixFigure) -> Any:
    """The heatmap: the zero-shot row, then one row per trained task; annotated cells."""
    size = len(data.tasks)
    grid = np.vstack([data.zeroshot[None, :], data.matrix])  # (T + 1, T)
    width, height = 2.6 + 0.6 * size, 1.8 + 0.4 * (size + 1)
    fig = _figure(width, height)
    fig.subplots_adjust(
        left=1.0 / width, right=1 - 0.2 / width, bottom=0.9 / height, top=1 - 0.4 / height
    )
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            colour = "black" if value > 60 else "white"
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color=colour)
    ax.axhline(0.5, color="white", linewidth=2)
    ax.set_xticks(range(size), data.tasks, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(size + 1), ["zero-shot", *data.tasks], fontsize=7)
    ax.set_xlabel("eval task")
    ax.set_ylabel("after training")
    seeds = len(data.chain_ids)
    ax.set_title(f"{data.benchmark}: {data.label} ({seeds} seed{'s' * (seeds != 1)})", fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    return fig


def draw_task_lines(data: MatrixFigure) -> Any:
    """Accuracy of every eval task after each trained task (x = -1: zero-shot)."""
    fig = _figure(6, 3.5)
    fig.subplots_adjust(bottom=0.16, top=0.9)
    ax = fig.add_subplot()
    for name, (xs, ys) in eval_task_lines(data).items():
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    ax.set_xticks(range(-1, len(data.tasks)), ["zs", *map(str, range(len(data.tasks)))])
    ax.set_xlabel("after training task (zs: zero-shot)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{data.benchmark}: {data.label}", fontsize=9)
    ax.legend(fontsize=6, ncols=2, loc="lower left")
    return fig


def draw_headline(data: Headline) -> Any:
    """One panel per metric: a bar per group, error bar = std over seeds."""
    groups, metrics = len(data.labels), len(data.metrics)
    height = 1.2 + 0.22 * groups
    fig = _figure(2.0 + 2.6 * metrics, height)
    fig.subplots_adjust(
        left=1.9 / (2.0 + 2.6 * metrics), right=0.98, bottom=0.7 / height, wspace=0.1
    )
    axes = fig.subplots(1, metrics, sharey=True, squeeze=False)[0]
    names = [f"{label} (n={n})" for label, n in zip(data.labels, data.seeds, strict=True)]
    for m, ax in enumerate(axes):
        err = np.nan_to_num(data.stds[:, m], nan=0.0)
        ax.barh(range(groups), data.means[:, m], xerr=err, capsize=2, color=f"C{m}")
        ax.set_xlabel(f"{metric_label(data.metrics[m])} (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(range(groups), names, fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle(f"{data.benchmark} ({data.protocol.upper()}): mean ± std over seeds", fontsize=9)
    return fig


def draw_losses(
    title: str,
    series: dict[str, tuple[list[int], list[float]]],
    starts: list[int],
    ylabel: str = "loss",
):
    fig = _figure(6, 3.2)
    fig.subplots_adjust(bottom=0.16, top=0.9)
    ax = fig.add_subplot()
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, linewidth=1, label=name)
    for x in starts:
        ax.axvline(x, color="grey", linewidth=0.5, linestyle="--")
    ax.set_xlabel("step (dashed: a new task)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return fig


def draw_cost(cost: pd.DataFrame) -> Any:
    height = 1.2 + 0.2 * len(cost)
    fig = _figure(8, height)
    fig.subplots_adjust(left=0.3, right=0.97, bottom=0.6 / height, top=1 - 0.2 / height)
    ax = fig.add_subplot()
    names = [f"{b}: {label}" for b, label in zip(cost["benchmark"], cost["label"], strict=True)]
    ax.barh(range(len(cost)), cost["chain_s"].fillna(0.0))
    ax.tick_params(labelsize=7)
    ax.set_yticks(range(len(cost)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("mean wall seconds per chain (finished tasks)")
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-")[:80] or "figure"


#: Figures from which on they are drawn by a pool of processes (one per CPU, at most 8).
PARALLEL_FROM = 40


def _render(job: tuple[Callable[..., Any], tuple[Any, ...]]) -> bytes:
    draw, args = job
    return _png(draw(*args))


class _Page:
    """The HTML page and its figures: ``figure`` keeps a figure's drawing job and its place;
    ``finish`` draws them all (in parallel when there are many), writes the PNGs and returns
    the page's body with every image embedded."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.parts: list[str] = []
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.files: list[Path] = []
        self._figures: list[tuple[int, Path, str]] = []  # (part index, file, alt text)

    def text(self, markup: str) -> None:
        self.parts.append(markup)

    def figure(self, name: str, alt: str, draw: Callable[..., Any], *args: Any) -> None:
        path = self.out_dir / f"{len(self.jobs):03d}-{_slug(name)}.png"
        self._figures.append((len(self.parts), path, alt))
        self.jobs.append((draw, args))
        self.parts.append("")

    def finish(self) -> str:
        if len(self.jobs) >= PARALLEL_FROM and (os.cpu_count() or 1) > 1:
            context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
            workers = min(os.cpu_count() or 1, 8)
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                pngs = list(pool.map(_render, self.jobs, chunksize=4))
        else:
            pngs = [_render(job) for job in self.jobs]
        for (at, path, alt), data in zip(self._figures, pngs, strict=True):
            path.write_bytes(data)
            self.files.append(path)
            uri = "data:image/png;base64," + base64.b64encode(data).decode()
            self.parts[at] = f'<figure><img src="{uri}" alt="{html.escape(alt)}"></figure>'
        return "\n".join(self.parts)


_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:75em}pre{background:#f4f4f4;"
    "padding:.6em;overflow-x:auto}img{max-width:100%}figure{display:inline-block;margin:.4em}"
    "td,th{padding:.15em .6em;text-align:right}.note{background:#fff3cd;padding:.6em}"
)


def _check_output(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClipclError(
            f"cannot create the report folder {out_dir}: {exc.strerror or exc}"
        ) from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ClipclError(f"cannot write into the report folder {out_dir} (permission denied)")


def _load(
    root: Path, sweep: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[Any], dict[str, Any], dict[str, Any]]:
    from clipcl.results.store import ResultsStore, store_exists

    if not store_exists(root):
        raise ClipclError(f"no results store under {root} (submit a sweep first, or pass --root)")
    with ResultsStore(root) as store:
        store.check_sweep(sweep)
        store.ingest_root()
        df = store.eval_rows_frame(sweep)
        intask = store.intask_rows_frame(sweep)
        if df.empty:
            raise ClipclError(f"no evaluation rows for sweep '{sweep}' under {root} yet")
        resources = store.sweep_config(sweep).get("resources") or {}
        return (
            df,
            intask,
            store.task_seconds_frame(sweep),
            store.chain_progress(sweep),
            store.provenance("sweep", sweep),
            resources,
        )


def write_report(root: Path, sweep: str, out_dir: Path) -> ReportResult:
    """Write ``out_dir/index.html`` and the figures' PNG files for ``sweep`` under ``root``.

    Raises:
        ClipclError: No store under ``root``, an unknown sweep, no evaluation rows, or an
        output folder that cannot be written (checked before anything is written there).
    """
    df, intask, seconds, progress, prov, resources = _load(root, sweep)
    _check_output(out_dir)
    finished = sum(1 for c in progress if c.state == "done")
    page = _Page(out_dir)
    page.text(f"<h1>clipcl report: {html.escape(sweep)}</h1>")
    page.text(
        f"<p>run root {html.escape(str(root))}; {finished} of {len(progress)} chains finished.</p>"
    )
    if finished < len(progress):
        page.text(
            '<p class="note">Unfinished chains: this report shows what is finished. Their '
            "finished tasks are in the matrices, curves and costs; the tables and headline "
            "metrics count finished chains only.</p>"
        )
    _results_section(page, df)
    groups = matrix_figures(df)
    _matrix_section(page, groups)
    _loss_section(page, root, groups)
    if not intask.empty:
        _intask_section(page, root, groups, intask, df)
    _cost_section(page, df, seconds, prov, resources)
    index = out_dir / INDEX
    body = page.finish()
    index.write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>clipcl report: '
        f"{html.escape(sweep)}</title><style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n",
        encoding="utf-8",
    )
    return ReportResult(index, page.files, len(progress), finished)


def _results_section(page: _Page, df: pd.DataFrame) -> None:
    summary = summarize(df)
    page.text("<h2>Results (mean ± std over seeds)</h2>")
    if summary.empty:
        page.text("<p>No chain is finished yet: no table.</p>")
        return
    for benchmark, rows in summary.groupby("benchmark", sort=True):
        page.text(f"<h3>{html.escape(str(benchmark))}</h3>")
        page.text(f"<pre>{html.escape(render(rows.reset_index(drop=True), 'table'))}</pre>")
    for data in headline(summary):
        page.figure(f"headline-{data.benchmark}", f"{data.benchmark} metrics", draw_headline, data)


def _matrix_section(page: _Page, groups: list[MatrixFigure]) -> None:
    page.text("<h2>Accuracy matrices (mean over seeds) and each task over training</h2>")
    for data in groups:
        name = f"{data.benchmark}-{data.label}"
        page.text(f"<h3>{html.escape(data.benchmark)}: {html.escape(data.label)}</h3>")
        page.figure(f"matrix-{name}", f"accuracy matrix {name}", draw_matrix, data)
        page.figure(f"tasks-{name}", f"accuracy over training {name}", draw_task_lines, data)


def _loss_section(page: _Page, root: Path, groups: list[MatrixFigure]) -> None:
    page.text("<h2>Training loss (one chain per group, its lowest seed)</h2>")
    drawn = 0
    for data in groups:
        chain_id = data.chain_ids[0]
        try:
            points = read_points(RunDir.of(root, chain_id).train_path)
        except (CorruptRecords, OSError) as exc:
            page.text(f"<p>{html.escape(str(exc))}</p>")
            continue
        if not points:
            continue
        series, starts = loss_series(points)
        title = f"{data.benchmark}: {data.label}, chain {chain_id} (seed {data.seeds[0]})"
        name = f"loss-{data.benchmark}-{data.label}"
        page.figure(name, title, draw_losses, title, series, starts)
        drawn += 1
    if not drawn:
        page.text("<p>No training curves (train.jsonl) were recorded for these chains.</p>")


def _intask_section(
    page: _Page, root: Path, groups: list[MatrixFigure], intask: pd.DataFrame, df: pd.DataFrame
) -> None:
    """Accuracy inside tasks (``eval.interval_steps``), one chain per group (its lowest seed
    with in-task rows); no metric reads these rows."""
    page.text(
        "<h2>Accuracy inside tasks (eval.interval_steps; one chain per group, its lowest seed)</h2>"
    )
    for data in groups:
        chain_id = next((c for c in data.chain_ids if (intask["chain_id"] == c).any()), None)
        if chain_id is None:
            continue
        try:
            points = read_points(RunDir.of(root, chain_id).train_path)
        except (CorruptRecords, OSError):
            points = []
        steps = {p.task: p.steps for p in points}
        mine = intask[intask["chain_id"] == chain_id]
        if not steps:  # no training curve: the last in-task step + 1 stands in for the length
            steps = {int(t): int(g["step"].max()) + 1 for t, g in mine.groupby("trained_task")}
        series, starts = intask_series(mine, df[df["chain_id"] == chain_id], steps)
        title = f"{data.benchmark}: {data.label}, chain {chain_id}"
        page.figure(
            f"intask-{data.benchmark}-{data.label}",
            title,
            draw_losses,
            title,
            series,
            starts,
            "top-1 %",
        )


def _shown(key: str, value: Any) -> str:
    if key == "time" and isinstance(value, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in sorted(value.items()))
    return str(value)


def _cost_section(
    page: _Page,
    df: pd.DataFrame,
    seconds: pd.DataFrame,
    prov: dict[str, Any],
    resources: dict[str, Any],
) -> None:
    page.text("<h2>Cost</h2>")
    gpus, cpus = int(resources.get("gpus") or 0), int(resources.get("cpus") or 1)
    cost = cost_per_group(df, seconds, gpus=gpus, cpus=cpus)
    if len(cost):
        unknown = bool((cost["unknown_hours"] > 0).any())
        head = "<tr><th>benchmark</th><th>group</th><th>chains</th><th>s / task</th>"
        head += "<th>s / chain</th><th>hours, all chains</th><th>GPU-hours</th>"
        head += "<th>CPU-hours</th>" + ("<th>device unrecorded, h</th>" if unknown else "")
        head += "<th>devices</th></tr>"
        cells = "".join(
            f"<tr><td>{html.escape(r.benchmark)}</td><td>{html.escape(r.label)}</td>"
            f"<td>{r.chains}</td><td>{r.task_s:.1f}</td><td>{r.chain_s:.1f}</td>"
            f"<td>{r.hours:.3f}</td><td>{r.gpu_hours:.3f}</td><td>{r.cpu_hours:.3f}</td>"
            + (f"<td>{r.unknown_hours:.3f}</td>" if unknown else "")
            + f"<td>{html.escape(r.devices or '-')}</td></tr>"
            for r in cost.itertuples()
        )
        page.text(f"<table>{head}{cells}</table>")
        page.figure("cost", "wall time per chain", draw_cost, cost)
    page.text(
        "<p>Wall time of the finished tasks (training and evaluation). Each task records the "
        f"device it ran on: GPU-hours are the hours of tasks on a CUDA device × {max(1, gpus)} "
        f"GPU(s) per chain, CPU-hours the hours of tasks on the CPU × {max(1, cpus)} CPU(s) per "
        "chain (the sweep's <code>resources</code>).</p>"
    )
    page.text("<h3>Provenance (recorded when the sweep was submitted)</h3>")
    items = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_shown(k, v))}</td></tr>"
        for k, v in sorted(prov.items())
    )
    page.text(f"<table>{items}</table>" if items else "<p>none recorded</p>")
