"""Datasets and benchmarks: the Task/Benchmark contract, the registered benchmarks and the seeded
loaders that stream their batches.

What a benchmark is (``BenchmarkInfo``: protocol, task names, train defaults) comes from
``data.catalog`` without torch; the datasets, loaders and the modules that register the
benchmarks (mini, real, smoke) are imported on first use of anything else.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from clipcl.data.catalog import (
    BenchmarkInfo,
    Protocol,
    benchmark_info,
    benchmark_names,
    check_benchmark_name,
)

if TYPE_CHECKING:
    from clipcl.data.loader import cycle, make_loader
    from clipcl.data.task import (
        Benchmark,
        Task,
        TensorImageDataset,
        get_benchmark,
        register_benchmark,
    )

_LAZY = {
    "cycle": "clipcl.data.loader",
    "make_loader": "clipcl.data.loader",
    "Benchmark": "clipcl.data.task",
    "Task": "clipcl.data.task",
    "TensorImageDataset": "clipcl.data.task",
    "get_benchmark": "clipcl.data.task",
    "register_benchmark": "clipcl.data.task",
}

__all__ = [
    "Benchmark",
    "BenchmarkInfo",
    "Protocol",
    "Task",
    "TensorImageDataset",
    "benchmark_info",
    "benchmark_names",
    "check_benchmark_name",
    "cycle",
    "get_benchmark",
    "make_loader",
    "register_benchmark",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        for registers in ("mini", "real", "smoke"):  # the built-in benchmarks' factories
            import_module(f"clipcl.data.{registers}")
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipcl.data' has no attribute '{name}'")
