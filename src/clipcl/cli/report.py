"""``clipcl report``: a sweep's results as one self-contained HTML page and PNG figures."""

from __future__ import annotations

from pathlib import Path

import typer

from clipcl.cli.common import app, out


@app.command()
def report(
    sweep: str = typer.Argument(..., help="Sweep file or name."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Folder for index.html and the PNGs (default: ROOT/report/SWEEP).",
    ),
) -> None:
    """Heatmaps, curves, headline metrics and costs of a sweep: index.html + PNG files."""
    from clipcl.orchestrator.control import run_root, sweep_target
    from clipcl.results.report import write_report

    name, _ = sweep_target(sweep)
    assert name is not None
    root = run_root(sweep, root)
    done = write_report(root, name, output or root / "report" / name)
    if done.finished < done.chains:
        out.print(
            f"{done.chains - done.finished} of {done.chains} chains are unfinished: the "
            "report shows what is finished",
            highlight=False,
        )
    out.print(
        f"wrote {done.index} and {len(done.figures)} figures", highlight=False, soft_wrap=True
    )
