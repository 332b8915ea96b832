"""Orchestration: run many chains on a backend (local subprocesses, Ray) and follow them.

``backend`` holds the contract (jobs, handles, states), ``local`` and ``ray_backend`` the
backends, ``coordinator`` the submit-and-poll loop. Importing this package never imports ray.
"""

from clipcl.orchestrator.backend import (
    JOB_STATES,
    TERMINAL_STATES,
    Backend,
    ChainCancelled,
    ChainFailed,
    ChainJob,
    JobHandle,
    JobState,
    Resources,
    prepare_job,
)
from clipcl.orchestrator.coordinator import run_jobs
from clipcl.orchestrator.local import LocalBackend
from clipcl.orchestrator.ray_backend import RayBackend

__all__ = [
    "JOB_STATES",
    "TERMINAL_STATES",
    "Backend",
    "ChainCancelled",
    "ChainFailed",
    "ChainJob",
    "JobHandle",
    "JobState",
    "LocalBackend",
    "RayBackend",
    "Resources",
    "prepare_job",
    "run_jobs",
]
