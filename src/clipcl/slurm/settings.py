"""The sweep file's ``slurm:`` section: where and how chains run on a Slurm cluster.

Pure configuration (no Slurm commands, no submitit): the sweep schema embeds
:class:`SlurmSettings`, and :func:`submitit_parameters` / :func:`sbatch_flags` turn it plus the
sweep's ``resources`` into submitit's parameters and ``#SBATCH`` flags. Every string that ends
up in a job script is checked here for control characters (a newline in a ``#SBATCH`` value would
start a new script line), and flags the backend manages itself are refused.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from clipcl.resources import Resources
from clipcl.validation import StrictNumbers

#: ``#SBATCH`` options clipcl sets itself; the message says which field to use instead.
MANAGED_FLAGS: dict[str, str] = {
    "array": "resources/slurm.array_parallelism (clipcl builds the arrays)",
    "output": "nothing (logs go to ROOT/slurm/logs)",
    "error": "nothing (logs go to ROOT/slurm/logs)",
    "signal": "slurm.signal_delay_s",
    "dependency": "slurm.chain_mode (clipcl chains the per-task jobs)",
    "job-name": "slurm.job_name",
    "time": "resources.timeout_min",
    "mem": "resources.mem_gb",
    "cpus-per-task": "resources.cpus",
    "gpus-per-node": "resources.gpus",
    "partition": "slurm.partition",
    "account": "slurm.account",
    "qos": "slurm.qos",
    "constraint": "slurm.constraint",
    "open-mode": "nothing (clipcl appends to logs)",
}
_FLAG_RE = re.compile(r"^[a-z][a-z0-9-]*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _no_control(value: str, what: str) -> str:
    if _CONTROL_RE.search(value):
        raise ValueError(
            f"{what} contains a control character (newline, tab, ...): {value!r}; "
            "job scripts take one line per value"
        )
    return value


class SlurmSettings(StrictNumbers):
    """Cluster-specific settings of a sweep (``slurm:`` in the sweep file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chain_mode: Literal["whole", "per-task"] = Field(
        "whole",
        description="whole: one job runs a chain (requeued on time-out/preemption); "
        "per-task: one job per task, task k+1 after task k succeeded.",
    )
    partition: str | None = Field(None, description="--partition")
    account: str | None = Field(None, description="--account")
    qos: str | None = Field(None, description="--qos")
    constraint: str | None = Field(None, description="--constraint (node features)")
    setup: list[str] = Field(
        default_factory=list,
        description="Shell lines run before the worker (module load, conda/venv activation).",
    )
    additional_parameters: dict[str, str | int | bool] = Field(
        default_factory=dict, description="Other #SBATCH options, e.g. {exclude: node3}."
    )
    array_parallelism: int = Field(16, ge=1, description="Array throttle: %N chains at once.")
    signal_delay_s: int = Field(
        90, ge=10, description="USR2 this long before the time limit: checkpoint and requeue."
    )
    max_requeues: int = Field(
        10, ge=0, description="Requeues after time-outs before a chain is failed."
    )
    job_name: str | None = Field(None, description="Job name (default clipcl-<sweep name>).")
    check_root_s: int = Field(
        120,
        ge=0,
        description="Before submitting, a probe job on each node checks that it shares the run "
        "root; probes not run within this many seconds are skipped (0: no check).",
    )
    python: str | None = Field(
        None, description="Python on the compute nodes (default: the submitting interpreter)."
    )

    @field_validator("partition", "account", "qos", "constraint", "job_name", "python")
    @classmethod
    def _one_line(cls, v: str | None) -> str | None:
        if v is not None:
            _no_control(v, "value")
            if not v.strip():
                raise ValueError("must not be empty")
        return v

    @field_validator("setup")
    @classmethod
    def _setup(cls, v: list[str]) -> list[str]:
        for i, line in enumerate(v):
            _no_control(line, f"setup line {i}")
        return v

    @field_validator("additional_parameters")
    @classmethod
    def _additional(cls, v: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
        for key, value in v.items():
            flag = key.replace("_", "-")
            if not _FLAG_RE.match(flag):
                raise ValueError(f"'{key}' is not an sbatch long option name (e.g. 'exclude')")
            if flag in MANAGED_FLAGS:
                raise ValueError(f"'{key}' is set by clipcl; use {MANAGED_FLAGS[flag]}")
            if value is False:
                raise ValueError(f"'{key}': false is not an sbatch value (leave the key out)")
            _no_control(str(value), f"additional_parameters.{key}")
        return v


def _mem(mem_gb: float) -> str:
    return f"{int(mem_gb)}G" if float(mem_gb).is_integer() else f"{round(mem_gb * 1024)}M"


def submitit_parameters(
    settings: SlurmSettings, resources: Resources, job_name: str
) -> dict[str, Any]:
    """Keyword arguments for ``submitit.AutoExecutor.update_parameters``.

    ``resources`` is the sweep's (gpus, cpus, mem_gb, timeout_min). The result is plain data (it
    is compared with a golden file in the tests).
    """
    params: dict[str, Any] = {
        "name": settings.job_name or job_name,
        "timeout_min": int(resources.timeout_min),
        "cpus_per_task": int(resources.cpus),
        "mem_gb": float(resources.mem_gb),
        "nodes": 1,
        "tasks_per_node": 1,
        "slurm_array_parallelism": settings.array_parallelism,
        "slurm_signal_delay_s": settings.signal_delay_s,
        "slurm_additional_parameters": {
            "requeue": True,
            **{k.replace("_", "-"): v for k, v in settings.additional_parameters.items()},
        },
    }
    if resources.gpus:
        params["gpus_per_node"] = int(resources.gpus)
    for field in ("partition", "account", "qos", "constraint"):
        value = getattr(settings, field)
        if value is not None:
            params[f"slurm_{field}"] = value
    if settings.setup:
        params["slurm_setup"] = list(settings.setup)
    return params


def sbatch_flags(settings: SlurmSettings, resources: Resources, job_name: str) -> dict[str, Any]:
    """The ``#SBATCH`` options (long name → value; ``True`` for a bare flag) of one chain job."""
    flags: dict[str, Any] = {
        "job-name": settings.job_name or job_name,
        "time": int(resources.timeout_min),
        "nodes": 1,
        "ntasks-per-node": 1,
        "cpus-per-task": int(resources.cpus),
        "mem": _mem(float(resources.mem_gb)),
        "requeue": True,
        "signal": f"B:USR2@{settings.signal_delay_s}",
    }
    if resources.gpus:
        flags["gpus-per-node"] = int(resources.gpus)
    for field in ("partition", "account", "qos", "constraint"):
        value = getattr(settings, field)
        if value is not None:
            flags[field] = value
    for key, value in settings.additional_parameters.items():
        flags[key.replace("_", "-")] = value
    return flags
