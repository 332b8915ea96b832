"""Workers: run one chain (the single train/eval loop), checkpoints and durable records."""

from clipcl.workers.chain import ChainProgress, ChainResult, load_result, run_chain
from clipcl.workers.spec import ChainSpec, EvalConfig, TrainConfig

__all__ = [
    "ChainProgress",
    "ChainResult",
    "ChainSpec",
    "EvalConfig",
    "TrainConfig",
    "load_result",
    "run_chain",
]
