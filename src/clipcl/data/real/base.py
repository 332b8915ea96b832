"""The contract every real (on-disk) dataset follows, and the pieces they share.

A :class:`RealDataset` describes one dataset under a data root: the folder it lives in
(``ROOT/<folder>``), the files and directories that must exist (:meth:`RealDataset.expected`),
how to obtain them (``how_to_get``), its prompt templates, and :meth:`RealDataset.load`, which
reads the class names and the train/test splits with ``download=False`` semantics — nothing is
ever fetched. :meth:`RealDataset.check` says present / missing / malformed with the exact paths.

Images come out as uint8 tensors (3, S, S), S = :data:`IMAGE_SIZE`, resized CLIP-style
(shorter side to S with bicubic filtering, then a centre crop); the model resizes on its device
if its own input size differs. Splits a dataset does not ship are :func:`split_80_20` (seed 42).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from clipcl.errors import ClipclError, unknown_name

#: Side of the square uint8 images every real dataset yields (CLIP ViT-B/16's input).
IMAGE_SIZE = 224
#: Seed of the 80/20 splits of datasets without an official test split (ZSCL's protocol).
SPLIT_SEED = 42

Status = Literal["present", "missing", "malformed"]


def clip_resize(image: Image.Image, size: int = IMAGE_SIZE) -> torch.Tensor:
    """RGB, shorter side → ``size`` (bicubic), centre crop → uint8 tensor (3, size, size)."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


class FileImageDataset(Dataset):
    """Images read from files (decoded and resized on access) with integer labels."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], size: int = IMAGE_SIZE):
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        self.paths = [str(p) for p in paths]
        self.labels = [int(y) for y in labels]
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as im:
            return clip_resize(im, self.size), self.labels[index]


class ArrayImageDataset(Dataset):
    """Images held as a uint8 array (N, H, W, C) or (N, H, W) (CIFAR, MNIST), resized on access."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], size: int = IMAGE_SIZE):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
            raise ValueError(
                f"expected uint8 (N, H, W[, C]) images, got {images.dtype} {images.shape}"
            )
        self.images = images
        self.labels = [int(y) for y in labels]
        self.size = size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return clip_resize(Image.fromarray(self.images[index]), self.size), self.labels[index]


