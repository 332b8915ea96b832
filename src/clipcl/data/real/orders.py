"""Class orders of the class-incremental benchmarks, and the generators behind them.

A class order is a permutation of the dataset's labels; task ``k`` of a benchmark takes the next
group of classes from it (``benchmarks.class_groups``). Where the published order comes from a
seeded generator, the generator is written here and the order is regenerated, not stored:

- CIFAR-100: the classic "seed 1993" order of Continual-CLIP, ZSCL, MoE-Adapters and DMNSP
  (``class_orders/cifar100.yaml`` in each; METHODS.md §2). It is stored: no seeded Python / numpy /
  torch shuffle we tried reproduces it.
- TinyImageNet (``tinyimagenet.class_order``): the same repositories' ``class_orders/
  tinyimagenet.yaml``, which is exactly :func:`python_shuffle_order` ``(200, seed=0)``.
- ImageNet-R and DomainNet-200 (``imagenet_r.class_order``, ``domainnet.class_order``): NSP²'s
  ``ClassIncrementalManager`` shuffles the sorted labels with ``np.random.Generator(PCG64(seed))``,
  seed 2024 by default (:func:`pcg64_shuffle_order`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from clipcl.errors import ClipclError

#: CIFAR-100's seed-1993 order (METHODS.md §2), label ids of ``cifar-100-python``'s fine labels.
CIFAR100_ORDER: tuple[int, ...] = (
    87, 0, 52, 58, 44, 91, 68, 97, 51, 15, 94, 92, 10, 72, 49, 78, 61, 14, 8, 86,
    84, 96, 18, 24, 32, 45, 88, 11, 4, 67, 69, 66, 77, 47, 79, 93, 29, 50, 57, 83,
    17, 81, 41, 12, 37, 59, 25, 20, 80, 73, 1, 28, 6, 46, 62, 82, 53, 9, 31, 75,
    38, 63, 33, 74, 27, 22, 36, 3, 16, 21, 60, 19, 70, 90, 89, 43, 5, 42, 65, 76,
    40, 30, 23, 85, 2, 95, 56, 48, 71, 64, 98, 13, 99, 7, 34, 55, 54, 26, 35, 39,
)  # fmt: skip


def check_order(order: Sequence[int], n: int) -> list[int]:
    """``order`` as a list if it is a permutation of ``range(n)``, else ``ClipclError``."""
    out = [int(c) for c in order]
    if sorted(out) != list(range(n)):
        raise ClipclError(f"class order is not a permutation of range({n}): {out[:10]}...")
    return out


def cifar100_class_order() -> list[int]:
    """CIFAR-100's seed-1993 class order (a copy; 100 labels)."""
    return check_order(CIFAR100_ORDER, 100)


def python_shuffle_order(n: int, seed: int) -> list[int]:
    """``range(n)`` shuffled by ``random.Random(seed).shuffle`` (Python's Mersenne Twister).

    With ``n=200, seed=0`` this is the TinyImageNet order of Continual-CLIP / ZSCL / DMNSP.
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def pcg64_shuffle_order(n: int, seed: int) -> list[int]:
    """``range(n)`` shuffled in place by ``np.random.Generator(np.random.PCG64(seed))``.

    NSP²'s class order (``utils/continual_manager.py``, class-level shuffle of the sorted labels;
    its scripts run seed 2024, its README suggests 2025 and 2026 for repeats).
    """
    order = np.arange(n, dtype=np.int64)
    np.random.Generator(np.random.PCG64(seed)).shuffle(order)
    return [int(c) for c in order]
