"""ImageNet (ILSVRC-2012) as ZSCL's reference images: the ImageFolder trees ZSCL's code reads,
``ImageNet/train/<wnid>/*.JPEG`` (training) and ``ImageNet/val/<wnid>/*.JPEG`` (the 50,000
validation images sorted into one folder per class, used as the test split). Labels follow the
sorted wnids, as torchvision's ``ImageFolder`` numbers them.

Class names are the first name of each wnid in ``ImageNet/LOC_synset_mapping.txt``
(``n01440764 tench, Tinca tinca`` → 'tench') when that file is there, else the wnids."""

from __future__ import annotations

import os
from pathlib import Path

from clipcl.data.real.base import (
    FileImageDataset,
    RealDataset,
    Splits,
    read_lines,
    register_dataset,
)
from clipcl.errors import ClipclError

#: ZSCL's reference-text prompt for ImageNet (the single template it uses with these images).
IMAGENET_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

#: File endings torchvision's ImageFolder accepts (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SYNSET_MAPPING = "LOC_synset_mapping.txt"


def _class_dirs(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise ClipclError(f"directory not found: {split_dir}")
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def _images(split_dir: Path, wnids: list[str]) -> FileImageDataset:
    paths: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        directory = split_dir / wnid
        files = sorted(f for f in os.listdir(directory) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise ClipclError(f"no images in {directory}")
        paths.extend(directory / f for f in files)
        labels.extend([label] * len(files))
    return FileImageDataset(paths, labels)


def read_synset_mapping(path: Path) -> dict[str, str]:
    """``wnid → first name`` from a ``LOC_synset_mapping.txt`` (``ClipclError`` naming it)."""
    mapping: dict[str, str] = {}
    for lineno, line in enumerate(read_lines(path), 1):
        wnid, _, names = line.partition(" ")
        name = names.split(",")[0].strip()
        if not wnid or not name:
            raise ClipclError(
                f"{path}:{lineno}: expected '<wnid> <name>[, <name>...]', got {line!r}"
            )
        mapping[wnid] = name
    return mapping


@register_dataset
class ImageNet(RealDataset):
    name = "ImageNet"
    folder = "ImageNet"
    how_to_get = (
        "ILSVRC-2012 from https://image-net.org (or the Kaggle 'ImageNet Object Localization "
        "Challenge' copy) as ImageFolder trees: ROOT/ImageNet/train/<wnid>/*.JPEG and "
        "ROOT/ImageNet/val/<wnid>/*.JPEG (validation images moved into class folders), "
        f"optionally ROOT/ImageNet/{SYNSET_MAPPING} for readable class names"
    )
    templates = IMAGENET_TEMPLATES

    def expected(self) -> list[str]:
        return ["train/", "val/"]

    def load(self, data_root: str | Path) -> Splits:
        root = self.root(data_root)
        wnids = _class_dirs(root / "train")
        if not wnids:
            raise ClipclError(f"no class folders in {root / 'train'}")
        val_wnids = _class_dirs(root / "val")
        if val_wnids != wnids:
            only_train = sorted(set(wnids) - set(val_wnids))
            only_val = sorted(set(val_wnids) - set(wnids))
            raise ClipclError(
                f"{root / 'train'} and {root / 'val'} have different class folders "
                f"(only in train: {only_train[:5]}, only in val: {only_val[:5]})"
            )
        mapping_path = root / SYNSET_MAPPING
        if mapping_path.is_file():
            mapping = read_synset_mapping(mapping_path)
            unnamed = [w for w in wnids if w not in mapping]
            if unnamed:
                raise ClipclError(f"{mapping_path}: no name for {', '.join(unnamed[:5])}")
            class_names = tuple(mapping[w] for w in wnids)
        else:
            class_names = tuple(wnids)
        return Splits(class_names, _images(root / "train", wnids), _images(root / "val", wnids))
