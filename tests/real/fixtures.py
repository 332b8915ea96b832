"""Writers of tiny datasets in their real on-disk formats (used by the loader tests)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def rng_image(seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Image.Image:
    """A small random image (deterministic from ``seed``)."""
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode)


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng_image(seed, size).save(path, format="JPEG")
    return path


def _as_bytes(value: object) -> object:
    """Strings (and lists of them) as bytes, the way a Python 3 ``encoding="bytes"`` load
    leaves them."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list) and value and isinstance(value[0], str):
        return [v.encode() for v in value]
    return value


def _dump(path: Path, batch: dict[str, object], bytes_keys: bool) -> None:
    """Pickle ``batch``; ``bytes_keys``: keys and string values as bytes (a CIFAR pickle loaded
    with ``encoding="bytes"`` and saved again from Python 3)."""
    if bytes_keys:
        batch = {k.encode(): _as_bytes(v) for k, v in batch.items()}
    with open(path, "wb") as fh:
        pickle.dump(batch, fh)


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 4, bytes_keys: bool = False) -> Path:
    """``root/cifar-100-python/{meta,train,test}`` with labels i % 100 and 100 class names."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    names = [f"class_{i:02d}" for i in range(100)]
    meta = {"fine_label_names": names, "coarse_label_names": ["c"] * 20}
    _dump(d / "meta", meta, bytes_keys)
    for part, n, off in (("train", n_train, 0), ("test", n_test, 50)):
        rng = np.random.default_rng(off)
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": [(i + off) % 100 for i in range(n)],
            "coarse_labels": [0] * n,
        }
        _dump(d / part, batch, bytes_keys)
    return d


def write_cifar10(
    root: Path, per_batch: int = 3, n_test: int = 4, bytes_keys: bool = False
) -> Path:
    """``root/cifar-10-batches-py`` with batches.meta, data_batch_1..5 and test_batch."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    _dump(d / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch}, bytes_keys)
    parts = [(f"data_batch_{i}", per_batch, i) for i in range(1, 6)] + [("test_batch", n_test, 9)]
    for name, n, off in parts:
        rng = np.random.default_rng(off)
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": [(i + off) % 10 for i in range(n)],
        }
        _dump(d / name, batch, bytes_keys)
    return d