class SubsetDataset(Dataset):
    """``dataset[indices[i]]`` with labels remapped through ``label_map`` (CIL tasks)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], label_map: dict[int, int]):
        self.dataset, self.indices, self.label_map = dataset, list(indices), dict(label_map)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[self.indices[index]]
        return image, self.label_map[label]


def dataset_labels(dataset: Dataset) -> list[int]:
    """Every label of a dataset without decoding images (uses ``.labels`` where present)."""
    if isinstance(dataset, FileImageDataset | ArrayImageDataset):
        return list(dataset.labels)
    if isinstance(dataset, SubsetDataset):
        inner = dataset_labels(dataset.dataset)
        return [dataset.label_map[inner[i]] for i in dataset.indices]
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return [int(y) for y in labels]
    return [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]


def size(dataset: Dataset) -> int:
    """``len(dataset)`` (every dataset here is sized; torch's ``Dataset`` type does not say so)."""
    return len(dataset)  # type: ignore[arg-type]


def split_80_20(n: int, seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """ZSCL's random 80/20 split of ``range(n)``: (train indices, test indices), each sorted.

    The same membership as ``torch.utils.data.random_split(ds, [int(0.8 n), n - int(0.8 n)],
    generator=torch.Generator().manual_seed(seed))``: a seeded permutation cut at ``int(0.8 n)``.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(0.8 * n)
    return sorted(perm[:cut]), sorted(perm[cut:])


def class_dirs(top: Path, skip: Collection[str] = ()) -> list[str]:
    """Sorted names of the class directories under ``top`` (hidden ones and ``skip`` left out);
    ``ClipclError`` when there are none."""
    names = sorted(
        p.name for p in need(top, "directory").iterdir() if p.is_dir() and p.name[0] != "."
    )
    names = [n for n in names if n not in skip]
    if not names:
        raise ClipclError(f"{top}: no class directories")
    return names


def folder_images(
    top: Path, classes: Sequence[str], pattern: str, known: Collection[str], kind: str
) -> tuple[list[Path], list[int]]:
    """(paths, labels) of ``top/<class>/<pattern>`` files, class i labelled i, sorted; every
    class must be in ``known`` and hold at least one file."""
    paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        if cls not in known:
            raise ClipclError(f"{top / cls}/: not {kind}")
        files = sorted(top.joinpath(cls).glob(pattern))
        if not files:
            raise ClipclError(f"{top / cls}/: no {pattern} files")
        paths += files
        labels += [label] * len(files)
    return paths, labels


def split_files(
    paths: Sequence[Path], labels: Sequence[int], seed: int = SPLIT_SEED
) -> tuple[FileImageDataset, FileImageDataset]:
    """The 80/20 split (:func:`split_80_20`) of a list of image files."""
    train, test = split_80_20(len(paths), seed)
    return (
        FileImageDataset([paths[i] for i in train], [labels[i] for i in train]),
        FileImageDataset([paths[i] for i in test], [labels[i] for i in test]),
    )


@dataclass(frozen=True)
class Splits:
    """A loaded dataset: class names (label i ↔ ``class_names[i]``) and its two splits."""

    class_names: tuple[str, ...]
    train: Dataset
    test: Dataset


@dataclass
class Check:
    """What :meth:`RealDataset.check` found: status, the dataset's directory, what is wrong."""

    dataset: str
    status: Status
    path: Path
    missing: list[str] = field(default_factory=list)  # expected paths that do not exist
    problems: list[str] = field(default_factory=list)  # present but unreadable / inconsistent
    how_to_get: str = ""


class RealDataset(ABC):
    """One dataset on disk. Subclasses set the class attributes and implement :meth:`load`."""

    #: Registry name (MTIL's: Aircraft, Caltech101, CIFAR100, ...).
    name: ClassVar[str]
    #: Directory under the data root.
    folder: ClassVar[str]
    #: How to obtain the files (one or two sentences: source and the layout expected).
    how_to_get: ClassVar[str]
    #: Prompt templates with one ``{}``: [0] for training, all for the evaluation ensemble.
    templates: ClassVar[tuple[str, ...]]

    def root(self, data_root: str | Path) -> Path:
        return Path(data_root) / self.folder

    @abstractmethod
    def expected(self) -> list[str]:
        """Paths (relative to ``root()``; directories end with ``/``) that must exist."""

    @abstractmethod
    def load(self, data_root: str | Path) -> Splits:
        """Read class names and splits; ``ClipclError`` naming the file when something is off."""

    def check(self, data_root: str | Path) -> Check:
        """Present / missing / malformed, with the missing paths; loads the index to be sure."""
        root = self.root(data_root)
        result = Check(self.name, "present", root, how_to_get=self.how_to_get)
        for rel in self.expected():
            path = root / rel
            if not (path.is_dir() if rel.endswith("/") else path.is_file()):
                result.missing.append(str(path) + ("/" if rel.endswith("/") else ""))
        if result.missing:
            result.status = "missing"
            return result
        try:
            splits = self.load(data_root)
            if size(splits.train) == 0 or size(splits.test) == 0:
                raise ClipclError("a split is empty")
        except (ClipclError, OSError, ValueError, KeyError, IndexError) as exc:
            result.status = "malformed"
            result.problems.append(str(exc))
        return result


_DATASETS: dict[str, RealDataset] = {}


def register_dataset(cls: type[RealDataset]) -> type[RealDataset]:
    """Class decorator: register one instance under ``cls.name`` (a name the torch-free
    ``clipcl.data.catalog.REAL_DATASETS`` lists, so held-out sets are checked without torch)."""
    from clipcl.data.catalog import REAL_DATASETS

    if cls.name not in REAL_DATASETS:
        raise RuntimeError(f"dataset '{cls.name}' is missing from clipcl.data.catalog")
    _DATASETS[cls.name] = cls()
    return cls


def get_dataset(name: str) -> RealDataset:
    if name not in _DATASETS:
        raise unknown_name("dataset", name, _DATASETS)
    return _DATASETS[name]


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def need(path: Path, what: str = "file") -> Path:
    """``path`` if it exists, else a ``ClipclError`` naming it."""
    if not path.exists():
        raise ClipclError(f"{what} not found: {path}")
    return path


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a text file (``ClipclError`` naming it when missing)."""
    return [ln.strip() for ln in need(path).read_text(errors="replace").splitlines() if ln.strip()]
