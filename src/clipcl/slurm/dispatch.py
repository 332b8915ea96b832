"""Sweep entries to Slurm without a plan: :func:`submit_sweep` and ``clipcl sbatch``'s scripts.

``submit_sweep`` is the programmatic form of ``clipcl submit --backend slurm`` (which goes
through the plan and :class:`~clipcl.slurm.backend.SlurmBackend` like every backend): it checks
the request before anything is submitted, writes each chain's ``spec.json``, submits, and
records the job ids in the store. Chains with a live Slurm job are never submitted twice.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipcl.orchestrator.backend import prepare_job
from clipcl.orchestrator.sweep_runner import submit_and_record
from clipcl.results.records import RunDir
from clipcl.results.store import ResultsStore
from clipcl.slurm.backend import SlurmBackend
from clipcl.slurm.commands import Runner, default_runner
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
    """Submit the unfinished ``entries`` that have no live job through a
    :class:`~clipcl.slurm.backend.SlurmBackend`; record the jobs.

    Raises:
        ClipclError: The preflight failed (nothing submitted) or sbatch refused a submission
        (what was submitted before it is recorded).
    """
    backend = SlurmBackend(root, sweep, source, data_root, runner, max_array)
    partition = backend.preflight()
    live = live_slurm_chains(store, root, runner)
    jobs = [
        prepare_job(e.spec, RunDir.of(root, e.chain_id).path, num_tasks=e.spec_tasks)
        for e in entries
        if e.chain_id not in live and RunDir.of(root, e.chain_id).tasks_done() < e.spec_tasks
    ]
    handles = submit_and_record(backend, jobs, store)
    return SlurmSubmission([r for h in handles for r in h.records()], sorted(live), partition)


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
    todo = [e for e in entries if RunDir.of(root, e.chain_id).tasks_done() < e.spec_tasks]
    for e in todo:
        prepare_job(e.spec, RunDir.of(root, e.chain_id).path, num_tasks=e.spec_tasks)
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
