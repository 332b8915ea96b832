"""clipcl: continual learning of CLIP models, from one chain to sweeps on Ray and Slurm."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipcl.results import load_results

__version__ = "0.1.0"
__all__ = ["__version__", "load_results"]


def __getattr__(name: str) -> Any:
    """Import heavy public names on first access (``import clipcl`` stays fast)."""
    if name == "load_results":
        from clipcl.results import load_results

        return load_results
    raise AttributeError(f"module 'clipcl' has no attribute {name!r}")
