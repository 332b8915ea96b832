"""Standalone ``sbatch`` array scripts for users who submit with plain ``sbatch``.

Element ``i`` of the array runs the chain worker for chain ``i`` of the script's list; results
land in the run directories of the sweep's root, where ``clipcl results`` / ``status`` ingest
them. Near the time limit Slurm sends USR2 to the batch shell, which passes it on to the worker
(it finishes its step and writes a mid-task snapshot) and requeues the element; the requeued
element resumes at that step. Every value that comes from the
sweep file is shell-quoted (``#SBATCH`` values too: sbatch unquotes them); the sweep's
``slurm.setup`` lines are shell commands by design and are copied as they are.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clipcl.resources import Resources
from clipcl.slurm.settings import SlurmSettings, sbatch_flags


@dataclass(frozen=True)
class ScriptChain:
    """One array element: the chain id and a comment describing it."""

    chain_id: str
    label: str


def _flag_line(key: str, value: Any) -> str:
    if value is True:
        return f"#SBATCH --{key}"
    return f"#SBATCH --{key}={shlex.quote(str(value))}"


def _comment(text: str) -> str:
    return " ".join(str(text).split())  # one line, whatever the label holds


def render_sbatch(
    *,
    sweep_name: str,
    source: str,
    root: str,
    chains: Sequence[ScriptChain],
    settings: SlurmSettings,
    resources: Resources,
    python: str,
    data_root: str | None = None,
    part: tuple[int, int] = (1, 1),
    version: str = "",
) -> str:
    """The text of one array script for ``chains`` (paths must be absolute)."""
    flags = sbatch_flags(settings, resources, f"clipcl-{sweep_name}")
    n = len(chains)
    flags["array"] = f"0-{n - 1}%{min(n, settings.array_parallelism)}"
    flags["output"] = f"{root}/slurm/sbatch/%A_%a.out"
    flags["error"] = f"{root}/slurm/sbatch/%A_%a.err"
    flags["open-mode"] = "append"
    head = [
        "#!/bin/bash",
        f"# clipcl sweep {sweep_name}: {n} chains, one array element per chain"
        + (f" (part {part[0]} of {part[1]})" if part[1] > 1 else "")
        + ".",
        f"# Written by clipcl {version} from {_comment(source)}. Submit with: sbatch THIS_FILE",
        "# Results land under the run root; read them with: clipcl results " + shlex.quote(source),
    ]
    lines = head + [_flag_line(k, v) for k, v in flags.items()]
    if settings.setup:
        lines += ["", "# environment set-up (slurm.setup in the sweep file)", *settings.setup]
    worker = [
        shlex.quote(python),
        "-m",
        "clipcl.workers",
        "--run-dir",
        '"$ROOT/chains/$CHAIN"',
        "--threads",
        '"${SLURM_CPUS_PER_TASK:-1}"',
    ]
    if data_root is not None:
        worker += ["--data-root", shlex.quote(data_root)]
    lines += [
        "",
        "set -uo pipefail",
        f"ROOT={shlex.quote(root)}",
        "CHAINS=(",
        *[f"  {c.chain_id}  # {_comment(c.label)}" for c in chains],
        ")",
        'CHAIN="${CHAINS[$SLURM_ARRAY_TASK_ID]}"',
        "",
        "# USR2 comes signal_delay_s before the time limit (Slurm may send it up to a minute",
        "# early) or on preemption: at signal_delay_s before the end (at once for preemption)",
        "# the worker is told to stop; it finishes its step, writes a snapshot and exits, then",
        "# this element is requeued and resumes at that step (requeued anyway after DELAY/2 s).",
        f"DELAY={int(settings.signal_delay_s)}",
        "requeue() {",
        "  local end left waited=0",
        '  end=$(date -d "$(squeue -h -j "$SLURM_JOB_ID" -o %e)" +%s 2>/dev/null || echo 0)',
        "  left=$(( end - $(date +%s) ))",
        "  if (( left - DELAY > 1 && left <= DELAY + 90 )); then sleep $(( left - DELAY )); fi",
        '  echo "stopping the worker (it snapshots its step), then requeueing job $SLURM_JOB_ID"',
        '  kill -USR2 "$WORKER" 2>/dev/null',
        '  while kill -0 "$WORKER" 2>/dev/null && (( waited < DELAY / 2 )); do',
        "    sleep 1; waited=$(( waited + 1 ))",
        "  done",
        '  scontrol requeue "$SLURM_JOB_ID"',
        "}",
        "trap requeue USR2",
        "",
        'echo "chain $CHAIN on $(hostname), job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        " ".join(worker) + " &",
        "WORKER=$!",
        'wait "$WORKER"  # returns early when USR2 arrives; the requeue then stops the job',
        "STATUS=$?",
        'while kill -0 "$WORKER" 2>/dev/null; do wait "$WORKER"; STATUS=$?; done',
        'exit "$STATUS"',
        "",
    ]
    return "\n".join(lines)
