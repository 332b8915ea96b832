"""The data contract: a ``Task`` (classes, prompts, splits) and a ``Benchmark`` (ordered tasks).

Datasets yield ``(image, label)`` with ``image`` a uint8 tensor (3, H, W) and ``label`` the index
into the task's own ``class_names``. Resizing and normalisation happen on the model's device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from clipcl.data.catalog import (  # noqa: F401  (re-exported)
    BenchmarkInfo,
    Protocol,
    benchmark_info,
    benchmark_names,
    check_benchmark_name,
    declare_benchmark,
)


class TensorImageDataset(Dataset):
    """In-memory images (N, 3, H, W) uint8 with integer labels (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError("labels must have shape (N,)")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


@dataclass(frozen=True)
class Task:
    """One dataset (TIL) or one group of classes (CIL) of a benchmark.

    Attributes:
        name: Unique name within the benchmark (also the key for per-task settings).
        class_names: Names of this task's classes; labels index into them.
        templates: Prompt templates with one ``{}``; ``templates[0]`` is the training template,
            the whole tuple is the evaluation ensemble.
        train: Training split.
        test: Test split.
    """

    name: str
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    train: Dataset
    test: Dataset

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Benchmark:
    """An ordered sequence of tasks and the protocol used to evaluate it.

    ``til``: every test image is classified among its own task's classes (MTIL).
    ``cil``: after task t, test images of all seen tasks are classified among all seen classes.
    """

    name: str
    protocol: Protocol
    tasks: tuple[Task, ...]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


BenchmarkFactory = Callable[..., Benchmark]
_REGISTRY: dict[str, BenchmarkFactory] = {}
_CACHE: dict[tuple[str, str | None], Benchmark] = {}


def register_benchmark(
    name: str,
    protocol: Protocol,
    task_names: list[str] | tuple[str, ...],
    train_defaults: dict[str, Any] | None = None,
) -> Callable[[BenchmarkFactory], BenchmarkFactory]:
    """Decorator: register a benchmark factory under ``name``.

    ``task_names`` (in training order) let specs be checked and sweeps planned without data.
    ``train_defaults`` are ``TrainConfig`` values this benchmark's protocol prescribes (e.g. the
    small embedded benchmarks train for fewer steps); a sweep or ``--set`` still overrides them.
    """

    def deco(fn: BenchmarkFactory) -> BenchmarkFactory:
        _REGISTRY[name] = fn
        info = BenchmarkInfo(name, protocol, tuple(task_names), dict(train_defaults or {}))
        declare_benchmark(info)
        return fn

    return deco


def get_benchmark(name: str, data_root: str | None = None) -> Benchmark:
    """Build the benchmark registered as ``name`` (datasets are read or generated here)."""
    check_benchmark_name(name)
    if name not in _REGISTRY:  # a built-in benchmark whose module is not imported yet
        import clipcl.data.mini  # noqa: F401
        import clipcl.data.real  # noqa: F401
        import clipcl.data.smoke  # noqa: F401
    key = (name, data_root)
    if key in _CACHE:  # generated/loaded data is immutable: build it once per process
        return _CACHE[key]
    bench = _REGISTRY[name](data_root=data_root)
    info = benchmark_info(name)
    if tuple(bench.task_names) != info.task_names or bench.protocol != info.protocol:
        raise RuntimeError(f"benchmark '{name}' does not match its registration")
    _CACHE[key] = bench
    return bench
