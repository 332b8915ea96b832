"""Seeded batch streams over a dataset: the training loaders of the worker and of the methods.

``make_loader`` builds a ``DataLoader`` whose shuffling order depends only on its seed (so a
resumed chain draws the same batches); ``cycle`` repeats a loader's epochs for as many steps
as a task trains, from any step: a resumed task re-creates its loader and skips ahead without
loading the images of the steps it already trained.
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


def cycle(loader: DataLoader, start: int = 0) -> Iterator:
    """The loader's batches, epoch after epoch, without end (each epoch reshuffles).

    ``start``: begin at the batch ``cycle(loader)`` yields ``start``-th (0-based), on a loader
    freshly made with the same seed. Skipped batches are never loaded: the loader's random
    draws (a worker base seed per iterator, a permutation per epoch) are replayed, and the
    batches still due are loaded by one-off loaders given the base seed the uninterrupted
    stream had. The datasets are functions of the index (no random augmentation), so every
    batch is the one the uninterrupted stream yields; with worker processes a batch may be
    loaded by another worker than it would have been.
    """
    if start <= 0:
        while True:
            yield from loader
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ValueError("cannot skip ahead in a loader without batches")
    epochs, offset = divmod(start, per_epoch)
    generator = loader.generator
    first_state = generator.get_state() if generator is not None else None
    persistent = loader.persistent_workers and loader.num_workers > 0
    for epoch in range(epochs):
        if epoch == 0 or not persistent:  # a persistent iterator draws its seed once
            _draw_base_seed(generator)
        _batches_of_epoch(loader)
    if not persistent:
        if offset:
            yield from _one_off(loader, _epoch_seed_state(loader), offset)
        while True:
            yield from loader
    # Persistent workers: the stream's one base seed, drawn from the loader's first state.
    if epochs == 0:
        _draw_base_seed(generator)
    while True:
        yield from _one_off(loader, first_state, offset, _batches_of_epoch(loader))
        offset = 0


def _draw_base_seed(generator: torch.Generator | None) -> None:
    """The draw a DataLoader iterator makes from its generator when it starts."""
    torch.empty((), dtype=torch.int64).random_(generator=generator)


def _batches_of_epoch(loader: DataLoader) -> list[list[int]]:
    """The index batches of the loader's next epoch (advances its sampler's draws only)."""
    return [list(batch) for batch in loader.batch_sampler]  # type: ignore[union-attr]


def _epoch_seed_state(loader: DataLoader) -> torch.Tensor | None:
    """The generator's state before the next epoch's base-seed draw (made here)."""
    generator = loader.generator
    state = generator.get_state() if generator is not None else None
    _draw_base_seed(generator)
    return state


def _one_off(
    loader: DataLoader,
    seed_state: torch.Tensor | None,
    offset: int,
    batches: list[list[int]] | None = None,
) -> DataLoader:
    """A loader of ``batches[offset:]`` (default: the loader's next epoch) whose generator
    starts at ``seed_state``, so its workers get the base seed drawn from that state."""
    if batches is None:
        batches = _batches_of_epoch(loader)
    one_off = torch.Generator()
    if seed_state is not None:
        one_off.set_state(seed_state)
    return DataLoader(
        loader.dataset,
        batch_sampler=batches[offset:],
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=one_off,
        worker_init_fn=loader.worker_init_fn,
    )
