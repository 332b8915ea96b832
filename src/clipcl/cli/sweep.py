"""Commands about sweeps: plan, submit, status, results, logs, cancel, retry.

The coordinator of ``submit`` is the same code with or without ``--follow``: without it, the
command starts itself again as a detached process (``--follow``, output in
``ROOT/coordinator.log``) and returns once it is dispatched. Chains hold a lock while they run,
so submitting again never runs a chain twice; it dispatches only what is not finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from clipcl.cli.common import app, err, out
from clipcl.errors import ClipclError, did_you_mean

if TYPE_CHECKING:
    from clipcl.results.rows import ChainRow

BACKENDS = ("local", "ray", "slurm")


def _load(sweep_file: Path, root: Path | None):
    """(sweep, entries, root) for a sweep file."""
    from clipcl.sweeps import expand, load_sweep

    sweep = load_sweep(sweep_file)
    entries = expand(sweep, str(sweep_file))
    return sweep, entries, (root or Path(sweep.root))


def _data_root(sweep, flag: str | None) -> str | None:
    """The data root of a submission: ``--data-root``, else the sweep's, else the environment."""
    import os

    from clipcl.data.real.benchmarks import DATA_ROOT_ENV

    root = flag or sweep.data_root or os.environ.get(DATA_ROOT_ENV)
    return str(Path(root).expanduser().resolve()) if root else None


def preflight_data(sweep, data_root: str | None, *, refuse: bool) -> bool:
    """Check the datasets the sweep's benchmarks read; print what is wrong.

    ``refuse``: raise ``ClipclError`` (nothing is submitted) when anything is missing.
    Returns whether everything is present.
    """
    from clipcl.cli.data import report_checks
    from clipcl.data.real import get_dataset
    from clipcl.data.real.benchmarks import BENCHMARK_DATASETS, resolve_data_root

    needed = sorted({d for b in sweep.benchmarks for d in BENCHMARK_DATASETS.get(b, ())})
    if not needed:
        return True
    real = [b for b in sweep.benchmarks if b in BENCHMARK_DATASETS]
    if data_root is None and not refuse:
        out.print(f"datasets not checked ({', '.join(needed)}): no --data-root given")
        return False
    root = resolve_data_root(data_root, real[0])
    ok = report_checks([get_dataset(n).check(root) for n in needed], root)
    if not ok and refuse:
        raise ClipclError(
            f"datasets missing under {root} (listed above): nothing was submitted; "
            f"`clipcl data check --root {root}` shows the same list"
        )
    return ok


def _records(entries) -> list:
    from clipcl.data import benchmark_info
    from clipcl.results.store import ChainRecord

    recs = []
    for e in entries:
        info = benchmark_info(e.benchmark)
        recs.append(
            ChainRecord(
                e.chain_id,
                e.method,
                e.benchmark,
                info.protocol,
                e.seed,
                dict(e.settings),
                e.spec.model_dump(mode="json"),
                len(info.task_names),
            )
        )
    return recs


def _disk_progress(root: Path, chain_id: str) -> int:
    from clipcl.orchestrator.sweep_runner import finished_tasks

    return finished_tasks(root / "chains" / chain_id)


def _store_states(root: Path) -> dict[str, ChainRow]:
    """Chain states in the store, if the root has one (plan never creates it)."""
    if not (root / "clipcl.sqlite").is_file():
        return {}
    from clipcl.results.store import ResultsStore

    with ResultsStore(root) as store:
        return {row.chain_id: row for row in store.chain_progress()}


def _state_label(done: int, total: int, stored: ChainRow | None) -> str:
    if done >= total:
        return "done"
    if stored and stored.state in {"running", "queued", "failed", "cancelled"}:
        return stored.state + (f" ({done}/{total})" if done else "")
    return f"partial ({done}/{total})" if done else "new"


