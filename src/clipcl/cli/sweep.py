"""Commands about sweeps: plan, submit, status, results, logs, cancel, retry.

The coordinator of ``submit`` is the same code with or without ``--follow``: without it, the
command starts itself again as a detached process (``--follow``, output in
``ROOT/coordinator.log``) and returns once it is dispatched. Chains hold a lock while they run,
so submitting again never runs a chain twice; it dispatches only what is not finished.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import typer
from rich.table import Table

from clipcl.cli.common import app, err, out
from clipcl.errors import ClipclError


def _data_root(sweep, flag: str | None, sweep_file: Path) -> str | None:
    """The data root of a submission: ``--data-root`` (relative: to the working directory), else
    the sweep's ``data_root`` (relative: to the sweep file's directory, like ``root``), else the
    environment."""
    import os

    from clipcl.data.catalog import DATA_ROOT_ENV

    if not flag and sweep.data_root:
        return str(sweep.data_root_path(sweep_file))
    root = flag or os.environ.get(DATA_ROOT_ENV)
    return str(Path(root).expanduser().resolve()) if root else None


def preflight_data(sweep, data_root: str | None, *, refuse: bool) -> bool:
    """Check the datasets the sweep's benchmarks read; print what is wrong.

    ``refuse``: raise ``ClipclError`` (nothing is submitted) when anything is missing.
    Returns whether everything is present.
    """
    from clipcl.data.catalog import BENCHMARK_DATASETS, real_dataset_name

    needed_set = {d for b in sweep.benchmarks for d in BENCHMARK_DATASETS.get(b, ())}
    heldout: set[str] = set()
    for section in [sweep.eval, *(m.eval for m in sweep.methods.values())]:
        extra = section.get("extra") or []  # held-out sets (names checked at expansion)
        heldout |= {real_dataset_name(str(n)) for n in extra}
    needed = sorted(needed_set | heldout)
    if not needed:
        return True
    if data_root is None and not refuse:
        out.print(f"datasets not checked ({', '.join(needed)}): no --data-root given")
        return False
    from clipcl.cli.data import report_checks  # the dataset readers (torch): only to check
    from clipcl.data.real import get_dataset
    from clipcl.data.real.benchmarks import heldout_data_root, resolve_data_root

    real = [b for b in sweep.benchmarks if b in BENCHMARK_DATASETS]
    # the error for a missing root names what reads from disk: a benchmark, else eval.extra
    root = (
        resolve_data_root(data_root, real[0])
        if real
        else heldout_data_root(data_root, sorted(heldout))
    )
    ok = report_checks([get_dataset(n).check(root) for n in needed], root)
    if not ok and refuse:
        raise ClipclError(
            f"datasets missing under {root} (listed above): nothing was submitted; "
            f"`clipcl data check --root {root}` shows the same list"
        )
    return ok


@app.command()
def plan(
    sweep_file: Path = typer.Argument(..., help="Sweep file (YAML)."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
    limit: int = typer.Option(200, "--limit", min=0, help="Show at most this many chains."),
    data_root: str | None = typer.Option(None, "--data-root", help="Root of local datasets."),
) -> None:
    """Show the chains of a sweep with their state and the work left; runs nothing."""
    from clipcl.orchestrator.plan import plan as make_plan

    the_plan = make_plan(sweep_file, root)
    sweep = the_plan.sweep
    if not preflight_data(sweep, _data_root(sweep, data_root, sweep_file), refuse=False):
        out.print("[red]submit would be refused: datasets are missing (above)[/]")
    cost = the_plan.cost_ahead()
    table = Table(title=f"sweep {sweep.name}: {len(the_plan.chains)} chains (root {the_plan.root})")
    for col in ("chain", "method", "benchmark", "seed", "settings", "tasks", "state", "left"):
        table.add_column(col)
    for c, ahead in zip(the_plan.chains[:limit], cost.chains, strict=False):
        e = c.entry
        table.add_row(
            e.chain_id,
            e.method,
            e.benchmark,
            str(e.seed),
            e.settings_label,
            str(c.num_tasks),
            c.label,
            ahead.describe() if ahead.tasks_left else "-",
        )
    out.print(table)
    if len(the_plan.chains) > limit:
        out.print(f"… {len(the_plan.chains) - limit} more chains (--limit)")
    summary = ", ".join(f"{v} {k}" for k, v in the_plan.counts().items())
    out.print(f"{summary}; work left: {the_plan.work_left().describe()}")
    for line in cost.lines():
        out.print(line, highlight=False, soft_wrap=True)
    _say_corrupt(the_plan)


def _say_corrupt(the_plan) -> None:
    """Name each chain whose records cannot be read (it is never dispatched)."""
    for c in the_plan.corrupt:
        err.print(
            f"corrupt (not dispatched): {c.chain_id}: {c.problem}", highlight=False, soft_wrap=True
        )


def _log_line(line: str) -> None:
    err.print(line, highlight=False)


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
    yes: bool = typer.Option(
        # (the number is orchestrator.plan.CONFIRM_ABOVE_CHAINS: not imported here, so that
        # loading the command line stays cheap)
        False,
        "--yes",
        help="Submit a sweep of more than 20 000 chains.",
    ),
) -> None:
    """Record a sweep in the store and dispatch every chain that is not finished."""
    from clipcl.orchestrator.backends import BackendOptions, backend_class, check_backend_name
    from clipcl.orchestrator.plan import plan as make_plan
    from clipcl.results.store import ResultsStore

    check_backend_name(backend)
    the_plan = make_plan(sweep_file, root, ask_backends=True, confirmed=yes)
    sweep, root = the_plan.sweep, the_plan.root
    data_root = _data_root(sweep, data_root, sweep_file)
    preflight_data(sweep, data_root, refuse=True)
    options = BackendOptions(jobs, ray_address, root, sweep, str(sweep_file), data_root)
    check_root = getattr(backend_class(backend), "check_root", None)
    if check_root is not None and the_plan.todo:
        check_root(options)  # a cluster whose nodes cannot see the root: nothing is written
    with ResultsStore(root) as store:
        store.record_sweep(
            sweep.name, str(sweep_file.resolve()), sweep.model_dump(mode="json"), the_plan.records()
        )
        store.ingest_root(root)
    _say_corrupt(the_plan)
    if backend_class(backend).outlives_submitter:
        _submit_to_scheduler(the_plan, backend, options, follow)
    else:
        _submit_to_coordinator(the_plan, backend, options, follow)


def _submit_to_coordinator(the_plan, backend: str, options, follow: bool) -> None:
    """Run the plan's chains under a coordinator: this process (``follow``) or a detached one."""
    from clipcl.orchestrator.backends import make_backend
    from clipcl.orchestrator.coordinators import Handoff, start_detached
    from clipcl.orchestrator.sweep_runner import SweepChain, prepare_jobs, run_sweep_chains

    unfinished, todo = the_plan.unfinished, the_plan.todo
    out.print(
        f"sweep {the_plan.name}: {len(the_plan.chains)} chains, "
        f"{len(the_plan.chains) - len(unfinished)} done, "
        f"{len(unfinished) - len(todo)} with a live coordinator, {len(todo)} to dispatch"
    )
    if not todo:
        return
    chains = [SweepChain(c.chain_id, c.entry.spec, c.num_tasks) for c in todo]
    resources = the_plan.sweep.resources.model_dump()
    handoff = Handoff(
        the_plan.name,
        str(the_plan.root),
        backend,
        [c.chain_id for c in chains],
        resources,
        options.jobs,
        options.ray_address,
        options.data_root,
    )
    if follow:
        final = run_sweep_chains(
            handoff.sweep,
            chains,
            the_plan.root,
            resources,
            make_backend(backend, options),
            options.data_root,
            log=_log_line,
        )
        bad = sorted(c for c, s in final.items() if s != "done")
        err.print(f"coordinator finished: {len(final) - len(bad)} done, {len(bad)} not done")
        _exit_if_not_done(the_plan.root, final)
        return
    prepare_jobs(chains, the_plan.root)  # the coordinator reads the specs from the run dirs
    pid, log = start_detached(handoff)
    out.print(
        f"dispatched to the {backend} backend by coordinator pid {pid} "
        f"(log: {log}); follow with `clipcl status {the_plan.source}`"
    )


