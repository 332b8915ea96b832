"""Datasets and benchmarks: the Task/Benchmark contract, the registered benchmarks and the seeded
loaders that stream their batches."""

from clipcl.data import mini as _mini  # noqa: F401  (registers mini-mtil, mini-cil)
from clipcl.data import real as _real  # noqa: F401  (registers mtil, cifar100-b0inc10, ...)
from clipcl.data import smoke as _smoke  # noqa: F401  (registers 'smoke')
from clipcl.data.loader import cycle, make_loader
from clipcl.data.task import (
    Benchmark,
    BenchmarkInfo,
    Protocol,
    Task,
    TensorImageDataset,
    benchmark_info,
    benchmark_names,
    check_benchmark_name,
    get_benchmark,
    register_benchmark,
)

__all__ = [
    "Benchmark",
    "Protocol",
    "Task",
    "TensorImageDataset",
    "benchmark_names",
    "BenchmarkInfo",
    "benchmark_info",
    "check_benchmark_name",
    "cycle",
    "get_benchmark",
    "make_loader",
    "register_benchmark",
]
