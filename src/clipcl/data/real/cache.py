"""An optional pre-resized cache of a dataset: every image decoded and resized once into a uint8
array (N, 3, S, S) per split, memory-mapped at training time, so a 1000-iteration task is not
bound by JPEG decoding.

Layout: ``DATA_ROOT/.clipcl-cache/<dataset>/{train,test}.images.npy`` (+ ``.labels.npy``) and
``meta.json`` (image size, class names, split sizes). ``clipcl data cache`` writes it;
:func:`load_splits` uses it when it matches the dataset's current index (same class names,
sizes and labels) and falls back to the image files otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from clipcl.data.real.base import IMAGE_SIZE, RealDataset, Splits, dataset_labels, size
from clipcl.durable import atomic_write_json

CACHE_DIR = ".clipcl-cache"


class MemmapImageDataset(Dataset):
    """Pre-resized uint8 images (N, 3, S, S) memory-mapped from a ``.npy`` file."""

    def __init__(self, images_path: Path, labels: np.ndarray) -> None:
        self.images_path = Path(images_path)
        self.labels = [int(y) for y in labels]
        self._images: np.ndarray | None = None  # opened lazily (picklable for workers)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        return torch.from_numpy(np.array(self._images[index])), self.labels[index]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}


def cache_dir(ds: RealDataset, data_root: str | Path) -> Path:
    return Path(data_root) / CACHE_DIR / ds.name


def _cached(ds: RealDataset, data_root: str | Path, splits: Splits) -> Splits | None:
    d = cache_dir(ds, data_root)
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("size") != IMAGE_SIZE or tuple(meta.get("class_names", ())) != splits.class_names:
        return None
    out = []
    for part, source in (("train", splits.train), ("test", splits.test)):
        labels_path, images_path = d / f"{part}.labels.npy", d / f"{part}.images.npy"
        if not (labels_path.is_file() and images_path.is_file()):
            return None
        labels = np.load(labels_path)
        if labels.tolist() != dataset_labels(source):
            return None  # the dataset's index changed since the cache was written
        out.append(MemmapImageDataset(images_path, labels))
    return Splits(splits.class_names, out[0], out[1])


def load_splits(ds: RealDataset, data_root: str | Path) -> Splits:
    """``ds.load(data_root)``, served from the pre-resized cache when it is there and current."""
    splits = ds.load(data_root)
    return _cached(ds, data_root, splits) or splits


def write_cache(
    ds: RealDataset,
    data_root: str | Path,
    num_workers: int = 2,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Decode and resize every image of ``ds`` once; return the cache directory."""
    splits = ds.load(data_root)
    d = cache_dir(ds, data_root)
    d.mkdir(parents=True, exist_ok=True)
    for part, source in (("train", splits.train), ("test", splits.test)):
        n = size(source)
        tmp = d / f"{part}.images.tmp.npy"
        images = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(n, 3, IMAGE_SIZE, IMAGE_SIZE)
        )
        labels = np.empty(n, dtype=np.int64)
        loader = DataLoader(source, batch_size=64, num_workers=num_workers, shuffle=False)
        i = 0
        for x, y in loader:
            images[i : i + len(y)] = x.numpy()
            labels[i : i + len(y)] = y.numpy()
            i += len(y)
            if on_progress:
                on_progress(part, i, n)
        images.flush()
        del images
        tmp.replace(d / f"{part}.images.npy")
        np.save(d / f"{part}.labels.npy", labels)
    atomic_write_json(
        d / "meta.json",
        {
            "dataset": ds.name,
            "size": IMAGE_SIZE,
            "class_names": list(splits.class_names),
            "train": size(splits.train),
            "test": size(splits.test),
        },
    )
    return d
