"""TinyImageNet (200 classes, 64×64) from the cs231n archive ``tiny-imagenet-200.zip``.

Labels follow the order of ``wnids.txt`` (label i ↔ line i), as continuum's ``TinyImageNet200``
does for Continual-CLIP, ZSCL, MoE-Adapters and DMNSP, so their class order
(:func:`class_order`) indexes the same classes. Train = ``train/``, test = the labelled ``val/``
split (the archive's ``test/`` has no labels). Class names are CLIP's curated ImageNet names (the
names those repositories prompt with, ``dataset_reqs/tinyimagenet_classes.txt``), not
``words.txt``'s first synonyms ("Egyptian Mau", not "Egyptian cat"); ``words.txt`` is only the
fallback for a WordNet id outside that table.
"""

from __future__ import annotations

import os
from pathlib import Path

from clipcl.data.real.base import FileImageDataset, RealDataset, Splits, need, register_dataset
from clipcl.data.real.imagenet_names import CLIP_IMAGENET_NAMES
from clipcl.data.real.orders import python_shuffle_order
from clipcl.errors import ClipclError

#: Continual-CLIP / ZSCL-CIL / DMNSP train and evaluate with this one prompt (their configs'
#: ``prompt_template``); the lineage has no ensemble for TinyImageNet.
TINYIMAGENET_TEMPLATES: tuple[str, ...] = ("a bad photo of a {}.",)


def class_order() -> list[int]:
    """The TinyImageNet class order of Continual-CLIP / ZSCL / MoE-Adapters / DMNSP.

    Their ``class_orders/tinyimagenet.yaml`` (identical in all four) equals
    ``random.Random(0).shuffle(list(range(200)))``; labels are ``wnids.txt`` positions.
    """
    return python_shuffle_order(200, seed=0)


def _words(path: Path) -> dict[str, str]:
    """``words.txt``: WordNet id → its first synonym (lines ``wnid<TAB>syn, syn, ...``)."""
    out = {}
    for n, line in enumerate(need(path).read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        wnid, sep, synonyms = line.partition("\t")
        if not sep:
            raise ClipclError(f"{path}:{n}: expected 'wnid<TAB>names', got {line[:60]!r}")
        out[wnid.strip()] = synonyms.split(",")[0].strip()
    return out


def _images(directory: Path) -> list[str]:
    """Sorted ``*.JPEG`` file names of a directory (``ClipclError`` naming it when absent)."""
    if not directory.is_dir():
        raise ClipclError(f"directory not found: {directory}/")
    return sorted(f for f in os.listdir(directory) if f.lower().endswith((".jpeg", ".jpg")))


@register_dataset
class TinyImageNet(RealDataset):
    name = "TinyImageNet"
    folder = "tiny-imagenet-200"
    how_to_get = (
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip (what continuum's TinyImageNet200 "
        "downloads) unzipped under the data root: ROOT/tiny-imagenet-200/{wnids.txt, words.txt, "
        "train/<wnid>/images/<wnid>_<k>.JPEG, val/val_annotations.txt, val/images/val_<k>.JPEG}"
    )
    templates = TINYIMAGENET_TEMPLATES

    def expected(self) -> list[str]:
        return ["wnids.txt", "words.txt", "train/", "val/val_annotations.txt", "val/images/"]

    def load(self, data_root: str | Path) -> Splits:
        root = self.root(data_root)
        wnids = [ln.strip() for ln in need(root / "wnids.txt").read_text().splitlines()]
        wnids = [w for w in wnids if w]
        if not wnids or len(set(wnids)) != len(wnids):
            raise ClipclError(f"{root / 'wnids.txt'}: empty or has repeated WordNet ids")
        label = {w: i for i, w in enumerate(wnids)}
        return Splits(self._names(root, wnids), self._train(root, wnids), self._val(root, label))

    def _names(self, root: Path, wnids: list[str]) -> tuple[str, ...]:
        if all(w in CLIP_IMAGENET_NAMES for w in wnids):
            return tuple(CLIP_IMAGENET_NAMES[w] for w in wnids)
        words = _words(root / "words.txt")
        unknown = [w for w in wnids if w not in CLIP_IMAGENET_NAMES and w not in words]
        if unknown:
            raise ClipclError(f"{root / 'wnids.txt'}: WordNet id {unknown[0]} not in words.txt")
        return tuple(CLIP_IMAGENET_NAMES.get(w) or words[w] for w in wnids)

    def _train(self, root: Path, wnids: list[str]) -> FileImageDataset:
        paths: list[Path] = []
        labels: list[int] = []
        for i, wnid in enumerate(wnids):
            directory = root / "train" / wnid / "images"
            files = _images(directory)
            if not files:
                raise ClipclError(f"{directory}/: no .JPEG images")
            paths += [directory / f for f in files]
            labels += [i] * len(files)
        return FileImageDataset(paths, labels)

    def _val(self, root: Path, label: dict[str, int]) -> FileImageDataset:
        ann = root / "val" / "val_annotations.txt"
        present = set(_images(root / "val" / "images"))
        rows: dict[str, int] = {}
        for n, line in enumerate(need(ann).read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2:
                raise ClipclError(f"{ann}:{n}: expected 'file<TAB>wnid<TAB>box', got {line[:60]!r}")
            file, wnid = parts[0].strip(), parts[1].strip()
            if wnid not in label:
                raise ClipclError(f"{ann}:{n}: WordNet id {wnid!r} is not in wnids.txt")
            if file not in present:
                raise ClipclError(f"{ann}:{n}: image not found: {root / 'val' / 'images' / file}")
            if file in rows:
                raise ClipclError(f"{ann}:{n}: {file} is annotated twice")
            rows[file] = label[wnid]
        images = root / "val" / "images"
        files = sorted(rows)
        return FileImageDataset([images / f for f in files], [rows[f] for f in files])
