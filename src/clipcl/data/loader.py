"""Seeded batch streams over a dataset: the training loaders of the worker and of the methods.

``make_loader`` builds a ``DataLoader`` whose shuffling order depends only on its seed (so a
resumed chain draws the same batches); ``cycle`` repeats a loader's epochs for as many steps
as a task trains.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    """A DataLoader whose shuffling order depends only on ``seed``.

    With ``shuffle`` the last incomplete batch is dropped (when there is at least one full one).
    """
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=g,
        num_workers=num_workers,
        drop_last=shuffle and len(dataset) >= batch_size,  # type: ignore[arg-type]
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def cycle(loader: DataLoader) -> Iterator:
    """The loader's batches, epoch after epoch, without end (each epoch reshuffles)."""
    while True:
        yield from loader
