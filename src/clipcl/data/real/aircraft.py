"""FGVC-Aircraft 2013b at the variant level (100 classes), the layout of the official archive,
which is also what torchvision's ``FGVCAircraft(root, download=True)`` leaves behind.

MTIL (ZSCL's ``Aircraft``) trains on the official ``train`` split (3,334 images; not
``trainval``) and tests on ``test`` (3,333 images). Class names are ``data/variants.txt``.
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

#: CLIP's FGVCAircraft prompt ensemble (Radford et al., 2021, data/prompts.md), also ZSCL's.
AIRCRAFT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}, a type of aircraft.",
    "a photo of the {}, a type of aircraft.",
)


@register_dataset
class Aircraft(RealDataset):
    name = "Aircraft"
    folder = "fgvc-aircraft-2013b"
    how_to_get = (
        "fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ "
        "extracted under the data root (or torchvision.datasets.FGVCAircraft(root, "
        "download=True)): "
        "ROOT/fgvc-aircraft-2013b/data/{variants.txt, images_variant_train.txt, "
        "images_variant_test.txt, images/<id>.jpg}"
    )
    templates = AIRCRAFT_TEMPLATES
    _splits = ("train", "test")

    def expected(self) -> list[str]:
        return [
            "data/variants.txt",
            *(f"data/images_variant_{s}.txt" for s in self._splits),
            "data/images/",
        ]

    def load(self, data_root: str | Path) -> Splits:
        data = self.root(data_root) / "data"
        variants = data / "variants.txt"
        names = read_lines(variants)
        if not names:
            raise ClipclError(f"{variants}: no variant names")
        if len(set(names)) != len(names):
            raise ClipclError(f"{variants}: duplicate variant names")
        index = {n: i for i, n in enumerate(names)}
        images = data / "images"
        present = set(os.listdir(images)) if images.is_dir() else set()
        datasets = []
        for split in self._splits:
            ann = data / f"images_variant_{split}.txt"
            paths, labels = [], []
            for lineno, line in enumerate(read_lines(ann), 1):
                parts = line.split(" ", 1)  # "<image id> <variant, may contain spaces>"
                if len(parts) != 2:
                    raise ClipclError(
                        f"{ann}:{lineno}: expected '<image id> <variant>', got {line!r}"
                    )
                image_id, variant = parts[0], parts[1].strip()
                if variant not in index:
                    raise ClipclError(
                        f"{ann}:{lineno}: variant {variant!r} is not in {variants.name}"
                    )
                if f"{image_id}.jpg" not in present:
                    raise ClipclError(f"{ann}:{lineno}: image not found: {images / image_id}.jpg")
                paths.append(images / f"{image_id}.jpg")
                labels.append(index[variant])
            datasets.append(FileImageDataset(paths, labels))
        return Splits(tuple(names), datasets[0], datasets[1])
