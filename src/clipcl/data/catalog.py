"""What is known about each benchmark without its data or torch: protocol, task names, train
defaults (``BenchmarkInfo``), so sweeps are checked and planned without importing torch.

The built-in benchmarks are listed here; their modules register the same facts with
:func:`~clipcl.data.task.register_benchmark`, which refuses a registration that disagrees with
this list (so the two cannot drift apart). Benchmarks registered elsewhere (tests) are added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from clipcl.errors import unknown_name

Protocol = Literal["til", "cil"]

#: Environment variable naming the root of the local datasets (real benchmarks).
DATA_ROOT_ENV = "CLIPCL_DATA_ROOT"


@dataclass(frozen=True)
class BenchmarkInfo:
    """What is known about a benchmark without reading or generating its data."""

    name: str
    protocol: Protocol
    task_names: tuple[str, ...]
    train_defaults: dict[str, Any] = field(default_factory=dict)


_MINI_TRAIN = {"iterations": 100, "batch_size": 32, "lr": 1e-4, "warmup_steps": 10}
_MINI_DOMAINS = ("colored-shapes", "colors", "counts", "digits", "letters", "positions")
_MINI_ORDER_I = (*_MINI_DOMAINS, "shapes", "textures")
_MINI_ORDER_II = ("letters", "colors", "textures", "colored-shapes", "digits", "positions")
MTIL_ORDER_I = (
    *("Aircraft", "Caltech101", "CIFAR100", "DTD", "EuroSAT", "Flowers", "Food", "MNIST"),
    *("OxfordPet", "StanfordCars", "SUN397"),
)
MTIL_ORDER_II = (
    *("StanfordCars", "Food", "MNIST", "OxfordPet", "Flowers", "SUN397", "Aircraft"),
    *("Caltech101", "DTD", "EuroSAT", "CIFAR100"),
)


#: benchmark name → the real datasets it reads (the others are generated in memory).
BENCHMARK_DATASETS: dict[str, tuple[str, ...]] = {
    "mtil": MTIL_ORDER_I,
    "mtil-order2": MTIL_ORDER_II,
    **{f"cifar100-b0inc{i}": ("CIFAR100",) for i in (10, 5, 2)},
    **{f"tinyimagenet-b100inc{i}": ("TinyImageNet",) for i in (5, 10, 20)},
    "imagenet-r-10split": ("ImageNet-R",),
    "domainnet-10split": ("DomainNet200",),
}


#: Every real dataset's name (``clipcl.data.real`` registers exactly these: checked there).
REAL_DATASETS: tuple[str, ...] = (
    *("Aircraft", "CIFAR10", "CIFAR100", "Caltech101", "DTD", "DomainNet", "DomainNet200"),
    *("EuroSAT", "Flowers", "Food", "ImageNet", "ImageNet-R", "MNIST", "OxfordPet", "SUN397"),
    *("StanfordCars", "TinyImageNet"),
    *("ImageNet-A", "ImageNet-Sketch", "ImageNetV2", "ObjectNet"),  # held-out test sets only
)


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def real_dataset_name(name: str) -> str:
    """The registered spelling of a real dataset's name, also from seed 002's (``ImageNetR``
    → ``ImageNet-R``: case, '-', '_' and spaces do not matter); ``ClipclError`` if unknown."""
    by_key = {_squash(n): n for n in REAL_DATASETS}
    if _squash(name) not in by_key:
        raise unknown_name("dataset", name, REAL_DATASETS)
    return by_key[_squash(name)]


def _cil_names(num_classes: int, initial: int, increment: int) -> tuple[str, ...]:
    n_tasks = 1 + -(-(num_classes - initial) // increment)
    return tuple(f"task{k + 1:02d}" for k in range(n_tasks))


def _builtin() -> dict[str, BenchmarkInfo]:
    infos = [
        BenchmarkInfo("mini-mtil", "til", _MINI_ORDER_I, _MINI_TRAIN),
        BenchmarkInfo(
            "mini-mtil-order2", "til", (*_MINI_ORDER_II, "shapes", "counts"), _MINI_TRAIN
        ),
        BenchmarkInfo("mini-cil", "cil", tuple(f"cs-{i + 1}" for i in range(6)), _MINI_TRAIN),
        BenchmarkInfo("mtil", "til", MTIL_ORDER_I),
        BenchmarkInfo("mtil-order2", "til", MTIL_ORDER_II),
        *(BenchmarkInfo(f"cifar100-b0inc{i}", "cil", _cil_names(100, i, i)) for i in (10, 5, 2)),
        *(
            BenchmarkInfo(f"tinyimagenet-b100inc{i}", "cil", _cil_names(200, 100, i))
            for i in (5, 10, 20)
        ),
        BenchmarkInfo("imagenet-r-10split", "cil", _cil_names(200, 20, 20)),
        BenchmarkInfo("domainnet-10split", "cil", _cil_names(200, 20, 20)),
        BenchmarkInfo(
            "smoke",
            "til",
            ("colors", "shapes", "stripes"),
            {"iterations": 60, "batch_size": 32, "lr": 1e-3, "warmup_steps": 10},
        ),
    ]
    return {info.name: info for info in infos}


_INFO: dict[str, BenchmarkInfo] = _builtin()


def declare_benchmark(info: BenchmarkInfo) -> None:
    """Add ``info`` (a registration); a built-in benchmark must match its entry here."""
    known = _INFO.get(info.name)
    if known is not None and known != info:
        raise RuntimeError(f"benchmark '{info.name}' does not match clipcl.data.catalog: {known}")
    _INFO[info.name] = info


def benchmark_names() -> list[str]:
    return sorted(_INFO)


def check_benchmark_name(name: str) -> None:
    if name not in _INFO:
        raise unknown_name("benchmark", name, _INFO)


def benchmark_info(name: str) -> BenchmarkInfo:
    check_benchmark_name(name)
    return _INFO[name]
