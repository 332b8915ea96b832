"""Writers of tiny TinyImageNet / ImageNet-R / DomainNet copies in their real on-disk formats
(the class-incremental datasets' loader tests)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tests.real.fixtures import rng_image, write_jpeg

#: Three TinyImageNet classes in ``wnids.txt``'s real first-line order, plus their words.txt lines.
TINY_WNIDS = ("n02124075", "n04067472", "n04540053")
TINY_WORDS = {
    "n02124075": "Egyptian cat",
    "n04067472": "reel",
    "n04540053": "volleyball",
    "n00001740": "entity",
}


def write_tinyimagenet(
    root: Path, wnids: Sequence[str] = TINY_WNIDS, n_train: int = 3, n_val: int = 2
) -> Path:
    """``root/tiny-imagenet-200`` as the cs231n zip unpacks (64×64 JPEGs, tab-separated files).

    Validation images are numbered across classes (``val_<k>.JPEG``, class ``k % len(wnids)``).
    """
    d = root / "tiny-imagenet-200"
    d.mkdir(parents=True, exist_ok=True)
    (d / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    words = {**TINY_WORDS, **{w: f"thing {w}, other" for w in wnids if w not in TINY_WORDS}}
    (d / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in sorted(words.items())))
    for c, wnid in enumerate(wnids):
        boxes = []
        for k in range(n_train):
            name = f"{wnid}_{k}.JPEG"
            write_jpeg(d / "train" / wnid / "images" / name, seed=100 * c + k, size=(64, 64))
            boxes.append(f"{name}\t0\t0\t63\t63\n")
        (d / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    lines = []
    for k in range(n_val * len(wnids)):
        write_jpeg(d / "val" / "images" / f"val_{k}.JPEG", seed=10_000 + k, size=(64, 64))
        lines.append(f"val_{k}.JPEG\t{wnids[k % len(wnids)]}\t1\t2\t60\t61\n")
    (d / "val" / "val_annotations.txt").write_text("".join(lines))
    return d


#: Three ImageNet-R classes (real WordNet ids) and the renditions their files are named after.
IMR_WNIDS = ("n01443537", "n02128757", "n07614500")
_RENDITIONS = ("art", "cartoon", "sketch", "toy", "tattoo")


def write_imagenet_r(root: Path, wnids: Sequence[str] = IMR_WNIDS, n: int = 5) -> Path:
    """``root/imagenet-r/<wnid>/<rendition>_<k>.jpg`` as ``imagenet-r.tar`` unpacks."""
    d = root / "imagenet-r"
    for c, wnid in enumerate(wnids):
        for k in range(n):
            write_jpeg(d / wnid / f"{_RENDITIONS[k % 5]}_{k}.jpg", seed=200 * c + k)
    return d


def write_imagenet_r_lists(d: Path, train: Sequence[str], val: Sequence[str]) -> None:
    """NSP²'s ``imagenet_r_{train,val}.txt`` (lines ``<wnid>/<file>``, no trailing newline)."""
    (d / "imagenet_r_train.txt").write_text("\n".join(train))
    (d / "imagenet_r_val.txt").write_text("\n".join(val))


DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
#: Class folders of the tiny DomainNet, labelled 0.. in the official (case-insensitive) order.
DN_CLASSES = ("kangaroo", "pickup_truck", "sweater", "The_Eiffel_Tower")


def write_domainnet(
    root: Path, classes: Sequence[str] = DN_CLASSES, n_train: int = 2, n_test: int = 1
) -> Path:
    """``root/domainnet/<domain>/<class>/<domain>_<NNN>_<KKKKKK>.jpg`` (quickdraw: ``<id>.png``)
    and the official ``<domain>_{train,test}.txt`` lists (``<rel path> <label>``)."""
    d = root / "domainnet"
    for j, domain in enumerate(DOMAINS):
        lists: dict[str, list[str]] = {"train": [], "test": []}
        for label, folder in enumerate(classes):
            for k in range(n_train + n_test):
                if domain == "quickdraw":
                    file = f"{5_000_000_000_000 + 1000 * label + k}.png"
                else:
                    file = f"{domain}_{label + 1:03d}_{k + 1:06d}.jpg"
                path = d / domain / folder / file
                path.parent.mkdir(parents=True, exist_ok=True)
                rng_image(1000 * j + 10 * label + k, (32, 32)).save(path)
                lists["train" if k < n_train else "test"].append(
                    f"{domain}/{folder}/{file} {label}"
                )
        for split, lines in lists.items():
            (d / f"{domain}_{split}.txt").write_text("".join(f"{ln}\n" for ln in lines))
    return d
