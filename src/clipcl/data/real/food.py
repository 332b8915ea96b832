"""Food-101 (101 classes) in the layout of the official archive, which is also what torchvision's
``Food101(root, download=True)`` leaves behind: ``ROOT/food-101/{images,meta}``.

Official splits (75,750 train / 25,250 test), as ZSCL's MTIL ``Food``. The split lists are read
from ``meta/{train,test}.txt`` (the archive ships the same lists as ``.json``, which torchvision
reads); class names are ``meta/classes.txt`` with ``_`` → space.
"""

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

#: ZSCL's MTIL Food prompt (one template). CLIP's data/prompts.md Food101 has the same sentence
#: without the article ('a photo of {}, a type of food.'); MTIL's numbers come from this one.
FOOD_TEMPLATES: tuple[str, ...] = ("a photo of a {}, a type of food.",)


@register_dataset
class Food(RealDataset):
    name = "Food"
    folder = "food-101"
    how_to_get = (
        "food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/ "
        "extracted under the data root (or torchvision.datasets.Food101(root, download=True)): "
        "ROOT/food-101/images/<class>/<id>.jpg and ROOT/food-101/meta/{classes,train,test}.txt"
    )
    templates = FOOD_TEMPLATES
    _splits = ("train", "test")

    def expected(self) -> list[str]:
        return ["meta/classes.txt", *(f"meta/{s}.txt" for s in self._splits), "images/"]

    def load(self, data_root: str | Path) -> Splits:
        root = self.root(data_root)
        classes_txt = root / "meta" / "classes.txt"
        classes = read_lines(classes_txt)
        if not classes:
            raise ClipclError(f"{classes_txt}: no class names")
        if len(set(classes)) != len(classes):
            raise ClipclError(f"{classes_txt}: duplicate class names")
        index = {c: i for i, c in enumerate(classes)}
        images = root / "images"
        listed: dict[str, set[str]] = {}
        datasets = []
        for split in self._splits:
            ann = root / "meta" / f"{split}.txt"
            paths, labels = [], []
            for lineno, line in enumerate(read_lines(ann), 1):
                parts = line.split("/")  # "<class>/<id>", no extension
                if len(parts) != 2 or not all(parts):
                    raise ClipclError(f"{ann}:{lineno}: expected '<class>/<id>', got {line!r}")
                cls, image_id = parts
                if cls not in index:
                    raise ClipclError(f"{ann}:{lineno}: class {cls!r} is not in {classes_txt.name}")
                if cls not in listed:
                    folder = images / cls
                    listed[cls] = set(os.listdir(folder)) if folder.is_dir() else set()
                if f"{image_id}.jpg" not in listed[cls]:
                    raise ClipclError(
                        f"{ann}:{lineno}: image not found: {images / cls / image_id}.jpg"
                    )
                paths.append(images / cls / f"{image_id}.jpg")
                labels.append(index[cls])
            datasets.append(FileImageDataset(paths, labels))
        return Splits(tuple(c.replace("_", " ") for c in classes), datasets[0], datasets[1])
