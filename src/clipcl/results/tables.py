"""Paper tables from evaluation rows: per-chain accuracy matrices, summaries over seeds, renderers.

Pure functions of a DataFrame shaped like :meth:`ResultsStore.eval_rows_frame` (needed columns:
chain_id, method, benchmark, protocol, seed, trained_task, eval_task, eval_name, total, top1;
optional: num_tasks, config, trained_name and one column per dotted setting). Matrices are
built for all chains at once with numpy and the metrics are computed on stacks of matrices;
they equal :mod:`clipcl.results.metrics` (the definitions) to floating-point rounding.

CIL forgetting comes in two conventions (see :class:`~clipcl.results.metrics.CILMetrics`):
``forgetting`` (the seeds' NSP²/PGP/Mammoth/PyCIL convention, the "Forgetting" column of every
table) and ``forgetting_chaudhry`` (Chaudhry et al. 2018; in csv/json always, in the text
formats on request). Text tables with a Forgetting column end with a note saying which is which.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from clipcl.errors import ClipclError, unknown_name
from clipcl.results.frames import ROW_COLUMNS

__all__ = [
    "FORGETTING_NOTE",
    "FORMATS",
    "METRICS",
    "chain_matrices",
    "matrix_table",
    "metric_label",
    "render",
    "summarize",
]

FORMATS = ("table", "md", "latex", "csv", "json")
METRICS: dict[str, tuple[str, ...]] = {
    "til": ("transfer", "avg", "last"),
    "cil": ("avg", "last", "forgetting", "forgetting_chaudhry", "bwt"),
}
_ORDER = ("transfer", "avg", "last", "forgetting", "forgetting_chaudhry", "bwt")
_LABELS = dict(
    transfer="Transfer",
    avg="Avg",
    last="Last",
    forgetting="Forgetting",
    forgetting_chaudhry="Forgetting (Chaudhry)",
    bwt="BWT",
    heldout="Held-out",
)
#: Said under every text table that has a Forgetting column (one sentence per convention).
FORGETTING_NOTE = (
    "Forgetting: mean over old tasks of best accuracy over all evaluations (the last included) "
    "minus final accuracy, as NSP², PGP, Mammoth and PyCIL compute it.",
    "Forgetting (Chaudhry), forgetting_chaudhry in csv/json: the best is taken over the "
    "evaluations before the last (Chaudhry et al. 2018).",
)
#: Columns that are not settings (everything else in the frame is a setting).
CORE_COLUMNS = frozenset(
    ("root", "chain_id", "sweep", "method", "benchmark", "protocol", "seed", "num_tasks", "config")
    + ROW_COLUMNS
)


@dataclass
class _Stack:
    """Matrices of all chains with the same number of tasks T."""

    index: np.ndarray  # (n,) positions of the chains in _Chains.ids
    acc: np.ndarray  # (n, T, T) percent, NaN where missing
    counts: np.ndarray  # (n, T) test images per eval task
    zeroshot: np.ndarray  # (n, T)


@dataclass
class _Chains:
    ids: np.ndarray  # (C,) sorted chain ids
    first: np.ndarray  # (C,) row of each chain's first occurrence in the frame
    stacks: list[_Stack]


def _build(df: pd.DataFrame) -> _Chains:
    """Factorize chains and scatter every row into its chain's matrix (vectorised)."""
    codes, uniques = pd.factorize(df["chain_id"], sort=True)
    ids = np.asarray(uniques, dtype=object)
    first = np.full(len(ids), len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))
    tt = df["trained_task"].to_numpy(np.int64)
    et = df["eval_task"].to_numpy(np.int64)
    top1 = df["top1"].to_numpy(np.float64)
    total = df["total"].to_numpy(np.float64)
    seen = np.zeros(len(ids), dtype=np.int64)
    np.maximum.at(seen, codes, np.maximum(tt, et) + 1)
    sizes = seen
    if "num_tasks" in df.columns:
        declared = pd.to_numeric(df["num_tasks"]).to_numpy(np.float64, na_value=np.nan)[first]
        sizes = np.where(np.isfinite(declared), declared, seen).astype(np.int64)
    stacks = []
    for size in np.unique(sizes):
        index = np.flatnonzero(sizes == size)
        local = np.full(len(ids), -1)
        local[index] = np.arange(len(index))
        row_chain = local[codes]
        keep = (row_chain >= 0) & (tt < size) & (et >= 0) & (et < size)
        acc = np.full((len(index), size, size), np.nan)
        counts = np.full((len(index), size), np.nan)
        zeroshot = np.full((len(index), size), np.nan)
        zs, tr = keep & (tt == -1), keep & (tt >= 0)
        zeroshot[row_chain[zs], et[zs]] = top1[zs]
        counts[row_chain[zs], et[zs]] = total[zs]
        counts[row_chain[tr], et[tr]] = total[tr]
        acc[row_chain[tr], tt[tr], et[tr]] = top1[tr]
        stacks.append(_Stack(index, acc, counts, zeroshot))
    return _Chains(ids, first, stacks)