def _submit_to_scheduler(the_plan, backend: str, options, follow: bool) -> None:
    """Submit the plan's chains to a scheduler and return (or, with ``follow``, wait)."""
    from clipcl.orchestrator.backend import SchedulerBackend, prepare_job
    from clipcl.orchestrator.backends import make_backend
    from clipcl.orchestrator.coordinator import follow as follow_handles
    from clipcl.orchestrator.sweep_runner import StoreRecorder, submit_and_record
    from clipcl.results.store import ResultsStore

    scheduler = cast("SchedulerBackend", make_backend(backend, options))
    scheduler.preflight()  # before anything is written for it
    todo = the_plan.todo
    jobs = [
        prepare_job(c.entry.spec, the_plan.run_dir(c).path, num_tasks=c.num_tasks) for c in todo
    ]
    with ResultsStore(the_plan.root) as store:
        handles = submit_and_record(scheduler, jobs, store)
    live = len(the_plan.owned("scheduler"))
    out.print(f"sweep {the_plan.name}: {scheduler.describe(len(todo), live, handles)}")
    if not handles:
        return
    if not follow:
        out.print(f"follow with `clipcl status {the_plan.source}`; logs: `clipcl logs CHAIN`")
        return
    totals = {c.chain_id: c.num_tasks for c in todo}
    with ResultsStore(the_plan.root) as store:
        recorder = StoreRecorder(store, the_plan.root, backend, totals, _log_line)
        final = follow_handles(handles, recorder, poll_s=2.0, cancel_on_exit=False)
    bad = sorted(c for c, state in final.items() if state != "done")
    err.print(f"slurm chains finished: {len(final) - len(bad)} done, {len(bad)} not done")
    _exit_if_not_done(the_plan.root, final)


