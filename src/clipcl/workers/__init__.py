"""Workers: run one chain (the single train/eval loop), checkpoints and durable records.

``ChainSpec`` and its configs (``workers.spec``) never import torch; the loop (``workers.chain``)
is imported on first use of ``run_chain`` and the other names below.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from clipcl.workers.spec import ChainSpec, EvalConfig, TrainConfig

if TYPE_CHECKING:
    from clipcl.workers.chain import ChainProgress, ChainResult, load_result, run_chain

_LAZY = {"ChainProgress", "ChainResult", "load_result", "run_chain"}

__all__ = [
    "ChainProgress",
    "ChainResult",
    "ChainSpec",
    "EvalConfig",
    "TrainConfig",
    "load_result",
    "run_chain",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module("clipcl.workers.chain"), name)
    raise AttributeError(f"module 'clipcl.workers' has no attribute '{name}'")