def chain_matrices(df: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each chain's accuracy matrix from its rows.

    Args:
        df: Eval rows (see the module docstring).

    Returns:
        chain_id → (matrix (T, T) percent with NaN where not evaluated, test counts (T,),
        zero-shot accuracies (T,)); T is ``num_tasks`` when known, else the largest task
        index seen plus one.
    """
    chains = _build(df)
    out = {}
    for st in chains.stacks:
        for j, pos in enumerate(st.index):
            out[str(chains.ids[pos])] = (st.acc[j], st.counts[j], st.zeroshot[j])
    return out


def _til(acc: np.ndarray) -> dict[str, np.ndarray]:
    """Transfer/Avg/Last of a stack (n, T, T) plus per-task arrays (n, T)."""
    size = acc.shape[1]
    before = np.triu(np.ones((size, size), dtype=bool), k=1)  # rows t < column i
    with np.errstate(invalid="ignore", divide="ignore"):
        transfer_pt = np.where(before, acc, 0.0).sum(axis=1) / np.arange(size)
    transfer_pt[:, 0] = np.nan
    transfer = transfer_pt[:, 1:].mean(axis=1) if size > 1 else np.full(len(acc), np.nan)
    avg_pt = acc.mean(axis=1)
    return {
        "transfer": transfer,
        "avg": avg_pt.mean(axis=1),
        "last": acc[:, -1, :].mean(axis=1),
        "transfer/": transfer_pt,
        "avg/": avg_pt,
        "last/": acc[:, -1, :],
    }


def _cil(acc: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Avg/Last/Forgetting (both conventions)/BWT of a stack (n, T, T) weighted by test
    counts (n, T)."""
    n, size = acc.shape[:2]
    lower = np.tril(np.ones((size, size), dtype=bool))
    weighted = np.einsum("nti,ni->nt", np.where(lower, acc, 0.0), counts)
    per_step = weighted / np.cumsum(counts, axis=1)
    forgetting = chaudhry = bwt = np.full(n, np.nan)
    if size > 1:
        final = acc[:, -1, :-1]
        rows = np.arange(size)[:, None]
        window = (rows >= np.arange(size - 1)) & (rows <= size - 2)  # (T, T-1): rows i..T-2
        drop = np.where(window, acc[:, :, :-1], -np.inf).max(axis=1) - final  # (n, T-1)
        chaudhry = drop.mean(axis=1)
        forgetting = np.maximum(drop, 0.0).mean(axis=1)  # best over rows i..T-1
        bwt = (final - np.diagonal(acc, axis1=1, axis2=2)[:, :-1]).mean(axis=1)
    return {
        "avg": per_step.mean(axis=1),
        "last": per_step[:, -1],
        "forgetting": forgetting,
        "forgetting_chaudhry": chaudhry,
        "bwt": bwt,
    }


def _task_names(df: pd.DataFrame) -> dict[str, list[str]]:
    """Benchmark → its eval task names in task order."""
    pairs = df.loc[df["eval_task"] >= 0, ["benchmark", "eval_task", "eval_name"]]
    pairs = pairs.drop_duplicates(["benchmark", "eval_task"]).sort_values("eval_task")
    return {str(b): list(g["eval_name"].astype(str)) for b, g in pairs.groupby("benchmark")}


def _chain_metrics(df: pd.DataFrame, per_dataset: bool) -> pd.DataFrame:
    """One row per chain with a complete matrix: its columns plus its metrics."""
    chains = _build(df)
    meta = df.iloc[chains.first].drop(columns=[c for c in df.columns if c in _ROW_ONLY])
    meta = meta.reset_index(drop=True)
    protocol = meta["protocol"].to_numpy(object)
    names = _task_names(df) if per_dataset else {}
    values: dict[str, np.ndarray] = {}
    complete = np.zeros(len(meta), dtype=bool)
    for st in chains.stacks:
        size = st.acc.shape[1]
        missing = np.isnan(st.acc)
        for proto in ("til", "cil"):
            need = missing if proto == "til" else missing & np.tril(np.ones((size, size), bool))
            ok = (protocol[st.index] == proto) & ~need.any(axis=(1, 2))
            if not ok.any():
                continue
            complete[st.index[ok]] = True
            acc = st.acc[ok]
            got = _til(acc) if proto == "til" else _cil(acc, st.counts[ok])
            for key, arr in got.items():
                if not key.endswith("/"):
                    values.setdefault(key, np.full(len(meta), np.nan))[st.index[ok]] = arr
                elif per_dataset:
                    _scatter_tasks(values, key, arr, st.index[ok], meta, names, len(meta))
    metrics = [m for m in _ORDER if m in values] + [k for k in values if "/" in k]
    out = pd.concat([meta, pd.DataFrame({m: values[m] for m in metrics})], axis=1)
    return out[complete].reset_index(drop=True)


_ROW_ONLY = ROW_COLUMNS


def _scatter_tasks(
    values: dict[str, np.ndarray],
    key: str,
    arr: np.ndarray,
    index: np.ndarray,
    meta: pd.DataFrame,
    names: dict[str, list[str]],
    n: int,
) -> None:
    """Write per-task metrics (m, T) into columns ``<metric>/<task name>``."""
    benchmarks = meta["benchmark"].to_numpy(object)[index]
    for bench in pd.unique(benchmarks):
        rows = benchmarks == bench
        for i, name in enumerate(names.get(str(bench), [])[: arr.shape[1]]):
            values.setdefault(f"{key}{name}", np.full(n, np.nan))[index[rows]] = arr[rows, i]


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return (2, "")
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def summarize(
    df: pd.DataFrame,
    per_dataset: bool = False,
    by: tuple[str, ...] = (),
    heldout: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per (method, benchmark, non-seed settings) with metrics over seeds.

    Only chains whose matrix is complete count: every entry for ``til``, the lower triangle
    with the diagonal for ``cil`` (chains of an unknown protocol never count).

    Args:
        df: Eval rows (see the module docstring).
        per_dataset: For ``til`` add per-dataset ``transfer/<task>``, ``avg/<task>`` and
            ``last/<task>`` metrics (transfer of the first task is NaN).
        by: Columns of ``df`` that come first and split the rows too (``results --all``:
            ``sweep``, and ``root`` across roots).
        heldout: The held-out sets' rows (``heldout_rows_frame``): a ``heldout/<dataset>``
            metric per set, its accuracy after the chain's last task (``top1`` column).

    Returns:
        Columns: the ``by`` columns, method, benchmark, protocol, each setting that has a
        value, ``config`` (only when it tells apart rows that are otherwise equal), seeds (number of
        complete chains), then ``<metric>_mean`` and ``<metric>_std`` (sample std over
        seeds; NaN for one seed) for til's transfer/avg/last and cil's
        avg/last/forgetting/forgetting_chaudhry/bwt.
    """
    if "root" in df.columns and df["root"].nunique() > 1:  # one chain id may be in two roots
        df = df.assign(chain_id=df["root"].astype(str) + "\0" + df["chain_id"].astype(str))
    data = _chain_metrics(df, per_dataset)
    if heldout is not None and len(heldout) and len(data):
        data = _with_heldout(data, heldout)
    settings = [c for c in df.columns if c not in CORE_COLUMNS and data[c].notna().any()]
    settings = [c for c in settings if c not in by]
    keys = [*by, "method", "benchmark", "protocol", *settings]
    keys += ["config"] if "config" in data.columns else []
    metrics = [c for c in data.columns if c in _ORDER or "/" in c]
    grouped = data.groupby(keys, dropna=False, sort=False)
    summary = grouped.size().rename("seeds").to_frame()
    mean, std = grouped[metrics].mean(), grouped[metrics].std(ddof=1)
    for m in metrics:
        summary[f"{m}_mean"], summary[f"{m}_std"] = mean[m], std[m]
    summary = summary.reset_index()
    if "config" in keys and not summary.duplicated(keys[:-1]).any():
        summary = summary.drop(columns="config")
    order = [k for k in keys if k in summary.columns]
    if len(summary):
        summary = summary.sort_values(order, key=lambda s: s.map(_sort_key), kind="stable")
    return summary.reset_index(drop=True)


def _with_heldout(data: pd.DataFrame, heldout: pd.DataFrame) -> pd.DataFrame:
    """``data`` (a row per chain) with ``heldout/<dataset>``: the set's top-1 after the chain's
    last task (NaN where that row is missing)."""
    last = pd.to_numeric(data["num_tasks"]).to_numpy(np.float64, na_value=np.nan) - 1
    final = dict(zip(data["chain_id"], last, strict=True))
    at_end = heldout["trained_task"].to_numpy(np.float64) == heldout["chain_id"].map(final)
    rows = heldout[at_end.to_numpy(bool)]
    wide = rows.pivot_table(index="chain_id", columns="dataset", values="top1", aggfunc="first")
    names = list(dict.fromkeys(heldout.sort_values("eval_task")["dataset"]))
    wide = wide.reindex(columns=[n for n in names if n in wide.columns])
    wide.columns = [f"heldout/{n}" for n in wide.columns]
    return data.merge(wide, left_on="chain_id", right_index=True, how="left")


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _value_cell(value: Any) -> str:
    if _is_missing(value):
        return "-"
    if isinstance(value, float | np.floating):
        return f"{float(value):g}"
    return str(value)


def _metric_cell(mean: Any, std: Any, latex: bool) -> str:
    if _is_missing(mean):
        return "-"
    if latex:
        return f"${mean:.1f}$" if _is_missing(std) else f"${mean:.1f}_{{\\pm {std:.1f}}}$"
    return f"{mean:.1f}" if _is_missing(std) else f"{mean:.1f} ± {std:.1f}"


def metric_label(metric: str) -> str:
    """The column label of a metric key (``forgetting_chaudhry`` → "Forgetting (Chaudhry)",
    ``avg/DTD`` → "Avg/DTD")."""
    head, _, task = metric.partition("/")
    return f"{_LABELS[head]}/{task}" if task else _LABELS[head]


def _grid(
    summary: pd.DataFrame, latex: bool, chaudhry: bool
) -> tuple[list[str], list[list[str]], int]:
    """Header, cell strings and the number of leading text columns."""
    metrics = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    skip = {"protocol", "seeds", *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))}
    if not chaudhry:
        metrics = [m for m in metrics if m != "forgetting_chaudhry"]
    keys = [c for c in summary.columns if c not in skip]
    header = [*keys, "seeds", *(metric_label(m) for m in metrics)]
    cells = []
    for row in summary.to_dict("records"):
        text = [_value_cell(row[k]) for k in keys] + [str(row["seeds"])]
        text += [_metric_cell(row[f"{m}_mean"], row[f"{m}_std"], latex) for m in metrics]
        cells.append(text)
    return header, cells, len(keys)


def _plain(header: list[str], cells: list[list[str]], n_text: int) -> str:
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        return "  ".join(v.ljust(w) if i < n_text else v.rjust(w) for i, (v, w) in pairs).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in cells)]) + "\n"


def _markdown(header: list[str], cells: list[list[str]], n_text: int) -> str:
    def line(row: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in row) + " |"

    rule = "|" + "|".join("---" if i < n_text else "---:" for i in range(len(header))) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in cells)]) + "\n"


_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\^{}"}


def _tex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text.replace("\\", r"\textbackslash "))


def _latex(header: list[str], cells: list[list[str]], n_text: int) -> str:
    align = "l" * n_text + "r" * (len(header) - n_text)
    body = [" & ".join(_tex(h) for h in header) + r" \\", r"\hline"]
    for row in cells:
        escaped = [_tex(v) if i < n_text else v for i, v in enumerate(row)]
        body.append(" & ".join(escaped) + r" \\")
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\hline", *body, r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _plain_value(value: Any) -> Any:
    if _is_missing(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def render(summary: pd.DataFrame, fmt: str, chaudhry: bool = False) -> str:
    """Render a :func:`summarize` table.

    Args:
        summary: The summary frame.
        fmt: ``table`` (aligned plain text), ``md`` (GitHub markdown, ``mean ± std`` to one
            decimal), ``latex`` (a tabular with ``$mean_{\\pm std}$`` cells), ``csv`` or
            ``json`` (unrounded numbers; json is a list of records with NaN as null).
        chaudhry: Also show the "Forgetting (Chaudhry)" column in the text formats (csv
            and json always hold every column). Text tables with a Forgetting column end
            with the lines of :data:`FORGETTING_NOTE`.

    Returns:
        The rendered text, ending with a newline.

    Raises:
        ClipclError: If ``fmt`` is not one of :data:`FORMATS`.
    """
    if fmt not in FORMATS:
        raise unknown_name("format", fmt, FORMATS)
    if fmt == "csv":
        return str(summary.to_csv(index=False))
    if fmt == "json":
        records = [
            {str(k): _plain_value(v) for k, v in row.items()} for row in summary.to_dict("records")
        ]
        return json.dumps(records, indent=2) + "\n"
    header, cells, n_text = _grid(summary, latex=fmt == "latex", chaudhry=chaudhry)
    text = {"table": _plain, "md": _markdown, "latex": _latex}[fmt](header, cells, n_text)
    if _LABELS["forgetting"] not in header:
        return text
    if fmt != "latex":
        return text + "\n" + "\n".join(FORGETTING_NOTE) + "\n"
    notes = "".join(
        rf"\multicolumn{{{len(header)}}}{{l}}{{\footnotesize {_tex(line)}}} \\" + "\n"
        for line in FORGETTING_NOTE
    ).replace("²", "$^2$")
    return text.removesuffix("\\end{tabular}\n") + notes + "\\end{tabular}\n"


def matrix_table(df: pd.DataFrame, chain_id: str) -> str:
    """One chain's accuracy matrix as aligned text: a zero-shot row, then one row per
    trained task, one column per eval task; the metrics follow when the matrix is complete.

    Raises:
        ClipclError: If the frame has no rows of ``chain_id``.
    """
    rows = df[df["chain_id"] == chain_id]
    if rows.empty:
        raise ClipclError(f"no evaluation rows for chain '{chain_id}'")
    acc, _, zeroshot = chain_matrices(rows)[chain_id]
    first = rows.iloc[0]
    size = acc.shape[0]
    names = dict(zip(rows["eval_task"], rows["eval_name"].astype(str), strict=True))
    labels = rows["trained_name"] if "trained_name" in rows.columns else rows["trained_task"]
    trained = dict(zip(rows["trained_task"], labels.astype(str), strict=True))
    header = ["after \\ eval", *(names.get(i, str(i)) for i in range(size))]

    def cells(values: np.ndarray) -> list[str]:
        return ["-" if math.isnan(v) else f"{v:.1f}" for v in values]

    body = [["zero-shot", *cells(zeroshot)]] if not np.isnan(zeroshot).all() else []
    body += [[str(trained.get(t) or names.get(t) or t), *cells(acc[t])] for t in range(size)]
    title = f"chain {chain_id}: {first['method']} on {first['benchmark']}, seed {first['seed']}"
    text = title + "\n" + _plain(header, body, 1)
    summary = _chain_metrics(rows, per_dataset=False)
    if len(summary):
        metrics = [m for m in _ORDER if m in summary.columns]
        scores = "  ".join(f"{_LABELS[m]} {summary[m].iloc[0]:.1f}" for m in metrics)
        text += scores + "\n"
    return text
