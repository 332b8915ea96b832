"""Which aten operators a piece of model code runs: :class:`OpCounter` records them (a
``TorchDispatchMode``), so a test or a benchmark can tell whether attention ran PyTorch's fused
scaled-dot-product kernel (``aten._scaled_dot_product_*``) or the explicit softmax path."""

from __future__ import annotations

import collections
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts the aten operators run inside ``with OpCounter() as ops:`` (``ops.ops``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    def attention(self) -> dict[str, int]:
        """The attention operators seen: fused kernels and explicit softmaxes."""
        return {
            op: n for op, n in self.ops.items() if "scaled_dot_product" in op or "softmax" in op
        }
