"""``clipcl submit --backend slurm`` and ``clipcl sbatch``: from sweep entries to Slurm jobs.

Submission is fire-and-forget: it checks the request (:func:`~clipcl.slurm.preflight.preflight`)
before anything is submitted, writes each chain's ``spec.json``, submits, and records the job
ids in the store. Chains with a live Slurm job (queued or running) are never submitted twice.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipcl.orchestrator.backend import prepare_job
from clipcl.orchestrator.sweep_runner import finished_tasks
from clipcl.results.store import ResultsStore
from clipcl.slurm import commands
from clipcl.slurm.commands import Runner, default_runner
from clipcl.slurm.preflight import preflight
from clipcl.slurm.script import ScriptChain, render_sbatch
from clipcl.slurm.track import refresh


@dataclass
class SlurmSubmission:
    """What a Slurm submission did."""

    submitted: list[dict[str, Any]]  # job records
    live: list[str]  # chains skipped: a job of theirs is still queued or running
    partition: str


def live_slurm_chains(store: ResultsStore, root: Path, runner: Runner = default_runner) -> set[str]:
    """Chains with a queued or running Slurm job, after asking Slurm."""
    states = refresh(store, root, runner=runner)
    return {c for c, s in states.items() if s in {"queued", "running"}}


def submit_sweep(
    sweep: Any,
    entries: Sequence[Any],
    root: Path,
    store: ResultsStore,
    *,
    source: str,
    data_root: str | None = None,
    max_array: int | None = None,
    runner: Runner = default_runner,
) -> SlurmSubmission:
    """Submit the unfinished ``entries`` that have no live job; record the jobs.

    Raises:
        ClipclError: The preflight failed (nothing submitted) or sbatch refused a submission
        (what was submitted before it is recorded).
    """
    from clipcl.slurm.submit import SlurmChain, submit_chains

    name = f"clipcl-{sweep.name}"
    partition = preflight(sweep.slurm, sweep.resources, name, source, runner)
    live = live_slurm_chains(store, root, runner)
    todo = []
    for e in entries:
        run_dir = root / "chains" / e.chain_id
        done = finished_tasks(run_dir)
        if done < e.spec_tasks and e.chain_id not in live:
            prepare_job(e.spec, run_dir)
            todo.append(SlurmChain(e.chain_id, run_dir.resolve(), e.spec_tasks, done))
    records: list[dict[str, Any]] = []
    if todo:
        limit = max_array or commands.max_array_size(runner)
        try:
            records = submit_chains(
                todo,
                root,
                sweep.slurm,
                sweep.resources,
                name,
                data_root=data_root,
                max_array=limit,
            )
        except commands.SlurmError as exc:
            records = getattr(exc, "submitted", [])
            _record(store, records)
            raise
        _record(store, records)
    return SlurmSubmission(records, sorted(live), partition)


def _record(store: ResultsStore, records: list[dict[str, Any]]) -> None:
    if not records:
        return
    store.record_jobs(records)
    first: dict[str, str] = {}
    for r in records:
        first.setdefault(r["chain_id"], r["job_id"])
    for chain_id, job_id in first.items():
        store.set_state(chain_id, "queued", backend="slurm", job_id=job_id)


def write_sbatch_scripts(
    sweep: Any,
    entries: Sequence[Any],
    root: Path,
    out: Path,
    *,
    source: str,
    data_root: str | None = None,
    max_array: int = 1001,
    version: str = "",
) -> list[tuple[Path, int]]:
    """Write spec.json of every unfinished chain and the array script(s) that run them.

    Returns (script path, number of chains) per script; more than one when the chains exceed
    ``max_array`` (``out`` then gets ``.partK`` before its suffix).
    """
    root = root.resolve()
    todo = [e for e in entries if finished_tasks(root / "chains" / e.chain_id) < e.spec_tasks]
    for e in todo:
        prepare_job(e.spec, root / "chains" / e.chain_id)
    parts = [todo[i : i + max_array] for i in range(0, len(todo), max_array)]
    written: list[tuple[Path, int]] = []
    for k, part in enumerate(parts, start=1):
        path = out if len(parts) == 1 else out.with_name(f"{out.stem}.part{k}{out.suffix}")
        text = render_sbatch(
            sweep_name=sweep.name,
            source=source,
            root=str(root),
            chains=[
                ScriptChain(
                    e.chain_id, f"{e.method} on {e.benchmark}, seed {e.seed}, {e.settings_label}"
                )
                for e in part
            ],
            settings=sweep.slurm,
            resources=sweep.resources,
            python=sweep.slurm.python or sys.executable,
            data_root=data_root,
            part=(k, len(parts)),
            version=version,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append((path, len(part)))
    (root / "slurm" / "sbatch").mkdir(parents=True, exist_ok=True)
    return written
