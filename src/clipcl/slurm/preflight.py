"""Checks before anything is submitted: Slurm is there, the partition exists, the cluster can
satisfy the request (``sbatch --test-only``), and the requeue signal fits in the time limit.
"""

from __future__ import annotations

from typing import Any

from clipcl.errors import did_you_mean
from clipcl.resources import Resources
from clipcl.slurm.commands import (
    Runner,
    SlurmError,
    default_partition,
    default_runner,
    partitions,
    require_slurm,
    test_only,
)
from clipcl.slurm.settings import SlurmSettings, sbatch_flags


def flag_args(flags: dict[str, Any]) -> list[str]:
    """``{'time': 5, 'requeue': True}`` → ``['--time=5', '--requeue']`` (no shell involved)."""
    return [f"--{k}" if v is True else f"--{k}={v}" for k, v in flags.items()]


def preflight(
    settings: SlurmSettings,
    resources: Resources,
    job_name: str,
    source: str = "sweep",
    runner: Runner = default_runner,
) -> str:
    """Raise ``SlurmError`` (naming the sweep file and field) when the request cannot run.

    Returns the partition the jobs go to.
    """
    if runner is default_runner:
        require_slurm()
    limit_s = 60 * int(resources.timeout_min)
    if settings.signal_delay_s >= limit_s:
        raise SlurmError(
            f"{source}: slurm.signal_delay_s={settings.signal_delay_s} must be below the time "
            f"limit (resources.timeout_min={resources.timeout_min} → {limit_s} s): the job is "
            "told to checkpoint and requeue that long before it is killed"
        )
    known = partitions(runner)
    name = settings.partition or default_partition(runner)
    if name is None or name not in known:
        what = f"slurm.partition '{name}'" if settings.partition else "no default partition"
        raise SlurmError(
            f"{source}: {what} does not exist on this cluster"
            f"{did_you_mean(str(name), known) if settings.partition else ''}; partitions: "
            f"{', '.join(sorted(known)) or 'none'}"
        )
    part = known[name]
    where = f"{source}: partition '{name}'"
    if part.max_time_min is not None and resources.timeout_min > part.max_time_min:
        raise SlurmError(
            f"{where} allows at most {part.max_time_min} min; "
            f"resources.timeout_min={resources.timeout_min}"
        )
    if part.max_cpus and resources.cpus > part.max_cpus:
        raise SlurmError(
            f"{where}: its largest node has {part.max_cpus} CPUs; resources.cpus={resources.cpus}"
        )
    if part.max_mem_mb and resources.mem_gb * 1024 > part.max_mem_mb:
        raise SlurmError(
            f"{where}: its largest node has {part.max_mem_mb / 1024:.1f} GiB of memory; "
            f"resources.mem_gb={resources.mem_gb}"
        )
    if resources.gpus > part.max_gpus:
        raise SlurmError(
            f"{where}: its largest node has {part.max_gpus} GPUs; resources.gpus={resources.gpus}"
        )
    flags = sbatch_flags(settings, resources, job_name)
    flags.pop("signal", None)
    try:
        test_only(flag_args(flags), runner)
    except SlurmError as exc:
        raise SlurmError(f"{source}: the cluster refuses the job request: {exc}") from None
    return name