@app.command()
def plan(
    sweep_file: Path = typer.Argument(..., help="Sweep file (YAML)."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
    limit: int = typer.Option(200, "--limit", help="Show at most this many chains."),
    data_root: str | None = typer.Option(None, "--data-root", help="Root of local datasets."),
) -> None:
    """Show the chains of a sweep with their state and the work left; runs nothing."""
    from clipcl.data import benchmark_info

    sweep, entries, root = _load(sweep_file, root)
    if not preflight_data(sweep, _data_root(sweep, data_root), refuse=False):
        out.print("[red]submit would be refused: datasets are missing (above)[/]")
    stored = _store_states(root)
    table = Table(title=f"sweep {sweep.name}: {len(entries)} chains (root {root})")
    for col in ("chain", "method", "benchmark", "seed", "settings", "tasks", "state"):
        table.add_column(col)
    left_tasks = left_iters = left_epochs = 0
    counts: dict[str, int] = {}
    for i, e in enumerate(entries):
        total = len(benchmark_info(e.benchmark).task_names)
        done = _disk_progress(root, e.chain_id)
        label = _state_label(done, total, stored.get(e.chain_id))
        counts[label.split(" ")[0]] = counts.get(label.split(" ")[0], 0) + 1
        if e.spec.method_name != "zeroshot":
            left_tasks += total - done
            left_iters += (total - done) * (e.spec.train.iterations or 0)
            left_epochs += (total - done) * (e.spec.train.epochs or 0)
        if i < limit:
            table.add_row(
                e.chain_id, e.method, e.benchmark, str(e.seed), e.settings_label, str(total), label
            )
    out.print(table)
    if len(entries) > limit:
        out.print(f"… {len(entries) - limit} more chains (--limit)")
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    amounts = [f"{left_tasks} task trainings"]
    if left_iters or not left_epochs:
        amounts.append(f"{left_iters} iterations")
    if left_epochs:
        amounts.append(f"{left_epochs} task-epochs")
    out.print(f"{summary}; work left: {', '.join(amounts)}")


def _coordinate(
    sweep,
    entries,
    root: Path,
    backend_name: str,
    jobs: int | None,
    ray_address: str | None,
    data_root: str | None,
) -> None:
    """Run the chains of ``entries`` here, recording every state change in the store."""
    from clipcl.orchestrator.sweep_runner import SweepChain, make_backend, run_sweep_chains

    chains = [SweepChain(e.chain_id, e.spec, e.spec_tasks) for e in entries]
    final = run_sweep_chains(
        sweep.name,
        chains,
        root,
        sweep.resources.model_dump(),
        make_backend(backend_name, jobs, ray_address),
        data_root,
        log=lambda line: err.print(line, highlight=False),
    )
    bad = sorted(c for c, s in final.items() if s != "done")
    err.print(f"coordinator finished: {len(final) - len(bad)} done, {len(bad)} not done")


@app.command()
def submit(
    sweep_file: Path = typer.Argument(..., help="Sweep file (YAML)."),
    backend: str = typer.Option("local", "--backend", help="local, ray or slurm."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
    follow: bool = typer.Option(False, "--follow", help="Stay attached until all chains end."),
    jobs: int | None = typer.Option(
        None, "--jobs", min=1, help="local: chains at once (default: one per visible GPU, else 1)."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="ray: cluster address (default: start a local Ray)."
    ),
    data_root: str | None = typer.Option(None, "--data-root", help="Root of local datasets."),
) -> None:
    """Record a sweep in the store and dispatch every chain that is not finished."""
    from clipcl.results.store import ResultsStore

    if backend not in BACKENDS:
        raise ClipclError(
            f"--backend '{backend}'{did_you_mean(backend, BACKENDS)}; allowed: "
            f"{', '.join(BACKENDS)}"
        )
    sweep, entries, root = _load(sweep_file, root)
    data_root = _data_root(sweep, data_root)
    preflight_data(sweep, data_root, refuse=True)
    with ResultsStore(root) as store:
        store.record_sweep(
            sweep.name, str(sweep_file), sweep.model_dump(mode="json"), _records(entries)
        )
        store.ingest_root(root)
    from clipcl.data import benchmark_info

    unfinished = [
        e
        for e in entries
        if _disk_progress(root, e.chain_id) < len(benchmark_info(e.benchmark).task_names)
    ]
    from clipcl.orchestrator.sweep_runner import owned_by_live_coordinators

    owned = owned_by_live_coordinators(root)
    todo = [e for e in unfinished if e.chain_id not in owned]
    if backend == "slurm":
        _submit_slurm(sweep, todo, root, str(sweep_file), data_root, follow)
        return
    out.print(
        f"sweep {sweep.name}: {len(entries)} chains, {len(entries) - len(unfinished)} done, "
        f"{len(unfinished) - len(todo)} with a live coordinator, {len(todo)} to dispatch"
    )
    if not todo:
        return
    if follow:
        _coordinate(sweep, todo, root, backend, jobs, ray_address, data_root)
        return
    args = [
        sys.executable,
        "-m",
        "clipcl.cli",
        "submit",
        str(sweep_file),
        "--backend",
        backend,
        "--root",
        str(root),
        "--follow",
    ]
    for flag, value in (
        ("--jobs", jobs),
        ("--ray-address", ray_address),
        ("--data-root", data_root),
    ):
        if value is not None:
            args += [flag, str(value)]
    log = root / "coordinator.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            args,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    out.print(
        f"dispatched to the {backend} backend by coordinator pid {proc.pid} "
        f"(log: {log}); follow with `clipcl status {sweep_file}`"
    )


def _submit_slurm(
    sweep, todo, root: Path, source: str, data_root: str | None, follow: bool
) -> None:
    """Submit to Slurm and return (or, with ``follow``, wait until the chains end)."""
    from clipcl.results.store import ResultsStore
    from clipcl.slurm.dispatch import submit_sweep

    with ResultsStore(root) as store:
        sub = submit_sweep(sweep, todo, root, store, source=source, data_root=data_root)
    chains = sorted({r["chain_id"] for r in sub.submitted})
    arrays = sorted({r["job_id"].split("_")[0] for r in sub.submitted}, key=int)
    out.print(
        f"sweep {sweep.name}: {len(todo) - len(sub.live)} chains to submit, "
        f"{len(sub.live)} with a live Slurm job; submitted {len(chains)} chains as "
        f"{len(sub.submitted)} jobs (Slurm job ids {', '.join(arrays) or '-'}; partition "
        f"{sub.partition}, chain_mode {sweep.slurm.chain_mode})"
    )
    if not chains:
        return
    if not follow:
        out.print(f"follow with `clipcl status {source}`; logs: `clipcl logs CHAIN`")
        return
    from clipcl.slurm.track import wait

    final = wait(root, chains, timeout_s=float("inf"))
    bad = sorted(c for c, state in final.items() if state != "done")
    err.print(f"slurm chains finished: {len(final) - len(bad)} done, {len(bad)} not done")


def _sweep_name(sweep: str | None) -> tuple[str | None, Path | None]:
    """A sweep is named by its file or its name: (name, file)."""
    if sweep is None:
        return None, None
    path = Path(sweep)
    if path.suffix in {".yaml", ".yml"} or path.is_file():
        from clipcl.sweeps import load_sweep

        return load_sweep(path).name, path
    return sweep, None


def _root_for(sweep: str | None, root: Path | None) -> Path:
    name, path = _sweep_name(sweep)
    if root is not None:
        return root
    if path is not None:
        from clipcl.sweeps import load_sweep

        return Path(load_sweep(path).root)
    return Path("runs")


def _refresh_slurm(store, root: Path) -> bool:
    """Ask Slurm about the store's queued/running Slurm chains; whether a state changed."""
    if not any(r.backend == "slurm" for r in store.chain_progress()):
        return False
    from clipcl.slurm.commands import SlurmError
    from clipcl.slurm.track import refresh

    before = {r.chain_id: r.state for r in store.chain_progress()}
    try:
        refresh(store, root)
    except SlurmError as exc:
        err.print(f"warning: cannot ask Slurm about job states: {exc}", highlight=False)
        return False
    return before != {r.chain_id: r.state for r in store.chain_progress()}


@app.command()
def status(
    sweep: str | None = typer.Argument(None, help="Sweep file or name (default: every chain)."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
    watch: float | None = typer.Option(None, "--watch", help="Refresh every N seconds."),
    limit: int = typer.Option(50, "--limit", help="Show at most this many chains."),
) -> None:
    """Chains and their states: counts per state and a table of chains."""
    from clipcl.results.store import ResultsStore

    root = _root_for(sweep, root)
    name, _ = _sweep_name(sweep)
    if not (root / "clipcl.sqlite").is_file():
        raise ClipclError(f"no results store under {root} (submit a sweep first, or pass --root)")
    backoff = None
    if watch:
        from clipcl.slurm.track import Backoff

        backoff = Backoff(base=watch, cap=max(watch, 60.0))
    slurm_wait = 0.0
    while True:
        with ResultsStore(root) as store:
            if time.monotonic() >= slurm_wait:
                changed = _refresh_slurm(store, root)
                slurm_wait = time.monotonic() + (backoff.next(changed) if backoff else 0)
            store.ingest_root(root)
            rows = store.chain_progress(name)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.state] = counts.get(r.state, 0) + 1
        summary = f"{name or 'all chains'} under {root}: " + ", ".join(
            f"{v} {k}" for k, v in sorted(counts.items())
        )
        out.print(summary, soft_wrap=True, highlight=False)  # one line, however long
        table = Table()
        for col in ("chain", "method", "benchmark", "seed", "state", "tasks", "attempts", "job"):
            table.add_column(col)
        for r in rows[:limit]:
            table.add_row(
                r.chain_id,
                r.method,
                r.benchmark,
                str(r.seed),
                r.state,
                f"{r.tasks_done}/{r.num_tasks}",
                str(r.attempts),
                str(r.job_id or ""),
            )
        out.print(table)
        if len(rows) > limit:
            out.print(f"… {len(rows) - limit} more chains (--limit)")
        if not watch or all(r.state in {"done", "failed", "cancelled"} for r in rows):
            return
        time.sleep(watch)


@app.command()
def results(
    sweep: str = typer.Argument(..., help="Sweep file or name."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
    fmt: str = typer.Option("table", "--format", help="table, md, latex, csv or json."),
    per_dataset: bool = typer.Option(False, "--per-dataset", help="Per-dataset columns (MTIL)."),
    matrix: str | None = typer.Option(None, "--matrix", help="Print one chain's matrix instead."),
) -> None:
    """The paper table: one row per (method, benchmark, settings), mean ± std over seeds."""
    from clipcl.results import load_results
    from clipcl.results.tables import matrix_table, render, summarize

    root = _root_for(sweep, root)
    name, _ = _sweep_name(sweep)
    df = load_results(root, sweep=name)
    if df.empty:
        raise ClipclError(f"no evaluation rows for sweep '{name}' under {root}")
    if matrix is not None:
        print(matrix_table(df, matrix))
        return
    print(render(summarize(df, per_dataset=per_dataset), fmt))


@app.command()
def logs(
    chain: str = typer.Argument(..., help="Chain id."),
    root: Path = typer.Option(Path("runs"), "--root", help="Run root."),
    lines: int = typer.Option(100, "--lines", help="Last N lines."),
) -> None:
    """The worker log of a chain (stdout and stderr of its job; every Slurm job of it)."""
    from clipcl.slurm.logs import chain_log_files

    files = chain_log_files(root, chain)
    log = root / "chains" / chain / "worker.log"
    if log.is_file():
        files.append(log)
    if not files:
        raise ClipclError(
            f"no log for chain '{chain}' under {root} (looked for {log} and Slurm job logs)"
        )
    for path in files:
        if len(files) > 1:
            print(f"==> {path} <==")
        print("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))


def _chains_of(target: str, root: Path) -> list[str]:
    from clipcl.results.store import ResultsStore

    if (root / "chains" / target).is_dir():
        return [target]
    name, _ = _sweep_name(target)
    with ResultsStore(root) as store:
        ids = [r.chain_id for r in store.chain_progress(name)]
    if not ids:
        raise ClipclError(f"'{target}' is neither a chain under {root} nor a recorded sweep")
    return ids


@app.command()
def cancel(
    target: str = typer.Argument(..., help="Sweep file, sweep name or chain id."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
) -> None:
    """Stop running chains (their finished tasks are kept; submit again to resume)."""
    from clipcl.results.store import ResultsStore

    root = root or _root_for(target if Path(target).suffix in {".yaml", ".yml"} else None, None)
    ids = set(_chains_of(target, root))
    stopped = 0
    from clipcl.orchestrator.sweep_runner import owned_by_live_coordinators

    for chain_id, pid in owned_by_live_coordinators(root).items():
        if chain_id in ids:  # the coordinator cancels its jobs on SIGTERM
            os.kill(pid, signal.SIGTERM)
            stopped += 1
    with ResultsStore(root) as store:
        slurm_ids = [
            r.chain_id for r in store.chain_progress() if r.chain_id in ids and r.backend == "slurm"
        ]
        scancelled = 0
        if slurm_ids:
            from clipcl.slurm.track import cancel_jobs

            scancelled = cancel_jobs(store, slurm_ids)
        store.ingest_root(root)
        active = [
            r.chain_id
            for r in store.chain_progress()
            if r.chain_id in ids and r.state in {"queued", "running", "new"}
        ]
        store.set_states(active, "cancelled")
    out.print(
        f"cancelled {len(active)} chains ({stopped} via their coordinator, "
        f"{scancelled} Slurm jobs scancelled)"
    )


@app.command()
def retry(
    sweep_file: Path = typer.Argument(..., help="Sweep file (YAML)."),
    backend: str = typer.Option("local", "--backend", help="local, ray or slurm."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
    follow: bool = typer.Option(False, "--follow", help="Stay attached until all chains end."),
    jobs: int | None = typer.Option(None, "--jobs", min=1, help="local: chains at once."),
) -> None:
    """Dispatch the failed and cancelled chains of a sweep again (they resume)."""
    submit(
        sweep_file,
        backend=backend,
        root=root,
        follow=follow,
        jobs=jobs,
        ray_address=None,
        data_root=None,
    )
