"""The ImageNet test variants used as held-out evaluation sets (``eval.extra``), each in the
layout its authors release; none has a training split (``train`` is the test split, never
trained on: ``eval.extra`` reads only ``test``).

- **ImageNet-A** (Hendrycks et al. 2021, ``imagenet-a.tar``): ``ROOT/imagenet-a/<wnid>/*.jpg``,
  200 WordNet-id folders (7,500 images).
- **ImageNet-Sketch** (Wang et al. 2019, ``ImageNet-Sketch.zip``): ``ROOT/sketch/<wnid>/*``,
  1,000 folders (50,889 images).
- **ImageNetV2** (Recht et al. 2019, ``imagenetv2-matched-frequency.tar.gz``):
  ``ROOT/imagenetv2-matched-frequency-format-val/<k>/*.jpeg``, folders named by the ImageNet
  class index k = 0..999 (the sorted-wnid order).
- **ObjectNet** (Barbu et al. 2019, ``objectnet-1.0.zip``): ``ROOT/objectnet-1.0/images/<folder>/
  *.png`` with ``mappings/folder_to_objectnet_label.json`` and
  ``mappings/objectnet_to_imagenet_1k.json``; the classes are the 113 ObjectNet classes that
  map to ImageNet classes (the subset CLIP-style zero-shot evaluations report), named by their
  ObjectNet label, and the 1-pixel border every ObjectNet image carries is cropped.

Labels follow the sorted folder names (ImageNetV2: the class index). Class names: CLIP's
curated name of a wnid where clipcl has it (``imagenet_names``), else the first name in an
ImageNet ``LOC_synset_mapping.txt`` — the dataset's own folder first, then
``ROOT/ImageNet/`` (where the ImageNet loader reads it) — else the wnid. ImageNetV2's folders
are indices, so it needs that mapping file (1,000 lines, sorted by wnid) to name them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from PIL import Image

from clipcl.data.real.base import (
    FileImageDataset,
    RealDataset,
    Splits,
    clip_resize,
    need,
    register_dataset,
)
from clipcl.data.real.imagenet import IMAGE_EXTENSIONS, SYNSET_MAPPING, read_synset_mapping
from clipcl.data.real.imagenet_names import CLIP_IMAGENET_NAMES
from clipcl.data.real.imagenet_r import IMAGENET_R_TEMPLATES
from clipcl.errors import ClipclError

_WNID = re.compile(r"n\d{8}")


def _mapping(folder: Path, data_root: Path) -> tuple[Path | None, dict[str, str]]:
    """The first ``LOC_synset_mapping.txt`` found (the dataset's folder, then ImageNet's)."""
    for path in (folder / SYNSET_MAPPING, data_root / "ImageNet" / SYNSET_MAPPING):
        if path.is_file():
            return path, read_synset_mapping(path)
    return None, {}


def _names(wnids: list[str], folder: Path, data_root: Path) -> tuple[str, ...]:
    _, mapping = _mapping(folder, data_root)
    return tuple(CLIP_IMAGENET_NAMES.get(w) or mapping.get(w) or w for w in wnids)


def _files(directory: Path, suffixes: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[str]:
    files = sorted(f for f in os.listdir(directory) if f.lower().endswith(suffixes))
    if not files:
        raise ClipclError(f"{directory}/: no images")
    return files


def _wnid_folders(root: Path, expected: int | None) -> list[str]:
    """The sorted wnid folders of ``root``; a folder that is no wnid is named in the error."""
    dirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not dirs:
        raise ClipclError(f"{root}/: no class folders (expected <wnid>/ folders)")
    bad = [d for d in dirs if not _WNID.fullmatch(d)]
    if bad:
        raise ClipclError(f"{root / bad[0]}/: not a WordNet id folder (n + 8 digits)")
    if expected is not None and len(dirs) > expected:
        raise ClipclError(f"{root}/: {len(dirs)} class folders, more than the {expected} it has")
    return dirs


def _by_folder(root: Path, folders: list[str]) -> FileImageDataset:
    paths, labels = [], []
    for label, name in enumerate(folders):
        files = _files(root / name)
        paths += [root / name / f for f in files]
        labels += [label] * len(files)
    return FileImageDataset(paths, labels)


class _WnidFolders(RealDataset):
    """A test set of ``<wnid>/`` image folders (ImageNet-A, ImageNet-Sketch)."""

    classes: int = 1000
    templates = IMAGENET_R_TEMPLATES  # CLIP's 7-prompt ImageNet ensemble (plus the CIL prompt)

    def expected(self) -> list[str]:
        return ["./"]

    def load(self, data_root: str | Path) -> Splits:
        root = need(self.root(data_root), "directory")
        wnids = _wnid_folders(root, self.classes)
        test = _by_folder(root, wnids)
        return Splits(_names(wnids, root, Path(data_root)), test, test)


@register_dataset
class ImageNetA(_WnidFolders):
    name = "ImageNet-A"
    folder = "imagenet-a"
    classes = 200
    how_to_get = (
        "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar extracted under the data "
        "root: ROOT/imagenet-a/<wnid>/*.jpg (200 WordNet-id folders)"
    )


@register_dataset
class ImageNetSketch(_WnidFolders):
    name = "ImageNet-Sketch"
    folder = "sketch"
    how_to_get = (
        "ImageNet-Sketch.zip (github.com/HaohanWang/ImageNet-Sketch) extracted under the data "
        "root: ROOT/sketch/<wnid>/*.JPEG (1,000 WordNet-id folders); names from an ImageNet "
        f"{SYNSET_MAPPING} in ROOT/sketch/ or ROOT/ImageNet/ where clipcl has none"
    )


@register_dataset
class ImageNetV2(RealDataset):
    name = "ImageNetV2"
    folder = "imagenetv2-matched-frequency-format-val"
    how_to_get = (
        "imagenetv2-matched-frequency.tar.gz (github.com/modestyachts/ImageNetV2) extracted "
        "under the data root: ROOT/imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg, and "
        f"ImageNet's {SYNSET_MAPPING} (1,000 lines, sorted by wnid) in that folder or in "
        "ROOT/ImageNet/ to name the class indices"
    )
    templates = IMAGENET_R_TEMPLATES

    def expected(self) -> list[str]:
        return ["./"]

    def load(self, data_root: str | Path) -> Splits:
        root = need(self.root(data_root), "directory")
        dirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        bad = [d for d in dirs if not d.isdigit() or not 0 <= int(d) < 1000]
        if bad:
            raise ClipclError(f"{root / bad[0]}/: not a class index folder (0..999)")
        if not dirs:
            raise ClipclError(f"{root}/: no class folders (expected 0/ .. 999/)")
        path, mapping = _mapping(root, Path(data_root))
        if path is None:
            raise ClipclError(
                f"{root}/: its folders are ImageNet class indices; put ImageNet's {SYNSET_MAPPING} "
                f"in {root}/ or {Path(data_root) / 'ImageNet'}/ to name them"
            )
        wnids = sorted(mapping)
        if len(wnids) != 1000:
            raise ClipclError(f"{path}: {len(wnids)} classes, ImageNetV2 needs all 1,000")
        indices = sorted(int(d) for d in dirs)
        folders = [str(k) for k in indices]
        test = _by_folder(root, folders)
        names = tuple(CLIP_IMAGENET_NAMES.get(wnids[k]) or mapping[wnids[k]] for k in indices)
        return Splits(names, test, test)


class _Bordered(FileImageDataset):
    """Images with a ``border``-pixel frame cropped before the CLIP resize (ObjectNet's)."""

    border = 1

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as im:
            w, h = im.size
            b = self.border
            return clip_resize(im.crop((b, b, w - b, h - b)), self.size), self.labels[index]


@register_dataset
class ObjectNet(RealDataset):
    name = "ObjectNet"
    folder = "objectnet-1.0"
    how_to_get = (
        "objectnet-1.0.zip (objectnet.dev) extracted under the data root: "
        "ROOT/objectnet-1.0/images/<folder>/*.png and ROOT/objectnet-1.0/mappings/"
        "{folder_to_objectnet_label,objectnet_to_imagenet_1k}.json"
    )
    templates = IMAGENET_R_TEMPLATES

    def expected(self) -> list[str]:
        return [
            "images/",
            "mappings/folder_to_objectnet_label.json",
            "mappings/objectnet_to_imagenet_1k.json",
        ]

    def load(self, data_root: str | Path) -> Splits:
        root = self.root(data_root)
        labels = _json_object(root / "mappings" / "folder_to_objectnet_label.json")
        to_imagenet = _json_object(root / "mappings" / "objectnet_to_imagenet_1k.json")
        images = need(root / "images", "directory")
        folders = sorted(e.name for e in os.scandir(images) if e.is_dir())
        unknown = [f for f in folders if f not in labels]
        if unknown:
            raise ClipclError(
                f"{images / unknown[0]}/: not in mappings/folder_to_objectnet_label.json"
            )
        kept = [f for f in folders if labels[f] in to_imagenet]  # the ImageNet-overlap classes
        if not kept:
            raise ClipclError(f"{images}/: no folder of a class that maps to ImageNet")
        paths, ys = [], []
        for label, folder in enumerate(kept):
            files = _files(images / folder, (".png", ".jpg", ".jpeg"))
            paths += [images / folder / f for f in files]
            ys += [label] * len(files)
        test = _Bordered(paths, ys)
        return Splits(tuple(str(labels[f]) for f in kept), test, test)


def _json_object(path: Path) -> dict[str, str]:
    need(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ClipclError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ClipclError(f"{path}: expected a JSON object of names")
    return {str(k): str(v) for k, v in data.items()}
