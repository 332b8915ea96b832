"""Describable Textures (DTD, 47 classes) in the layout torchvision's ``DTD(root, download=True)``
leaves behind: the official archive (whose own top folder is ``dtd/``) extracted into
``ROOT/dtd/``, i.e. ``ROOT/dtd/dtd/{images,labels}``.

MTIL (ZSCL's ``DTD``) uses torchvision's defaults: partition 1, training on ``train1.txt`` only
(1,880 images; ``val1.txt`` is unused) and testing on ``test1.txt`` (1,880 images). The classes
are the sorted directory names of ``images/`` (the texture adjectives, CLIP's names as they are).
"""

from __future__ import annotations

import os
from pathlib import Path

from clipcl.data.real.base import (
    FileImageDataset,
    RealDataset,
    Splits,
    need,
    read_lines,
    register_dataset,
)
from clipcl.errors import ClipclError

#: CLIP's DescribableTextures prompt ensemble (Radford et al., 2021, data/prompts.md), also ZSCL's.
DTD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {} texture.",
    "a photo of a {} pattern.",
    "a photo of a {} thing.",
    "a photo of a {} object.",
    "a photo of the {} texture.",
    "a photo of the {} pattern.",
    "a photo of the {} thing.",
    "a photo of the {} object.",
)


@register_dataset
class DTD(RealDataset):
    name = "DTD"
    folder = "dtd"
    how_to_get = (
        "dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/ extracted into "
        "ROOT/dtd/ "
        "(what torchvision.datasets.DTD(root, download=True) leaves): "
        "ROOT/dtd/dtd/images/<class>/<class>_NNNN.jpg and ROOT/dtd/dtd/labels/{train1,test1}.txt"
    )
    templates = DTD_TEMPLATES
    _splits = ("train1", "test1")

    def expected(self) -> list[str]:
        return ["dtd/images/", *(f"dtd/labels/{s}.txt" for s in self._splits)]

    def load(self, data_root: str | Path) -> Splits:
        base = self.root(data_root) / "dtd"
        images = need(base / "images", "directory")
        classes = sorted(p.name for p in images.iterdir() if p.is_dir() and p.name[0] != ".")
        if not classes:
            raise ClipclError(f"{images}: no class directories")
        index = {c: i for i, c in enumerate(classes)}
        listed: dict[str, set[str]] = {}
        datasets = []
        for split in self._splits:
            ann = base / "labels" / f"{split}.txt"
            paths, labels = [], []
            for lineno, line in enumerate(read_lines(ann), 1):
                parts = line.split("/")  # "<class>/<file>.jpg"
                if len(parts) != 2 or not all(parts):
                    raise ClipclError(f"{ann}:{lineno}: expected '<class>/<file>', got {line!r}")
                cls, file = parts
                if cls not in index:
                    raise ClipclError(f"{ann}:{lineno}: class directory not found: {images / cls}/")
                if cls not in listed:
                    listed[cls] = set(os.listdir(images / cls))
                if file not in listed[cls]:
                    raise ClipclError(f"{ann}:{lineno}: image not found: {images / cls / file}")
                paths.append(images / cls / file)
                labels.append(index[cls])
            datasets.append(FileImageDataset(paths, labels))
        return Splits(tuple(c.replace("_", " ") for c in classes), datasets[0], datasets[1])