def _exit_if_not_done(root: Path, final: Mapping[str, str]) -> None:
    """With chains that did not finish: list each with its first error line, exit 1."""
    bad = sorted(c for c, state in final.items() if state != "done")
    if not bad:
        return
    from clipcl.results.store import ResultsStore

    with ResultsStore(root) as store:
        for chain_id in bad:
            row = store.chain(chain_id)
            error = (row.error or "").strip().splitlines() if row else []
            detail = f": {error[0]}" if error else ""
            err.print(f"  {chain_id} {final[chain_id]}{detail}", highlight=False, soft_wrap=True)
    err.print(f"{len(bad)} chains did not finish (`clipcl logs CHAIN` shows why)")
    raise typer.Exit(1)


def _sweep_name(sweep: str | None) -> tuple[str | None, Path | None]:
    from clipcl.orchestrator.control import sweep_target

    return sweep_target(sweep)


def _root_for(sweep: str | None, root: Path | None) -> Path:
    from clipcl.orchestrator.control import run_root

    return run_root(sweep, root)


@app.command()
def status(
    sweep: str | None = typer.Argument(None, help="Sweep file or name (default: every chain)."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
    watch: float | None = typer.Option(None, "--watch", help="Refresh every N seconds."),
    limit: int = typer.Option(50, "--limit", min=0, help="Show at most this many chains."),
    chains: bool = typer.Option(
        False,
        "--chains",
        help="Also where each chain ran: every attempt (host, IP, pid, backend job) and the "
        "attempt, host and device of each finished task.",
    ),
) -> None:
    """Chains and their states: counts per state and a table of chains."""
    from clipcl.orchestrator.control import check_sweep_recorded, standing
    from clipcl.orchestrator.coordinator import Backoff

    root = _root_for(sweep, root)
    name, _ = _sweep_name(sweep)
    check_sweep_recorded(root, name)
    backoff = Backoff(base=watch, cap=max(watch, 60.0)) if watch else None
    ask_at = 0.0
    while True:
        due = time.monotonic() >= ask_at
        now = standing(root, name, ask_backends=due)
        if now.warning:
            err.print(f"warning: {now.warning}", highlight=False)
        if due:
            ask_at = time.monotonic() + (backoff.next(now.changed) if backoff else 0)
        summary = f"{name or 'all chains'} under {root}: " + ", ".join(
            f"{v} {k}" for k, v in now.counts().items()
        )
        out.print(summary, soft_wrap=True, highlight=False)  # one line, however long
        table = Table()
        cols = ("chain", "method", "benchmark", "seed", "settings", "state", "tasks", "attempts")
        for col in (*cols, "job", "ran on"):
            table.add_column(col)
        for r in now.rows[:limit]:
            table.add_row(
                r.chain_id,
                r.method,
                r.benchmark,
                str(r.seed),
                ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(r.settings.items())) or "-",
                now.label(r),
                f"{r.tasks_done}/{r.num_tasks}",
                str(r.attempts),
                str(r.job_id or ""),
                r.hosts or "",
            )
        out.print(table)
        if chains:
            _print_where(root, now.rows[:limit])
        if len(now.rows) > limit:
            out.print(f"… {len(now.rows) - limit} more chains (--limit)")
        for chain_id, problem in now.corrupt_shown():
            err.print(f"corrupt: {chain_id}: {problem}", highlight=False, soft_wrap=True)
        if not watch or now.settled:
            return
        time.sleep(watch)


