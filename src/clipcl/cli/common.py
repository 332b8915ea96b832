"""Shared pieces of the command line: the typer apps, consoles, tables, progress, ``main``."""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import clipcl
from clipcl.errors import ClipclError

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
for _console in (out, err):
    if not _console.is_terminal:  # logs and pipes: no 80-column truncation of task names
        _console.width = max(_console.width, 200)


def _version(value: bool) -> None:
    if value:
        print(f"clipcl {clipcl.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    store: str | None = typer.Option(
        None,
        "--store",
        metavar="URL",
        help="Results store for this command: a PostgreSQL URL (postgresql://USER@HOST/DB); "
        "replaces a sweep file's store: and sets $CLIPCL_STORE (default: the root's own).",
    ),
) -> None:
    """clipcl: continual learning of CLIP models."""
    if store is not None:
        from clipcl.results.pg import URL_ENV, check_url

        os.environ[URL_ENV] = check_url(store, "--store")


def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and v != v) else f"{v:.1f}"


def _print_metrics(protocol: str, metrics: dict[str, Any]) -> None:
    from clipcl.results.tables import FORGETTING_NOTE, METRICS, metric_label

    cil = protocol not in {"mtil", "til"}
    keys = [k for k in METRICS["cil" if cil else "til"] if k in metrics]
    table = Table(title="metrics (%)")
    for k in keys:
        table.add_column(metric_label(k), justify="right")
    table.add_row(*[_fmt(metrics[k]) for k in keys])
    out.print(table)
    if "forgetting" in keys:
        for line in FORGETTING_NOTE:
            out.print(line, highlight=False)


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


def _bars(transient: bool = False) -> Progress:
    """Progress bars on stderr; when stderr is no terminal (a log file), bars are off and
    ``_tick`` prints a plain line every 10 % instead."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=transient,
        disable=not err.is_terminal,
    )


def _tick(bars: Progress, bar: Any, label: str, step: int, steps: int, loss: float) -> None:
    bars.update(bar, completed=step, description=f"{label} loss {loss:.3f}")
    if bars.disable and (step % max(1, steps // 10) == 0 or step == steps):
        err.print(f"{label}: step {step}/{steps} loss {loss:.4f}", highlight=False)


_UsageError: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
)


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
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        message = exc.format_message()  # type: ignore[attr-defined]
        _fail(escape(where + " ".join(message.split())))
    except sqlite3.DatabaseError as exc:  # damaged past what opening the store checks
        _fail(
            escape(
                f"the results store is damaged ({exc}); `clipcl store rebuild --root ROOT` "
                "rebuilds it from the chain records"
            )
        )
    except Exception as exc:  # a PostgreSQL store's driver failing past its opening
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        from clipcl.results.pg import error_text

        _fail(escape(f"the results store failed: {error_text(exc)}"))
    except KeyboardInterrupt:
        err.print("interrupted; finished tasks are kept and a re-run resumes")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
