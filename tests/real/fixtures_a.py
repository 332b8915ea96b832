"""Writers of tiny copies of six MTIL datasets in their real on-disk formats (Aircraft,
Caltech101, DTD, EuroSAT, Flowers, Food), for the loader tests."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tests.real.fixtures import write_jpeg

# --- FGVC-Aircraft -------------------------------------------------------------------------------

AIRCRAFT_VARIANTS = ("707-320", "A300B4", "Cessna 172", "F/A-18")


def write_aircraft(root: Path, per_split: int = 2) -> Path:
    """``root/fgvc-aircraft-2013b/data``: variants.txt, images_variant_{train,val,trainval,test}.txt
    and images/<7-digit id>.jpg; ``per_split`` images per variant in train, val and test.
    Image ids count up from 1000000 in the order (split, variant, k)."""
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in AIRCRAFT_VARIANTS))
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    image_id = 1000000
    for split in lines:
        for variant in AIRCRAFT_VARIANTS:
            for _ in range(per_split):
                write_jpeg(data / "images" / f"{image_id}.jpg", image_id, (48, 36))
                lines[split].append(f"{image_id} {variant}")
                image_id += 1
    lines["trainval"] = lines["train"] + lines["val"]
    for split, rows in lines.items():
        (data / f"images_variant_{split}.txt").write_text("".join(f"{r}\n" for r in rows))
    return root / "fgvc-aircraft-2013b"


# --- Caltech-101 ---------------------------------------------------------------------------------

#: Category directory → number of images (BACKGROUND_Google is not a class).
CALTECH_COUNTS = {"BACKGROUND_Google": 2, "Faces": 3, "Leopards": 2, "airplanes": 4, "yin_yang": 3}


def write_caltech101(root: Path, counts: dict[str, int] | None = None) -> Path:
    """``root/caltech101/101_ObjectCategories/<category>/image_NNNN.jpg``."""
    top = root / "caltech101" / "101_ObjectCategories"
    for c, (category, n) in enumerate((counts or CALTECH_COUNTS).items()):
        for i in range(1, n + 1):
            write_jpeg(top / category / f"image_{i:04d}.jpg", 100 * c + i)
    return top


# --- DTD -----------------------------------------------------------------------------------------

DTD_CLASSES = ("banded", "polka-dotted", "zigzagged")


def write_dtd(root: Path, per_split: int = 2) -> Path:
    """``root/dtd/dtd/images/<class>/<class>_NNNN.jpg`` and ``labels/{train,val,test}1.txt``
    (``per_split`` images per class each; the split files list ``<class>/<file>``)."""
    base = root / "dtd" / "dtd"
    lines: dict[str, list[str]] = {"train1": [], "val1": [], "test1": []}
    for c, cls in enumerate(DTD_CLASSES):
        number = 1
        for split in lines:
            for _ in range(per_split):
                name = f"{cls}_{number:04d}.jpg"
                write_jpeg(base / "images" / cls / name, 1000 * c + number)
                lines[split].append(f"{cls}/{name}")
                number += 1
    (base / "labels").mkdir(parents=True, exist_ok=True)
    for split, rows in lines.items():
        (base / "labels" / f"{split}.txt").write_text("".join(f"{r}\n" for r in rows))
    return base


# --- EuroSAT -------------------------------------------------------------------------------------

#: Class directory → number of images.
EUROSAT_COUNTS = {"AnnualCrop": 4, "HerbaceousVegetation": 3, "SeaLake": 3}


def write_eurosat(root: Path, counts: dict[str, int] | None = None) -> Path:
    """``root/eurosat/2750/<ClassName>/<ClassName>_<n>.jpg`` (64×64 like the real images)."""
    top = root / "eurosat" / "2750"
    for c, (cls, n) in enumerate((counts or EUROSAT_COUNTS).items()):
        for i in range(1, n + 1):
            write_jpeg(top / cls / f"{cls}_{i}.jpg", 500 + 100 * c + i, (64, 64))
    return top


# --- Oxford 102 Flowers (and a MATLAB level-5 writer) --------------------------------------------

_MI_CODES = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 9}
_MX_DOUBLE = 6


def _mat_element(order: str, mtype: int, data: bytes) -> bytes:
    if len(data) <= 4:  # small data element format
        return struct.pack(order + "I", (len(data) << 16) | mtype) + data.ljust(4, b"\0")
    return struct.pack(order + "II", mtype, len(data)) + data + b"\0" * (-len(data) % 8)


def mat5_bytes(
    arrays: dict[str, np.ndarray],
    compress: bool = True,
    storage: str = "f8",
    big_endian: bool = False,
) -> bytes:
    """A MATLAB level-5 MAT-file holding ``arrays`` as double arrays (dimensions as given; 1-D
    arrays become 1×N rows, as MATLAB saves these files). ``storage`` is the on-disk number type
    (MATLAB stores integral doubles compactly, e.g. as uint8); ``compress`` wraps every array in
    a zlib-compressed element, as MATLAB 7 does."""
    order = ">" if big_endian else "<"
    out = bytearray(b"MATLAB 5.0 MAT-file, Platform: tests, Created on: today".ljust(116, b" "))
    out += b"\0" * 8 + struct.pack(order + "H", 0x0100) + (b"MI" if big_endian else b"IM")
    for name, array in arrays.items():
        a = np.asarray(array, dtype=np.float64)
        a = a.reshape(1, -1) if a.ndim == 1 else a
        payload = b"".join(
            (
                _mat_element(order, 6, struct.pack(order + "II", _MX_DOUBLE, 0)),
                _mat_element(order, 5, np.asarray(a.shape, dtype=order + "i4").tobytes()),
                _mat_element(order, 1, name.encode()),
                _mat_element(
                    order, _MI_CODES[storage], a.astype(order + storage).tobytes(order="F")
                ),
            )
        )
        element = struct.pack(order + "II", 14, len(payload)) + payload
        if compress:
            packed = zlib.compress(element)
            element = struct.pack(order + "II", 15, len(packed)) + packed
        out += element
    return bytes(out)


#: Image i (1-based) has class FLOWERS_LABELS[i - 1] (1-based, as in imagelabels.mat).
FLOWERS_LABELS = (1, 1, 1, 5, 5, 5, 102, 102, 102, 1, 5, 102)
#: Image ids of each split (setid.mat's trnid / valid / tstid).
FLOWERS_SETID = {"trnid": (1, 4, 7, 10), "valid": (2, 5, 8), "tstid": (3, 6, 9, 11, 12)}


def write_flowers(
    root: Path,
    labels: Sequence[int] = FLOWERS_LABELS,
    setid: dict[str, Sequence[int]] | None = None,
    compress: bool = True,
) -> Path:
    """``root/flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat}``."""
    base = root / "flowers-102"
    for i in range(1, len(labels) + 1):
        write_jpeg(base / "jpg" / f"image_{i:05d}.jpg", 3000 + i, (50, 40))
    (base / "imagelabels.mat").write_bytes(
        mat5_bytes({"labels": np.asarray(labels)}, compress=compress, storage="u1")
    )
    ids = setid or FLOWERS_SETID
    (base / "setid.mat").write_bytes(
        mat5_bytes({k: np.asarray(v) for k, v in ids.items()}, compress=compress, storage="u2")
    )
    return base


# --- Food-101 ------------------------------------------------------------------------------------

FOOD_CLASSES = ("apple_pie", "baby_back_ribs", "waffles")


def write_food(root: Path, n_train: int = 3, n_test: int = 2) -> Path:
    """``root/food-101/images/<class>/<id>.jpg`` and ``meta/{classes,labels,train,test}.txt``
    (split lines ``<class>/<id>``); ids count up from 100000 in the order (class, image)."""
    base = root / "food-101"
    (base / "meta").mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    image_id = 100000
    for cls in FOOD_CLASSES:
        for split, n in (("train", n_train), ("test", n_test)):
            for _ in range(n):
                write_jpeg(base / "images" / cls / f"{image_id}.jpg", image_id)
                lines[split].append(f"{cls}/{image_id}")
                image_id += 1
    (base / "meta" / "classes.txt").write_text("".join(f"{c}\n" for c in FOOD_CLASSES))
    (base / "meta" / "labels.txt").write_text(
        "".join(f"{c.replace('_', ' ').capitalize()}\n" for c in FOOD_CLASSES)
    )
    for split, rows in lines.items():
        (base / "meta" / f"{split}.txt").write_text("".join(f"{r}\n" for r in rows))
    return base