@app.command()
def results(
    sweep: str | None = typer.Argument(None, help="Sweep file or name (with --all: optional)."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
    fmt: str = typer.Option("table", "--format", help="table, md, latex, csv or json."),
    per_dataset: bool = typer.Option(False, "--per-dataset", help="Per-dataset columns (MTIL)."),
    matrix: str | None = typer.Option(None, "--matrix", help="Print one chain's matrix instead."),
    chaudhry: bool = typer.Option(
        False,
        "--chaudhry",
        help="CIL: also a Forgetting (Chaudhry et al. 2018) column; Forgetting is the seeds' "
        "convention (csv/json hold both).",
    ),
    every: bool = typer.Option(
        False,
        "--all",
        help="Every sweep (a sweep column first): of the run root, or, with a PostgreSQL store "
        "(--store / $CLIPCL_STORE) and no --root, of every root it holds (and a root column).",
    ),
    top5: bool = typer.Option(
        False, "--top5", help="Metrics of top-5 accuracy instead of top-1 (rows keep both)."
    ),
) -> None:
    """The paper table: one row per (method, benchmark, settings), mean ± std over seeds."""
    from clipcl.results import load_results
    from clipcl.results.tables import matrix_table, render, summarize

    by: tuple[str, ...] = ()
    heldout = None
    if every:
        df, where = _every_sweep(sweep, root)
        name = None
        by = ("root",) if "root" in df.columns and df["root"].nunique() > 1 else ()
        by += ("sweep",)
    elif sweep is None:
        raise ClipclError("results needs a sweep file or name (or --all for every sweep)")
    else:
        root = _root_for(sweep, root)
        name, _ = _sweep_name(sweep)
        df = load_results(root, sweep=name)
        heldout = load_results(root, sweep=name, held_out=True)
        where = f"sweep '{name}' under {root}"
    if df.empty:
        raise ClipclError(f"no evaluation rows for {where}")
    if top5:
        df = _top5_rows(df, where)
        if heldout is not None:
            heldout = heldout[heldout["top5"].notna()].assign(top1=heldout["top5"])
    if matrix is not None:
        print(matrix_table(df, matrix))
        return
    table = summarize(df, per_dataset=per_dataset, by=by, heldout=heldout)
    if table.empty:
        raise ClipclError(
            f"no finished chain in {where} yet ({df['chain_id'].nunique()} "
            "chains have rows; `clipcl status` shows how far each is)"
        )
    print(render(table, fmt, chaudhry=chaudhry))


def _top5_rows(df: Any, where: str) -> Any:
    """The rows that recorded top-5, with it in place of top-1 (what the tables read)."""
    known = df["top5"].notna()
    if not known.any():
        raise ClipclError(
            f"no top-5 accuracy in the rows of {where}: they were recorded by a clipcl that "
            "kept top-1 only (chains run again in a new run root record both)"
        )
    return df[known].assign(top1=df["top5"][known], correct=df["correct5"][known])


def _every_sweep(sweep: str | None, root: Path | None) -> tuple[Any, str]:
    """``results --all``: the rows and what they are of (for messages)."""
    from clipcl.results import load_results
    from clipcl.results.pg import URL_ENV

    name, path = _sweep_name(sweep) if sweep is not None else (None, None)
    url = os.environ.get(URL_ENV)
    if not url and path is not None:
        from clipcl.sweeps import load_sweep

        url = load_sweep(path).store
    if url and root is None:
        from clipcl.results.pg import redact

        of = f"sweep '{name}'" if name else "any sweep"
        return load_results(store=url, sweep=name), f"{of} in the store {redact(url)}"
    root = _root_for(sweep, root)
    return load_results(root, sweep=name), f"any sweep under {root}"


@app.command()
def logs(
    target: str = typer.Argument(..., help="Chain id, or the sweep file (then give the chain)."),
    chain: str | None = typer.Argument(None, help="Chain id (after a sweep file)."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
    lines: int = typer.Option(100, "--lines", min=1, help="Last N lines."),
) -> None:
    """The worker log of a chain (stdout and stderr of its job; every Slurm job of it)."""
    from clipcl.results.records import RunDir
    from clipcl.slurm.logs import chain_log_files

    if chain is None:
        chain, sweep = target, None
    else:
        sweep = target
    root = _root_for(sweep, root)
    log = RunDir.of(root, chain).log_path
    files = chain_log_files(root, chain)
    if log.is_file():
        files.append(log)
    if not files:
        raise ClipclError(
            f"no log for chain '{chain}' under {root} (looked for {log} and Slurm job logs)"
        )
    for line in where_it_ran(RunDir.of(root, chain)):
        err.print(line, highlight=False, soft_wrap=True)  # stdout stays the log itself
    for path in files:
        if len(files) > 1:
            print(f"==> {path} <==")
        print("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))


def _print_where(root: Path, rows) -> None:
    """``status --chains``: the provenance lines of each chain, from its records on disk."""
    from clipcl.results.records import RunDir

    for r in rows:
        lines = where_it_ran(RunDir.of(root, r.chain_id))
        out.print(
            f"{r.chain_id} ({r.method} {r.benchmark} seed {r.seed}):"
            + ("" if lines else " never ran"),
            highlight=False,
            soft_wrap=True,
        )
        for line in lines:
            out.print(f"  {line}", highlight=False, soft_wrap=True)


def where_it_ran(records) -> list[str]:
    """One line per worker attempt (number, host, IP, pid, job, start) and per finished task
    (attempt, host, device, seconds), from the chain's records; nothing when it never ran."""
    import datetime

    def when(t: float | None) -> str:
        return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"

    out = []
    for a in records.attempts():
        job = f", job {a['job_id']}" if a.get("job_id") else ""
        out.append(
            f"attempt {a.get('attempt')}: {a.get('host')} ({a.get('ip') or '-'}), pid "
            f"{a.get('pid')}{job}, began {when(a.get('started_at'))}"
        )
    try:
        completed = records.load_state().completed
    except ClipclError:
        completed = {}
    for k, t in sorted(completed.items()):
        if t.host is None:
            continue
        gpu = f" {t.gpu_uuid}" if t.gpu_uuid else ""
        out.append(
            f"task {k}: attempt {t.attempt} on {t.host}, {t.device}{gpu}, "
            f"{when(t.started_at)} – {when(t.finished_at)} ({t.seconds:.1f} s)"
        )
    return out


@app.command()
def cancel(
    target: str = typer.Argument(..., help="Sweep file, sweep name or chain id."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
) -> None:
    """Stop running chains (their finished tasks are kept; submit again to resume)."""
    from clipcl.orchestrator.control import cancel_chains, chains_of

    root = root or _root_for(target if Path(target).suffix in {".yaml", ".yml"} else None, None)
    done = cancel_chains(root, set(chains_of(target, root)))
    out.print(
        f"cancelled {len(done.chains)} chains ({done.via_coordinator} via their coordinator, "
        f"{done.scheduler_jobs} Slurm jobs scancelled)"
    )


@app.command()
def retry(
    sweep_file: Path = typer.Argument(..., help="Sweep file (YAML)."),
    backend: str = typer.Option("local", "--backend", help="local, ray or slurm."),
    root: Path | None = typer.Option(None, "--root", help="Run root (default: the sweep's)."),
    follow: bool = typer.Option(False, "--follow", help="Stay attached until all chains end."),
    jobs: int | None = typer.Option(None, "--jobs", min=1, help="local: chains at once."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="ray: cluster address (default: start a local Ray)."
    ),
    data_root: str | None = typer.Option(None, "--data-root", help="Root of local datasets."),
) -> None:
    """Submit the sweep again: every unfinished chain that nobody runs is dispatched (failed,
    cancelled, partial and new ones); finished tasks are kept and the chains resume."""
    submit(
        sweep_file,
        backend=backend,
        root=root,
        follow=follow,
        jobs=jobs,
        ray_address=ray_address,
        data_root=data_root,
    )
