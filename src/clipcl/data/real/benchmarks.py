"""Benchmarks built from real datasets under a data root: MTIL (Order I and II) and the
class-incremental splits of CIFAR-100, TinyImageNet, ImageNet-R and DomainNet.

Every benchmark knows which datasets it needs (:data:`BENCHMARK_DATASETS`), so the data can be
checked (:func:`check_benchmark_data`) before anything runs. The data root is the ``--data-root``
flag, the sweep's ``data_root``, or ``$CLIPCL_DATA_ROOT``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from clipcl.data.catalog import BENCHMARK_DATASETS, DATA_ROOT_ENV, MTIL_ORDER_I, MTIL_ORDER_II
from clipcl.data.real.base import Check, SubsetDataset, dataset_labels, get_dataset
from clipcl.data.real.cache import load_splits
from clipcl.data.task import Benchmark, Task, register_benchmark
from clipcl.errors import ClipclError

#: The CIL papers' prompt (METHODS.md §2), for training and evaluation.
CIL_TEMPLATES = ("a bad photo of a {}.",)


def resolve_data_root(data_root: str | Path | None, benchmark: str) -> Path:
    """The data root to read ``benchmark`` from; ``ClipclError`` when none is given."""
    root = data_root or os.environ.get(DATA_ROOT_ENV)
    if not root:
        raise ClipclError(
            f"benchmark '{benchmark}' reads datasets from disk: pass --data-root DIR (or set "
            f"data_root in the sweep file, or ${DATA_ROOT_ENV}); `clipcl data check --root DIR "
            f"--benchmark {benchmark}` lists what it needs"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ClipclError(f"data root not found: {path} (benchmark '{benchmark}')")
    return path


def check_benchmark_data(benchmark: str, data_root: str | Path) -> list[Check]:
    """A :class:`Check` per dataset ``benchmark`` needs (none for the embedded benchmarks)."""
    return [get_dataset(name).check(data_root) for name in BENCHMARK_DATASETS.get(benchmark, ())]


def _require(benchmark: str, root: Path) -> None:
    bad = [c for c in check_benchmark_data(benchmark, root) if c.status != "present"]
    if bad:
        what = "; ".join(
            f"{c.dataset} {c.status}: " + ", ".join(c.missing[:3] or c.problems[:1]) for c in bad
        )
        raise ClipclError(
            f"benchmark '{benchmark}' cannot read its data under {root}: {what} "
            f"(details: clipcl data check --root {root} --benchmark {benchmark})"
        )


def _reads(name: str, datasets: tuple[str, ...]) -> None:
    """Check that the catalog lists the datasets benchmark ``name`` is built from."""
    if BENCHMARK_DATASETS.get(name) != datasets:
        raise RuntimeError(f"benchmark '{name}' reads {datasets}: not what the catalog lists")


def _mtil(name: str, order: Sequence[str]) -> Callable[..., Benchmark]:
    _reads(name, tuple(order))

    @register_benchmark(name, protocol="til", task_names=list(order))
    def build(data_root: str | None = None) -> Benchmark:
        root = resolve_data_root(data_root, name)
        _require(name, root)
        tasks = []
        for ds_name in order:
            ds = get_dataset(ds_name)
            splits = load_splits(ds, root)
            tasks.append(Task(ds_name, splits.class_names, ds.templates, splits.train, splits.test))
        return Benchmark(name=name, protocol="til", tasks=tuple(tasks))

    return build


def class_groups(order: Sequence[int], initial: int, increment: int) -> list[list[int]]:
    """``order`` cut into a first group of ``initial`` classes, then groups of ``increment``."""
    groups = [list(order[:initial])]
    for start in range(initial, len(order), increment):
        groups.append(list(order[start : start + increment]))
    return [g for g in groups if g]


def cil_tasks(
    class_names: Sequence[str],
    train,
    test,
    order: Sequence[int],
    initial: int,
    increment: int,
    templates: tuple[str, ...] = CIL_TEMPLATES,
) -> tuple[Task, ...]:
    """Class-incremental tasks: each a group of classes (in ``order``) with its images; labels
    index into the task's own class names."""
    train_labels, test_labels = dataset_labels(train), dataset_labels(test)
    tasks = []
    for k, group in enumerate(class_groups(order, initial, increment)):
        local = {c: i for i, c in enumerate(group)}
        tasks.append(
            Task(
                f"task{k + 1:02d}",
                tuple(class_names[c] for c in group),
                templates,
                SubsetDataset(train, [i for i, y in enumerate(train_labels) if y in local], local),
                SubsetDataset(test, [i for i, y in enumerate(test_labels) if y in local], local),
            )
        )
    return tuple(tasks)


