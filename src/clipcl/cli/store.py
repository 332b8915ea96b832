"""``clipcl store rebuild`` (a new results store from the chains' durable records),
``clipcl store where`` (which store a run root uses, and why) and ``clipcl store migrate``
(a root's SQLite store into a PostgreSQL one)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from clipcl.cli.common import app, out
from clipcl.errors import ClipclError

store_app = typer.Typer(no_args_is_help=True, help="The results store of a run root.")
app.add_typer(store_app, name="store")


@store_app.command("rebuild")
def rebuild(
    root: Path = typer.Option(..., "--root", help="Run root whose store to rebuild."),
    sweep: list[Path] = typer.Option(
        [], "--sweep", help="A sweep file to record again (repeatable): names its chains."
    ),
) -> None:
    """Rebuild the root's store from the chain records (the old file is kept beside it)."""
    from clipcl.orchestrator.plan import load_entries, plan
    from clipcl.results.store import rebuild_store

    for path in sweep:
        load_entries(path, root)  # a bad sweep file fails before anything moves
    kept, store = rebuild_store(root)
    plans = [plan(path, root) for path in sweep]
    with store:
        for the_plan in plans:
            sw = the_plan.sweep
            store.record_sweep(
                sw.name, the_plan.source, sw.model_dump(mode="json"), the_plan.records()
            )
        chains = store.ingest_root(root)
        corrupt = dict(store.corrupt)
    if kept is not None:
        out.print(f"kept the old store as {kept}", highlight=False)
    out.print(
        f"rebuilt {store.path} from {chains} chains' records"
        + (f" and {len(plans)} sweep files" if plans else ""),
        highlight=False,
    )
    for chain_id, why in sorted(corrupt.items()):
        out.print(f"  corrupt, left out: {chain_id}: {why}", highlight=False, soft_wrap=True)


@store_app.command("where")
def where(
    target: str = typer.Argument(None, help="Sweep file, or a run root (default: ./runs)."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
) -> None:
    """Print the store file a run root uses and why (in the root, or on local disk when the
    root is on a network filesystem); creates nothing."""
    from clipcl.orchestrator.control import run_root
    from clipcl.results.location import locate

    if target is not None and Path(target).suffix in {".yaml", ".yml"}:
        root = run_root(target, root)
    elif target is not None:
        root = Path(target)
    else:
        root = run_root(None, root)
    from clipcl.results import pg

    url = pg.store_url(root)
    if url is not None:
        why = (
            f"${pg.URL_ENV}"
            if os.environ.get(pg.URL_ENV)
            else (
                "the sweep file's store:" if pg.bound_url(root) is None else str(root / pg.URL_FILE)
            )
        )
        state = "exists" if pg.has_root(url, root) else "not created yet"
        out.print(pg.redact(url), highlight=False, soft_wrap=True)
        out.print(
            f"run root {root.resolve()}; PostgreSQL store named by {why}; schema "
            f"{pg.root_schema(root)}; {state}",
            highlight=False,
            soft_wrap=True,
        )
        return
    found = locate(root)
    state = "exists" if found.path.is_file() else "not created yet"
    out.print(str(found.path), highlight=False, soft_wrap=True)
    out.print(
        f"run root {root.resolve()}; {found.reason()}; {state}", highlight=False, soft_wrap=True
    )


@store_app.command("migrate")
def migrate(
    source: Path = typer.Option(..., "--from", help="Run root whose SQLite store to copy."),
    url: str = typer.Option(..., "--to", help="PostgreSQL store URL (postgresql://USER@HOST/DB)."),
) -> None:
    """Copy a root's SQLite store into a PostgreSQL store (one transaction) and make the root
    use it from then on; the SQLite file is left as it was."""
    from clipcl.results import pg
    from clipcl.results.store import migrate_store

    if not source.is_dir():
        raise ClipclError(f"--from: no run root at {source}")
    copied = migrate_store(source, url)
    out.print(
        f"copied {', '.join(f'{n} {table}' for table, n in copied.items())} rows of {source} "
        f"into {pg.redact(url)}; the root now uses it ({source / pg.URL_FILE})",
        highlight=False,
        soft_wrap=True,
    )
