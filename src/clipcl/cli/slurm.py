"""``clipcl sbatch``: a standalone Slurm array script for a sweep (for plain ``sbatch`` users)."""

from __future__ import annotations

from pathlib import Path

import typer

from clipcl.cli.common import app, out


@app.command()
def sbatch(
    sweep_file: Path = typer.Argument(..., help="Sweep file (YAML)."),
    output: Path = typer.Option(..., "-o", "--output", help="Script to write."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
    data_root: str | None = typer.Option(None, "--data-root", help="Root of local datasets."),
    max_array: int | None = typer.Option(
        None,
        "--max-array",
        min=1,
        help="Chains per script (default: the cluster's MaxArraySize, 1001 without Slurm).",
    ),
) -> None:
    """Write an sbatch array script (element i runs chain i); its results land in the store."""
    import clipcl
    from clipcl.cli.sweep import _data_root, preflight_data
    from clipcl.orchestrator.plan import plan
    from clipcl.results.store import ResultsStore
    from clipcl.slurm import commands
    from clipcl.slurm.dispatch import write_sbatch_scripts

    the_plan = plan(sweep_file, root)
    sweep, root = the_plan.sweep, the_plan.root
    data_root = _data_root(sweep, data_root, sweep_file)
    preflight_data(sweep, data_root, refuse=True)
    if max_array is None:
        try:
            max_array = commands.max_array_size()
        except commands.SlurmError:
            max_array = 1001
    with ResultsStore(root) as store:
        store.record_sweep(
            sweep.name, str(sweep_file.resolve()), sweep.model_dump(mode="json"), the_plan.records()
        )
    written = write_sbatch_scripts(
        sweep,
        [c.entry for c in the_plan.unfinished],
        root,
        output,
        source=str(sweep_file),
        data_root=data_root,
        max_array=max_array,
        version=clipcl.__version__,
    )
    if not written:
        out.print(f"sweep {sweep.name}: every chain is finished; no script written")
        return
    for path, n in written:
        out.print(f"wrote {path}: {n} chains; submit with `sbatch {path}`")
    out.print(f"then: `clipcl status {sweep_file}` and `clipcl results {sweep_file}`")
