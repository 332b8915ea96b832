"""DomainNet (Peng et al., ICCV 2019; six domains × 345 classes) with its official split lists, and
the 200-class "DomainNet 10-split" of the CLIP class-incremental literature.

``DomainNet`` reads ``<domain>_train.txt`` / ``<domain>_test.txt`` (lines ``<domain>/<class>/<file>
<label>``, labels 0–344 as published) for all six domains: train = the six train lists, test =
the six test lists; class names are the folder names with ``_`` → space.

**DomainNet-200** (``DomainNet200``; :func:`select_domainnet200`): the benchmark NSP² (Lu et al.,
NeurIPS 2024, github.com/zugexiaodui/VPTinNSforCL) calls "10-split DomainNet" and DMNSP-era CLIP
papers report as "DomainNet 10-split (200 classes)". Its definition is NSP²'s pair of lists
``tools/sdomain_{train,val}.txt`` (47,532 / 20,449 images): 200 distinct classes, each taken from
ONE domain, labelled 0–199 in blocks of 20 per domain — real, sketch, painting, quickdraw,
quickdraw, painting, real, clipart, sketch, infograph (:data:`DOMAINNET200_TASKS`, read from those
lists). How NSP² chose the 200 (domain, class) pairs is not documented. Its images are, as far as
can be checked, the official train / test lists restricted to those pairs (quickdraw classes have
exactly the official 350 train / 150 test images; the overall 70/30 ratio matches); the other
domains could not be compared file by file. NSP² then shuffles the 200 labels with PCG64(seed),
so its tasks mix domains (:func:`class_order`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from clipcl.data.real.base import FileImageDataset, RealDataset, Splits, need, register_dataset
from clipcl.data.real.orders import pcg64_shuffle_order
from clipcl.errors import ClipclError

DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
NUM_CLASSES = 345

#: [0] the CIL papers' prompt (METHODS.md §2); then the domain ensemble NSP² evaluates
#: DomainNet-200 with (``clip/text_prompts.py``).
DOMAINNET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    *(
        f"a {what} of {article} {{}}"
        for what in ("clipart", "infograph", "painting", "quickdraw", "real photo", "sketch")
        for article in ("a", "the")
    ),
)

#: DomainNet-200's ten blocks of 20 classes (label order): (domain, class folders).
DOMAINNET200_TASKS: tuple[tuple[str, str], ...] = (
    ("real", "pickup_truck sweater The_Eiffel_Tower backpack waterslide lion submarine toothpaste "
     "banana television cruise_ship lighthouse sandwich bee rhinoceros tornado golf_club ladder "
     "tiger castle"),
    ("sketch", "kangaroo frog pillow goatee horse circle toothbrush washing_machine eye river "
     "basket spoon sea_turtle bracelet coffee_cup strawberry squirrel cat teapot mug"),
    ("painting", "elephant swan raccoon onion animal_migration nail sock sword hedgehog donut "
     "crocodile ocean leg drums hand penguin speedboat zigzag pizza windmill"),
    ("quickdraw", "square shovel guitar sheep suitcase flashlight steak duck sailboat triangle "
     "yoga broccoli beach fence binoculars garden shorts mushroom teddy-bear bicycle"),
    ("quickdraw", "snowman see_saw pineapple truck shoe nose hexagon squiggle umbrella ice_cream "
     "candle grass necklace barn popsicle palm_tree rabbit eyeglasses motorbike dog"),
    ("painting", "bus dumbbell pond whale cake wine_bottle moon pig sleeping_bag feather tent "
     "brain fish bird scorpion wine_glass snorkel map stove school_bus"),
    ("real", "pear dolphin rollerskates moustache mountain stethoscope spider bottlecap bowtie "
     "octopus watermelon car toilet light_bulb harp door asparagus tree table toaster"),
    ("clipart", "tractor spreadsheet skateboard helmet beard monkey vase crab skyscraper snail "
     "train giraffe finger cup butterfly scissors zebra parachute stairs bench"),
    ("sketch", "owl book rifle carrot trombone flower streetlight wristwatch snake pool saxophone "
     "grapes violin hamburger bread face bridge hat lobster shark"),
    ("infograph", "headphones leaf house_plant skull telephone envelope broom hot_tub bed canoe "
     "firetruck bear sun syringe hot_air_balloon van helicopter flamingo blueberry parrot"),
)  # fmt: skip
#: The 200 (domain, class folder) pairs; label i ↔ ``DOMAINNET200[i]``.
DOMAINNET200: tuple[tuple[str, str], ...] = tuple(
    (domain, folder) for domain, folders in DOMAINNET200_TASKS for folder in folders.split()
)


def class_order(seed: int = 2024) -> list[int]:
    """NSP²'s DomainNet-200 order: labels 0–199 shuffled by PCG64(``seed``) (class level)."""
    return pcg64_shuffle_order(len(DOMAINNET200), seed)


