"""CIFAR-10 and CIFAR-100 from the python pickles (``cifar-10-batches-py`` / ``cifar-100-python``),
the layout torchvision's ``CIFAR10/CIFAR100(root, download=True)`` leaves behind."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from clipcl.data.real.base import ArrayImageDataset, RealDataset, Splits, need, register_dataset
from clipcl.data.real.templates import CIFAR_TEMPLATES
from clipcl.errors import ClipclError


def _text(value: Any) -> Any:
    """``bytes`` as ``str`` (latin-1, as the Python 2 originals are read); anything else as is."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _unpickle(path: Path) -> dict[str, Any]:
    """A CIFAR pickle's dict with ``str`` keys: the Python 2 originals, and copies saved again
    from Python 3 after an ``encoding="bytes"`` load (bytes keys, bytes names)."""
    with open(need(path), "rb") as fh:
        try:
            data = pickle.load(fh, encoding="latin1")
        except Exception as exc:  # a truncated or foreign file
            raise ClipclError(f"{path}: not a CIFAR pickle ({exc})") from None
    if not isinstance(data, dict):
        raise ClipclError(f"{path}: not a CIFAR pickle (no dict inside)")
    return {_text(k): v for k, v in data.items()}


def _names(values: Any) -> tuple[str, ...]:
    """Class names (``str`` or ``bytes``) with underscores as spaces."""
    return tuple(str(_text(n)).replace("_", " ") for n in values)


def _images(batch: dict[str, Any], path: Path) -> np.ndarray:
    data = np.asarray(batch.get("data"), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ClipclError(f"{path}: 'data' should be N × 3072 uint8, got {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()  # N, H, W, C


@register_dataset
class CIFAR10(RealDataset):
    name = "CIFAR10"
    folder = "cifar-10-batches-py"
    how_to_get = (
        "the python version from https://www.cs.toronto.edu/~kriz/cifar.html "
        "(cifar-10-python.tar.gz) extracted under the data root, or "
        "torchvision.datasets.CIFAR10(root, download=True)"
    )
    templates = CIFAR_TEMPLATES
    _train = tuple(f"data_batch_{i}" for i in range(1, 6))

    def expected(self) -> list[str]:
        return ["batches.meta", *self._train, "test_batch"]

    def load(self, data_root: str | Path) -> Splits:
        root = self.root(data_root)
        names = _unpickle(root / "batches.meta").get("label_names")
        if not names:
            raise ClipclError(f"{root / 'batches.meta'}: no 'label_names'")
        train = [_unpickle(root / f) for f in self._train]
        test = _unpickle(root / "test_batch")
        pairs = zip(train, self._train, strict=True)
        x_train = np.concatenate([_images(b, root / f) for b, f in pairs])
        y_train = [y for b in train for y in b["labels"]]
        return Splits(
            _names(names),
            ArrayImageDataset(x_train, y_train),
            ArrayImageDataset(_images(test, root / "test_batch"), test["labels"]),
        )


@register_dataset
class CIFAR100(RealDataset):
    name = "CIFAR100"
    folder = "cifar-100-python"
    how_to_get = (
        "the python version from https://www.cs.toronto.edu/~kriz/cifar.html "
        "(cifar-100-python.tar.gz) extracted under the data root, or "
        "torchvision.datasets.CIFAR100(root, download=True)"
    )
    templates = CIFAR_TEMPLATES

    def expected(self) -> list[str]:
        return ["meta", "train", "test"]

    def load(self, data_root: str | Path) -> Splits:
        root = self.root(data_root)
        names = _unpickle(root / "meta").get("fine_label_names")
        if not names or len(names) != 100:
            raise ClipclError(f"{root / 'meta'}: expected 100 'fine_label_names'")
        splits = []
        for part in ("train", "test"):
            batch = _unpickle(root / part)
            labels = batch.get("fine_labels")
            if labels is None:
                raise ClipclError(f"{root / part}: no 'fine_labels'")
            splits.append(ArrayImageDataset(_images(batch, root / part), labels))
        return Splits(_names(names), splits[0], splits[1])
