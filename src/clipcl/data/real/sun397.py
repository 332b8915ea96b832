"""SUN397 (``SUN397/``), the layout of the official ``SUN397.tar.gz`` that torchvision's
``SUN397(root, download=True)`` extracts and ZSCL's MTIL code reads: ``ClassName.txt`` lists the
397 classes as ``/<letter>/<name>[/<sub-name>]`` lines, and the images of each class are the
``sun_*.jpg`` files in ``SUN397/<letter>/<name>[/<sub-name>]/``.

There is no official split: like ZSCL, a random 80/20 split (seed 42, :func:`split_80_20`) of all
images, here listed in ``ClassName.txt`` order and then by file name. Class names are CLIP's
readable ones: ``/a/apartment_building/outdoor`` → 'apartment building outdoor'."""

from __future__ import annotations

import os
from pathlib import Path

from clipcl.data.real.base import (
    FileImageDataset,
    RealDataset,
    Splits,
    read_lines,
    register_dataset,
    split_80_20,
)
from clipcl.errors import ClipclError

#: CLIP's SUN397 prompts (also ZSCL's).
SUN397_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a photo of the {}.")


def readable(class_path: str) -> str:
    """``/a/apartment_building/outdoor`` → 'apartment building outdoor' (CLIP's spelling)."""
    return " ".join(class_path.strip("/").split("/")[1:]).replace("_", " ")


@register_dataset
class SUN397(RealDataset):
    name = "SUN397"
    folder = "SUN397"
    how_to_get = (
        "torchvision.datasets.SUN397(root, download=True), or SUN397.tar.gz from "
        "https://vision.princeton.edu/projects/2010/SUN/ extracted under the data root: "
        "ROOT/SUN397/ClassName.txt and ROOT/SUN397/<letter>/<class>[/<sub>]/sun_*.jpg"
    )
    templates = SUN397_TEMPLATES

    def expected(self) -> list[str]:
        return ["ClassName.txt"]

    def load(self, data_root: str | Path) -> Splits:
        root = self.root(data_root)
        listing = root / "ClassName.txt"
        classes: list[str] = []
        for lineno, line in enumerate(read_lines(listing), 1):
            parts = line.strip("/").split("/")
            if not line.startswith("/") or len(parts) < 2 or len(parts[0]) != 1 or not all(parts):
                raise ClipclError(f"{listing}:{lineno}: expected '/<letter>/<class>', got {line!r}")
            if line in classes:
                raise ClipclError(f"{listing}:{lineno}: class {line} listed twice")
            classes.append(line)
        paths: list[Path] = []
        labels: list[int] = []
        for label, cls in enumerate(classes):
            directory = root / cls.strip("/")
            if not directory.is_dir():
                raise ClipclError(f"class directory not found: {directory} (listed in {listing})")
            files = sorted(
                f for f in os.listdir(directory) if f.startswith("sun_") and f.endswith(".jpg")
            )
            if not files:
                raise ClipclError(f"no sun_*.jpg images in {directory}")
            paths.extend(directory / f for f in files)
            labels.extend([label] * len(files))
        train_idx, test_idx = split_80_20(len(paths))
        return Splits(
            tuple(readable(c) for c in classes),
            FileImageDataset([paths[i] for i in train_idx], [labels[i] for i in train_idx]),
            FileImageDataset([paths[i] for i in test_idx], [labels[i] for i in test_idx]),
        )