class _Listing:
    """File names per ``<domain>/<class>`` folder, each listed once (a cheap existence test)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, set[str]] = {}

    def has(self, rel: str) -> bool:
        folder, _, file = rel.rpartition("/")
        if folder not in self._cache:
            d = self.root / folder
            self._cache[folder] = set(os.listdir(d)) if d.is_dir() else set()
        return file in self._cache[folder]


def _read_list(
    path: Path, domain: str, listing: _Listing, folders: dict[int, str], labels_of: dict[str, int]
) -> tuple[list[str], list[int]]:
    """One official list: (relative paths, labels); checks the domain, label, folder and file."""
    rels: list[str] = []
    labels: list[int] = []
    for n, line in enumerate(need(path).read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        rel = parts[0]
        bits = rel.split("/")
        if len(parts) != 2 or not parts[1].isdigit() or len(bits) != 3 or bits[0] != domain:
            raise ClipclError(
                f"{path}:{n}: expected '{domain}/<class>/<file> <label>', got {line!r}"
            )
        label = int(parts[1])
        if label >= NUM_CLASSES:
            raise ClipclError(f"{path}:{n}: label {label} out of range 0..{NUM_CLASSES - 1}")
        if folders.setdefault(label, bits[1]) != bits[1]:
            raise ClipclError(f"{path}:{n}: label {label} is {folders[label]!r} elsewhere")
        if labels_of.setdefault(bits[1], label) != label:
            raise ClipclError(f"{path}:{n}: {bits[1]!r} has label {labels_of[bits[1]]} elsewhere")
        if not listing.has(rel):
            raise ClipclError(f"{path}:{n}: image not found: {listing.root / rel}")
        rels.append(rel)
        labels.append(label)
    return rels, labels


@register_dataset
class DomainNet(RealDataset):
    name = "DomainNet"
    folder = "domainnet"
    how_to_get = (
        "the six domain zips and their <domain>_train.txt / <domain>_test.txt lists from "
        "http://ai.bu.edu/M3SDA/ (cleaned version), all extracted into ROOT/domainnet/: "
        "ROOT/domainnet/<domain>/<class>/<file>.jpg|.png and ROOT/domainnet/<domain>_{train,test}"
        ".txt for domain in clipart, infograph, painting, quickdraw, real, sketch"
    )
    templates = DOMAINNET_TEMPLATES

    def expected(self) -> list[str]:
        lists = [f"{d}_{s}.txt" for d in DOMAINS for s in ("train", "test")]
        return [*lists, *(f"{d}/" for d in DOMAINS)]

    def load(self, data_root: str | Path) -> Splits:
        root = self.root(data_root)
        listing = _Listing(root)
        folders: dict[int, str] = {}  # official label -> class folder
        labels_of: dict[str, int] = {}  # and back: the two must agree in all 12 lists
        parts = []
        for split in ("train", "test"):
            rels: list[str] = []
            labels: list[int] = []
            for domain in DOMAINS:
                r, y = _read_list(
                    root / f"{domain}_{split}.txt", domain, listing, folders, labels_of
                )
                rels += r
                labels += y
            parts.append(FileImageDataset([root / r for r in rels], labels))
        gaps = [i for i in range(max(folders, default=-1) + 1) if i not in folders]
        if not folders or gaps:
            raise ClipclError(
                f"{root}/<domain>_{{train,test}}.txt: no image has label {(gaps or [0])[0]} "
                "(labels must run 0..K-1 without gaps)"
            )
        names = tuple(folders[i].replace("_", " ") for i in range(len(folders)))
        return Splits(names, parts[0], parts[1])


def select_domainnet200(splits: Splits, pairs: Sequence[tuple[str, str]] = DOMAINNET200) -> Splits:
    """DomainNet's images of the (domain, class folder) ``pairs``, relabelled 0..len(pairs)-1.

    ``splits`` must be :class:`DomainNet`'s own (path-based) splits: the domain and class of an
    image are read from its path. ``ClipclError`` when a pair has no train or no test image.
    """
    index = {pair: i for i, pair in enumerate(pairs)}
    out = []
    for part in (splits.train, splits.test):
        if not isinstance(part, FileImageDataset):
            raise ClipclError(
                "the DomainNet-200 selection needs DomainNet's image paths; use the DomainNet200 "
                "dataset (its own cache) rather than selecting from cached DomainNet splits"
            )
        paths: list[str] = []
        labels: list[int] = []
        for path in part.paths:
            p = Path(path)
            i = index.get((p.parent.parent.name, p.parent.name))
            if i is not None:
                paths.append(path)
                labels.append(i)
        seen = set(labels)
        missing = [pairs[i] for i in range(len(pairs)) if i not in seen]
        if missing:
            what = ", ".join("/".join(m) for m in missing[:3])
            raise ClipclError(f"DomainNet-200: {len(missing)} classes have no images, e.g. {what}")
        out.append(FileImageDataset(paths, labels))
    names = tuple(folder.replace("_", " ") for _, folder in pairs)
    return Splits(names, out[0], out[1])


@register_dataset
class DomainNet200(DomainNet):
    """DomainNet-200 as a dataset of its own (so it has its own pre-resized cache)."""

    name = "DomainNet200"

    def load(self, data_root: str | Path) -> Splits:
        return select_domainnet200(super().load(data_root))
