"""Stanford Cars (``stanford_cars/``) in the layout torchvision's ``StanfordCars`` reads and ZSCL's
MTIL code uses: ``cars_train/*.jpg``, ``cars_test/*.jpg``, ``devkit/cars_meta.mat`` (the 196 class
names), ``devkit/cars_train_annos.mat`` and ``cars_test_annos_withlabels.mat`` (a struct array
``annotations`` with ``fname`` and a 1-based ``class`` per image). Official train/test splits.

The ``.mat`` files are MATLAB 5 (level 5) MAT-files; they are read by :func:`load_mat`, a small
reader of that documented format (compressed or not, either byte order), so SciPy is not needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from clipcl.data.real.base import FileImageDataset, RealDataset, Splits, register_dataset
from clipcl.data.real.matfile import load_mat
from clipcl.errors import ClipclError

#: ZSCL's Stanford Cars prompts: its training prompt first, then CLIP's 8-prompt ensemble.
CARS_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}, a type of car.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of my {}.",
    "i love my {}!",
    "a photo of my dirty {}.",
    "a photo of my clean {}.",
    "a photo of my new {}.",
    "a photo of my old {}.",
)

NUM_CLASSES = 196

# ---------------------------------------------------------------------------------------------


def _variable(path: Path, name: str) -> Any:
    variables = load_mat(path)
    if name not in variables:
        raise ClipclError(f"{path}: no variable '{name}' (has: {', '.join(sorted(variables))})")
    return variables[name]


def _class_names(path: Path) -> tuple[str, ...]:
    names = _variable(path, "class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ClipclError(f"{path}: 'class_names' should be a cell array of strings")
    if len(names) != NUM_CLASSES:
        raise ClipclError(f"{path}: {len(names)} class names, expected {NUM_CLASSES}")
    return tuple(n.strip() for n in names)


def _annotations(path: Path, images_dir: Path) -> FileImageDataset:
    records = _variable(path, "annotations")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ClipclError(f"{path}: 'annotations' should be a struct array")
    if not images_dir.is_dir():
        raise ClipclError(f"directory not found: {images_dir}")
    present = set(os.listdir(images_dir))
    paths, labels = [], []
    for i, record in enumerate(records):
        fname, cls = record.get("fname"), record.get("class")
        if not isinstance(fname, str) or not isinstance(cls, np.ndarray) or cls.size != 1:
            raise ClipclError(f"{path}: annotation {i} lacks a 'fname' string or a 'class' number")
        label = int(cls.reshape(-1)[0])
        if not 1 <= label <= NUM_CLASSES:
            raise ClipclError(
                f"{path}: annotation {i} ({fname}) has class {label}, out of range 1-{NUM_CLASSES}"
            )
        fname = fname.strip()
        if fname not in present:
            raise ClipclError(f"{path}: annotation {i}: image {images_dir / fname} not found")
        paths.append(images_dir / fname)
        labels.append(label - 1)
    return FileImageDataset(paths, labels)


@register_dataset
class StanfordCars(RealDataset):
    name = "StanfordCars"
    folder = "stanford_cars"
    how_to_get = (
        "the torchvision StanfordCars layout (the original site is gone; mirrors such as "
        "the Kaggle 'torchvision stanford cars' archive ship it): ROOT/stanford_cars/ with "
        "cars_train/, cars_test/, devkit/cars_meta.mat, devkit/cars_train_annos.mat and "
        "cars_test_annos_withlabels.mat"
    )
    templates = CARS_TEMPLATES

    def expected(self) -> list[str]:
        return [
            "cars_train/",
            "cars_test/",
            "devkit/cars_meta.mat",
            "devkit/cars_train_annos.mat",
            "cars_test_annos_withlabels.mat",
        ]

    def load(self, data_root: str | Path) -> Splits:
        root = self.root(data_root)
        names = _class_names(root / "devkit" / "cars_meta.mat")
        train = _annotations(root / "devkit" / "cars_train_annos.mat", root / "cars_train")
        test = _annotations(root / "cars_test_annos_withlabels.mat", root / "cars_test")
        return Splits(names, train, test)
