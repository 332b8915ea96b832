"""Oxford-IIIT Pet (``oxford-iiit-pet/``), the layout torchvision's
``OxfordIIITPet(root, download=True)`` leaves behind and ZSCL's MTIL code reads: ``images/*.jpg``
and the split lists ``annotations/trainval.txt`` (training) and ``annotations/test.txt`` (test),
one ``<image> <class id 1-37> <species 1-2> <breed id>`` line per image.

Class names come from the image names (``american_bulldog_12`` → 'american bulldog',
``British_Shorthair_3`` → 'British Shorthair'): the spelling of CLIP's class list, where cat
breeds are capitalised as in the file names (the CLIP tokenizer lower-cases text anyway)."""

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

#: CLIP's Oxford-IIIT Pet prompt (its only one), also ZSCL's.
PETS_TEMPLATES: tuple[str, ...] = ("a photo of a {}, a type of pet.",)

NUM_CLASSES = 37


@register_dataset
class OxfordPet(RealDataset):
    name = "OxfordPet"
    folder = "oxford-iiit-pet"
    how_to_get = (
        "torchvision.datasets.OxfordIIITPet(root, download=True), or images.tar.gz and "
        "annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/ extracted into "
        "ROOT/oxford-iiit-pet/ (images/*.jpg, annotations/trainval.txt, annotations/test.txt)"
    )
    templates = PETS_TEMPLATES

    def expected(self) -> list[str]:
        return ["images/", "annotations/trainval.txt", "annotations/test.txt"]

    def load(self, data_root: str | Path) -> Splits:
        root = self.root(data_root)
        images_dir = root / "images"
        if not images_dir.is_dir():
            raise ClipclError(f"directory not found: {images_dir}")
        present = set(os.listdir(images_dir))
        names: dict[int, tuple[str, Path]] = {}  # class id → (breed name, where it was read)
        parts = []
        for split in ("trainval", "test"):
            ann = root / "annotations" / f"{split}.txt"
            paths, labels = [], []
            for lineno, line in enumerate(read_lines(ann), 1):
                if line.startswith("#"):
                    continue
                fields = line.split()
                if len(fields) != 4 or not fields[1].isdigit():
                    raise ClipclError(
                        f"{ann}:{lineno}: expected '<image> <class id> <species> <breed id>', "
                        f"got {line!r}"
                    )
                image, class_id = fields[0], int(fields[1])
                if not 1 <= class_id <= NUM_CLASSES:
                    raise ClipclError(
                        f"{ann}:{lineno}: class id {class_id} out of range 1-{NUM_CLASSES}"
                    )
                if f"{image}.jpg" not in present:
                    raise ClipclError(
                        f"{ann}:{lineno}: image {images_dir / (image + '.jpg')} not found"
                    )
                breed = image.rsplit("_", 1)[0].replace("_", " ")
                seen = names.setdefault(class_id, (breed, ann))
                if seen[0] != breed:
                    raise ClipclError(
                        f"{ann}:{lineno}: class id {class_id} is '{breed}' here but "
                        f"'{seen[0]}' in {seen[1]}"
                    )
                paths.append(images_dir / f"{image}.jpg")
                labels.append(class_id - 1)
            parts.append(FileImageDataset(paths, labels))
        absent = sorted(set(range(1, NUM_CLASSES + 1)) - set(names))
        if absent:
            raise ClipclError(
                f"{root / 'annotations'}: class ids {absent} appear in neither trainval.txt "
                "nor test.txt"
            )
        class_names = tuple(names[i][0] for i in range(1, NUM_CLASSES + 1))
        return Splits(class_names, parts[0], parts[1])
