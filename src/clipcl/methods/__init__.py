"""Continual-learning methods: the Method contract, the registry, one file per method.

The catalog (configs, ``trains``, train defaults) and the registry functions never import
torch; ``Method``, ``StepOutputs``, ``TaskContext`` and each method's module are imported on
first use.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from clipcl.methods.catalog import MethodInfo
from clipcl.methods.configs import MethodConfig
from clipcl.methods.registry import (
    create_method,
    method_class,
    method_config,
    method_info,
    method_names,
    register_method,
)

if TYPE_CHECKING:
    from clipcl.methods.base import Method, StepOutputs, TaskContext

_LAZY = {"Method", "StepOutputs", "TaskContext"}

__all__ = [
    "Method",
    "MethodConfig",
    "MethodInfo",
    "StepOutputs",
    "TaskContext",
    "create_method",
    "method_class",
    "method_config",
    "method_info",
    "method_names",
    "register_method",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module("clipcl.methods.base"), name)
    raise AttributeError(f"module 'clipcl.methods' has no attribute '{name}'")