def _cil(
    name: str,
    dataset: str,
    num_classes: int,
    initial: int,
    increment: int,
    order: Callable[[], list[int]],
    select: Callable | None = None,
) -> None:
    _reads(name, (dataset,))
    n_tasks = len(class_groups(list(range(num_classes)), initial, increment))
    names = [f"task{k + 1:02d}" for k in range(n_tasks)]

    @register_benchmark(name, protocol="cil", task_names=names)
    def build(data_root: str | None = None) -> Benchmark:
        root = resolve_data_root(data_root, name)
        _require(name, root)
        splits = load_splits(get_dataset(dataset), root)
        if select is not None:  # e.g. DomainNet's 200-class subset
            splits = select(splits)
        if len(splits.class_names) != num_classes:
            raise ClipclError(
                f"benchmark '{name}': {dataset} under {root} has {len(splits.class_names)} "
                f"classes, expected {num_classes}"
            )
        tasks = cil_tasks(
            splits.class_names, splits.train, splits.test, order(), initial, increment
        )
        return Benchmark(name=name, protocol="cil", tasks=tasks)


_mtil("mtil", MTIL_ORDER_I)
_mtil("mtil-order2", MTIL_ORDER_II)


def _register_cil() -> None:
    from clipcl.data.real import domainnet, imagenet_r, orders, tinyimagenet

    for inc in (10, 5, 2):  # B0: every task has `inc` classes
        _cil(f"cifar100-b0inc{inc}", "CIFAR100", 100, inc, inc, orders.cifar100_class_order)
    for inc in (5, 10, 20):  # B100: a first task of 100 classes, then `inc` per task
        _cil(f"tinyimagenet-b100inc{inc}", "TinyImageNet", 200, 100, inc, tinyimagenet.class_order)
    _cil("imagenet-r-10split", "ImageNet-R", 200, 20, 20, imagenet_r.class_order)
    _cil("domainnet-10split", "DomainNet200", 200, 20, 20, domainnet.class_order)


_register_cil()


def heldout_data_root(data_root: str | Path | None, names: Sequence[str]) -> Path:
    """The data root to read the held-out sets ``names`` (``eval.extra``) from; ``ClipclError``
    when none is given or it is not a directory (the counterpart of :func:`resolve_data_root`)."""
    data_root = data_root or os.environ.get(DATA_ROOT_ENV)
    if not data_root:
        raise ClipclError(
            f"eval.extra ({', '.join(names)}) reads datasets from disk: pass --data-root DIR "
            f"(or set data_root in the sweep file, or ${DATA_ROOT_ENV}); `clipcl data check "
            "--root DIR` lists what is there"
        )
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise ClipclError(f"data root not found: {root} (eval.extra)")
    return root


def load_heldout(names: Sequence[str], data_root: str | Path | None) -> list[Task]:
    """The held-out evaluation sets of ``eval.extra``: each dataset's test split as a task
    (its class names and templates; never trained, so ``train`` is the test split too).

    Raises:
        ClipclError: No data root, or a dataset missing or malformed under it (all named).
    """
    if not names:
        return []
    root = heldout_data_root(data_root, names)
    bad = [c for c in (get_dataset(n).check(root) for n in names) if c.status != "present"]
    if bad:
        what = "; ".join(
            f"{c.dataset} {c.status}: " + ", ".join(c.missing[:3] or c.problems[:1]) for c in bad
        )
        raise ClipclError(f"eval.extra cannot read its data under {root}: {what}")
    tasks = []
    for name in names:
        ds = get_dataset(name)
        splits = load_splits(ds, root)
        tasks.append(Task(name, splits.class_names, ds.templates, splits.test, splits.test))
    return tasks
