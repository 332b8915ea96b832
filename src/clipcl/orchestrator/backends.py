"""The one place where a backend name becomes a backend: :func:`make_backend`.

Every backend class is named here by its import path (loaded lazily, so choosing ``local`` never
imports ray or submitit) and built from one :class:`BackendOptions`. A backend class provides:

* ``name`` and ``outlives_submitter`` (its jobs run on without the submitting process);
* ``from_options(options)``: the backend for a submission;
* ``refresh(store, root, chain_ids)``: ask the backend about chains the store says are queued
  or running and record what it says (``{}`` when there is nobody to ask);
* ``cancel_chains(store, root, chain_ids)``: cancel their jobs; how many were asked.

No other module compares a backend name with a string.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipcl.errors import ClipclError, did_you_mean

if TYPE_CHECKING:
    from clipcl.orchestrator.backend import Backend
    from clipcl.results.store import ResultsStore

_BACKENDS: dict[str, str] = {
    "local": "clipcl.orchestrator.local:LocalBackend",
    "ray": "clipcl.orchestrator.ray_backend:RayBackend",
    "slurm": "clipcl.slurm.backend:SlurmBackend",
}
BACKEND_NAMES: tuple[str, ...] = tuple(_BACKENDS)


@dataclass(frozen=True)
class BackendOptions:
    """What the command line says about where a submission runs.

    Attributes:
        jobs: local: chains at once (``None``: one per visible GPU, else 1).
        ray_address: ray: the cluster to join (``None``: a local Ray for the submission).
        root: The run root.
        sweep: The sweep (its ``slurm`` and ``resources`` sections).
        source: The sweep file, named in errors.
        data_root: The benchmarks' data root.
    """

    jobs: int | None = None
    ray_address: str | None = None
    root: Path | None = None
    sweep: Any = None
    source: str = "sweep"
    data_root: str | None = None


def check_backend_name(name: str) -> str:
    """``name`` if it is a backend.

    Raises:
        ClipclError: It is not.
    """
    if name not in _BACKENDS:
        raise ClipclError(
            f"--backend '{name}'{did_you_mean(name, BACKEND_NAMES)}; allowed: "
            f"{', '.join(BACKEND_NAMES)}"
        )
    return name


def backend_class(name: str) -> Any:
    """The class of backend ``name`` (imported now).

    Raises:
        ClipclError: No backend has that name.
    """
    module, _, attr = _BACKENDS[check_backend_name(name)].partition(":")
    return getattr(importlib.import_module(module), attr)


def make_backend(name: str, options: BackendOptions) -> Backend:
    """The backend ``name`` for a submission described by ``options``."""
    backend: Backend = backend_class(name).from_options(options)
    return backend


def stored_backends(store: ResultsStore, chain_ids: Iterable[str] | None = None) -> list[str]:
    """The backends the store names for chains (all, or ``chain_ids``), sorted."""
    wanted = set(chain_ids) if chain_ids is not None else None
    names = {
        r.backend
        for r in store.chain_progress()
        if r.backend in _BACKENDS and (wanted is None or r.chain_id in wanted)
    }
    return sorted(names)


def refresh_store(
    store: ResultsStore, root: Path, chain_ids: Iterable[str] | None = None
) -> dict[str, str]:
    """Ask every backend the store names about its active chains; chain id → state."""
    ids = list(chain_ids) if chain_ids is not None else None
    states: dict[str, str] = {}
    for name in stored_backends(store, ids):
        states.update(backend_class(name).refresh(store, root, ids))
    return states


def cancel_backend_jobs(store: ResultsStore, root: Path, chain_ids: Iterable[str]) -> int:
    """Cancel the jobs of ``chain_ids`` with every backend whose jobs outlive a submitter."""
    ids = list(chain_ids)
    asked = 0
    for name in stored_backends(store, ids):
        cls = backend_class(name)
        if cls.outlives_submitter:
            asked += int(cls.cancel_chains(store, root, ids))
    return asked
