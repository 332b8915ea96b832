"""Continual-learning methods: the Method contract, the registry, one file per method."""

from clipcl.methods import dmnsp as _dmnsp  # noqa: F401  (registers)
from clipcl.methods import finetune as _finetune  # noqa: F401  (registers)
from clipcl.methods import gpm as _gpm  # noqa: F401  (registers)
from clipcl.methods import icarl as _icarl  # noqa: F401  (registers)
from clipcl.methods import joint as _joint  # noqa: F401  (registers)
from clipcl.methods import lora as _lora  # noqa: F401  (registers)
from clipcl.methods import nsp2 as _nsp2  # noqa: F401  (registers)
from clipcl.methods import pgp as _pgp  # noqa: F401  (registers)
from clipcl.methods import wiseft as _wiseft  # noqa: F401  (registers wise-ft)
from clipcl.methods import zeroshot as _zeroshot  # noqa: F401  (registers)
from clipcl.methods import zscl as _zscl  # noqa: F401  (registers zscl, lwf, l2, we)
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
