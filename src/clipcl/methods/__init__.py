"""Continual-learning methods: the Method contract, the registry, one file per method."""

from clipcl.methods import finetune as _finetune  # noqa: F401  (registers)
from clipcl.methods import zeroshot as _zeroshot  # noqa: F401  (registers)
from clipcl.methods.base import Method, MethodConfig, StepOutputs, TaskContext
from clipcl.methods.registry import (
    create_method,
    method_class,
    method_config,
    method_names,
    register_method,
)

__all__ = [
    "Method",
    "MethodConfig",
    "StepOutputs",
    "TaskContext",
    "create_method",
    "method_class",
    "method_config",
    "method_names",
    "register_method",
]
