"""The ``clipcl`` command line: thin commands, one per verb; the work lives in the packages."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import clipcl
from clipcl.errors import ClipclError, did_you_mean

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Continual learning of CLIP models: chains, sweeps, metrics, tables.",
)
chain_app = typer.Typer(no_args_is_help=True, help="Run one chain (one model, task after task).")
app.add_typer(chain_app, name="chain")

out = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        print(f"clipcl {clipcl.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """clipcl: continual learning of CLIP models."""


def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and v != v) else f"{v:.1f}"


def _print_metrics(protocol: str, metrics: dict[str, Any]) -> None:
    keys = (
        ["transfer", "avg", "last"]
        if protocol in {"mtil", "til"}
        else ["avg", "last", "forgetting", "bwt"]
    )
    table = Table(title="metrics (%)")
    for k in keys:
        table.add_column(k.capitalize() if k != "bwt" else "BWT", justify="right")
    table.add_row(*[_fmt(metrics[k]) for k in keys])
    out.print(table)


def _print_matrix(
    tasks: list[str], matrix: list[list[float | None]], zeroshot: list[float | None] | None = None
) -> None:
    table = Table(title="accuracy (%): rows = after task, columns = eval task")
    table.add_column("after \\ eval")
    for name in tasks:
        table.add_column(name, justify="right")
    if zeroshot is not None:
        table.add_row("(zero-shot)", *[_fmt(v) for v in zeroshot], style="dim")
    for name, row in zip(tasks, matrix, strict=True):
        table.add_row(name, *[_fmt(v) for v in row])
    out.print(table)


@app.command()
def score(
    file: Path = typer.Argument(
        ...,
        help="Accuracy matrix: .csv, .npy or .json (rows = after"
        " task t, columns = eval task, training order).",
    ),
    protocol: str = typer.Option(..., "--protocol", help="mtil (task-incremental) or cil."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Score an accuracy matrix (MTIL: Transfer/Avg/Last; CIL: Avg/Last/Forgetting/BWT)."""
    from clipcl.results.matrix_io import load_matrix
    from clipcl.results.metrics import cil_metrics, mtil_metrics

    protocol = protocol.lower()
    if protocol not in {"mtil", "cil"}:
        raise ClipclError(
            f"--protocol '{protocol}'{did_you_mean(protocol, ['mtil', 'cil'])}: allowed: mtil, cil"
        )
    loaded = load_matrix(file)
    if protocol == "mtil":
        metrics = mtil_metrics(loaded.matrix).to_dict()
    else:
        metrics = cil_metrics(loaded.matrix, counts=loaded.counts).to_dict()
    if as_json:
        print(json.dumps(metrics))
        return
    tasks = loaded.tasks or [f"task {i + 1}" for i in range(loaded.matrix.shape[0])]
    _print_matrix(tasks, [[None if v != v else float(v) for v in r] for r in loaded.matrix])
    _print_metrics(protocol, metrics)


class _RichChainProgress:
    """Draws a bar per task on stderr."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.bars: dict[int, Any] = {}

    def message(self, text: str) -> None:
        self.progress.console.print(f"[dim]{text}[/dim]")

    def task_started(self, index: int, name: str, steps: int) -> None:
        self.bars[index] = self.progress.add_task(f"task {index + 1} {name}", total=steps)

    def step(self, index: int, step: int, steps: int, loss: float) -> None:
        self.progress.update(
            self.bars[index], completed=step, description=f"task {index + 1} loss {loss:.3f}"
        )

    def task_finished(self, index: int, name: str, accuracies: list[float]) -> None:
        accs = " ".join(f"{a:.1f}" for a in accuracies)
        self.progress.console.print(f"task {index + 1} ({name}) done; accuracies: {accs}")


@chain_app.command("run")
def chain_run(
    benchmark: str = typer.Option(..., "--benchmark", help="Benchmark name, e.g. smoke."),
    method: str = typer.Option(..., "--method", help="Method name, e.g. finetune."),
    model: str = typer.Option("ViT-B-16", "--model", help="open_clip architecture or 'tiny'."),
    pretrained: str | None = typer.Option(
        None, "--pretrained", help="Weights: local file, cached open_clip tag, none."
    ),
    seed: int = typer.Option(0, "--seed", help="Chain seed."),
    root: Path = typer.Option(
        Path("runs"), "--root", help="Run root; the chain uses ROOT/chains/CHAIN_ID."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a spec key, e.g. train.lr=1e-4 or method.train_mode=image."
    ),
    data_root: str | None = typer.Option(None, "--data-root", help="Root of local datasets."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: auto)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run one chain locally (resumes when re-run) and print its matrix and metrics."""
    from clipcl.models import resolve_arch, resolve_pretrained
    from clipcl.workers import ChainSpec, run_chain

    data: dict[str, Any] = {
        "model": {"arch": model, "pretrained": pretrained},
        "benchmark": benchmark,
        "method": {"name": method},
        "seed": seed,
    }
    spec = ChainSpec.build(data, source="chain run", overrides=overrides)
    resolve_pretrained(resolve_arch(spec.model.arch), spec.model.pretrained)
    run_dir = root / "chains" / spec.chain_id
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=as_json,
    ) as bars:
        result = run_chain(
            spec, run_dir, data_root=data_root, device=device, progress=_RichChainProgress(bars)
        )  # type: ignore[arg-type]
    payload = result.to_json()
    if as_json:
        print(
            json.dumps(
                {k: payload[k] for k in ("chain_id", "protocol", "tasks", "matrix", "metrics")}
            )
        )
        return
    _print_matrix(payload["tasks"], payload["matrix"], payload["zeroshot"])
    _print_metrics(payload["protocol"], payload["metrics"])


# typer vendors click; its usage errors (missing option, bad int) share this base class.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True, markup=True)
    sys.exit(2)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except ClipclError as exc:
        _fail(escape(str(exc)))
    except _UsageError as exc:
        where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) else ""
        _fail(escape(where + " ".join(exc.format_message().split())))
    except KeyboardInterrupt:
        err.print("interrupted; finished tasks are kept and a re-run resumes")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
