"""Seeded batch streams over a dataset: the training loaders of the worker and of the methods.

``make_loader`` builds a ``DataLoader`` whose shuffling order depends only on its seed (so a
resumed chain draws the same batches); ``cycle`` repeats a loader's epochs for as many steps
as a task trains, from any step: a resumed task re-creates its loader and skips ahead without
loading the images of the steps it already trained.
"""

from __future__ import annotations

import itertools
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
    draws are replayed at once (a worker base seed per iterator, an epoch's permutation, and
    the sampler's last, empty draw when the stream moves past an epoch), and the batches still
    due in the current epoch are loaded by a one-off loader. The datasets are functions of the
    index (no random augmentation), so every batch is the one the uninterrupted stream yields.
    Without worker processes the loader's generator also goes through the same states, so a
    later pass over the loader (an ``after_task`` statistics pass) sees the same batches too;
    with persistent workers only the training batches are guaranteed.
    """
    if start <= 0:
        return _forever(loader)
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ValueError("cannot skip ahead in a loader without batches")
    if loader.persistent_workers and loader.num_workers > 0:
        return _skip_persistent(loader, start)
    epochs, offset = divmod(start, per_epoch)
    if offset == 0:  # at an epoch's end the stream has not moved past it yet
        epochs, offset = epochs - 1, per_epoch
    generator = loader.generator
    for _ in range(epochs):
        _draw_base_seed(generator)
        _batches_of_epoch(loader)
    seed_state = generator.get_state() if generator is not None else None
    _draw_base_seed(generator)
    pending = iter(loader.batch_sampler)  # type: ignore[arg-type]
    batches = [list(b) for b in itertools.islice(pending, per_epoch)]  # draws the permutation
    return _resumed(loader, _one_off(loader, seed_state, offset, batches), pending)


def _forever(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def _resumed(loader: DataLoader, rest: DataLoader, pending: Iterator) -> Iterator:
    """The rest of the current epoch, then (moving past it, as the loader would) the next."""
    yield from rest
    for _ in pending:  # the sampler's closing draw
        pass
    yield from _forever(loader)


def _skip_persistent(loader: DataLoader, start: int) -> Iterator:
    """``cycle(loader, start)`` for persistent workers: one iterator draws its base seed once;
    every epoch from here on is loaded by a one-off loader given that seed."""
    epochs, offset = divmod(start, len(loader))
    generator = loader.generator
    first_state = generator.get_state() if generator is not None else None
    _draw_base_seed(generator)
    for _ in range(epochs):
        _batches_of_epoch(loader)

    def stream(offset: int) -> Iterator:
        while True:
            yield from _one_off(loader, first_state, offset, _batches_of_epoch(loader))
            offset = 0

    return stream(offset)


def _draw_base_seed(generator: torch.Generator | None) -> None:
    """The draw a DataLoader iterator makes from its generator when it starts."""
    torch.empty((), dtype=torch.int64).random_(generator=generator)


def _batches_of_epoch(loader: DataLoader) -> list[list[int]]:
    """The index batches of the loader's next epoch (advances its sampler's draws only)."""
    return [list(batch) for batch in loader.batch_sampler]  # type: ignore[union-attr]


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
