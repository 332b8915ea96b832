"""``clipcl data check`` and ``clipcl data cache``: what a data root holds, and a pre-resized
cache of its datasets."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from clipcl.cli.common import app, err, out
from clipcl.errors import ClipclError

data_app = typer.Typer(no_args_is_help=True, help="Datasets on local disk: check, cache.")
app.add_typer(data_app, name="data")


def _dataset_names(benchmark: str | None) -> list[str]:
    from clipcl.data import benchmark_info
    from clipcl.data.real import dataset_names
    from clipcl.data.real.benchmarks import BENCHMARK_DATASETS

    if benchmark is None:
        return dataset_names()
    benchmark_info(benchmark)  # unknown name → clear error
    return list(BENCHMARK_DATASETS.get(benchmark, ()))


def _plain(text: str) -> None:
    """One line as it is (paths and layouts may hold '[...]', which is not markup here)."""
    out.print(text, highlight=False, soft_wrap=True, markup=False)


def report_checks(checks, root: Path) -> bool:
    """Print a table and the details of what is wrong; whether everything is present."""
    table = Table(title=f"datasets under {root}")
    for col in ("dataset", "status", "directory"):
        table.add_column(col)
    for c in checks:
        colour = {"present": "green", "missing": "red", "malformed": "yellow"}[c.status]
        table.add_row(escape(c.dataset), f"[{colour}]{c.status}[/]", escape(str(c.path)))
    out.print(table)
    for c in checks:
        if c.status == "present":
            continue
        _plain(f"\n{c.dataset} ({c.status}) at {c.path}")
        for path in c.missing:
            _plain(f"  missing: {path}")
        for problem in c.problems:
            _plain(f"  problem: {problem}")
        _plain(f"  how to get it: {c.how_to_get}")
    return all(c.status == "present" for c in checks)


@data_app.command("check")
def check(
    root: Path = typer.Option(..., "--root", help="The data root."),
    benchmark: str | None = typer.Option(
        None, "--benchmark", help="Only the datasets this benchmark needs (default: all)."
    ),
) -> None:
    """Present / missing / malformed for each dataset, with the exact paths expected.

    Exit code 0 only when everything needed is present (1 otherwise).
    """
    from clipcl.data.real import get_dataset

    if not root.is_dir():
        raise ClipclError(f"data root not found: {root}")
    names = _dataset_names(benchmark)
    if not names:
        out.print(f"benchmark '{benchmark}' is embedded: it needs no data on disk")
        return
    if not report_checks([get_dataset(n).check(root) for n in names], root):
        raise typer.Exit(1)


@data_app.command("cache")
def cache(
    root: Path = typer.Option(..., "--root", help="The data root."),
    benchmark: str | None = typer.Option(None, "--benchmark", help="Its datasets (default: all)."),
    dataset: list[str] = typer.Option([], "--dataset", help="One dataset (repeatable)."),
    workers: int = typer.Option(2, "--workers", min=0, help="Decoding processes."),
) -> None:
    """Decode and resize every image once into ROOT/.clipcl-cache (used automatically)."""
    from clipcl.data.real import get_dataset
    from clipcl.data.real.cache import write_cache

    names = list(dataset) or _dataset_names(benchmark)
    checks = [get_dataset(n).check(root) for n in names]
    if not report_checks(checks, root):
        raise ClipclError("fix the datasets above first (nothing was cached)")
    for name in names:
        last = {"pct": -1}

        def progress(part: str, i: int, n: int, name: str = name, last=last) -> None:
            pct = 100 * i // max(n, 1)
            if pct // 10 != last["pct"] // 10 or i == n:
                err.print(f"{name} {part}: {i}/{n} images", highlight=False)
                last["pct"] = pct

        path = write_cache(get_dataset(name), root, num_workers=workers, on_progress=progress)
        out.print(f"{name}: cached in {path}")
