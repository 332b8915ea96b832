"""Writers of tiny MNIST, Oxford-IIIT Pet, Stanford Cars, SUN397 and ImageNet copies in their real
on-disk formats (idx files, annotation lists, MATLAB 5 MAT-files, folder trees)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from tests.real.fixtures import write_jpeg

SMALL = (16, 12)  # tiny JPEGs keep the fixtures fast

# ---------------------------------------------------------------------------------------------
# MNIST: idx files


def idx_bytes(array: np.ndarray) -> bytes:
    """A uint8 array in the idx format: 00 00 08 <ndim>, big-endian uint32 dims, the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


def write_mnist(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = False) -> Path:
    """``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; labels i % 10."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = mnist_arrays(n, seed)
        for name, array in (
            (f"{prefix}-images-idx3-ubyte", images),
            (f"{prefix}-labels-idx1-ubyte", labels),
        ):
            data = idx_bytes(array)
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
    return raw


# ---------------------------------------------------------------------------------------------
# Oxford-IIIT Pet: images/*.jpg + annotations/{trainval,test}.txt

# Real breed spellings for the first classes (cats capitalised, dogs lower-case), then fillers.
PET_BREEDS = [
    "Abyssinian",
    "american_bulldog",
    "american_pit_bull_terrier",
    "British_Shorthair",
] + [f"breed_{i:02d}" for i in range(4, 37)]


def write_pets(root: Path, n_trainval: int = 2, n_test: int = 1) -> Path:
    """37 breeds, ``n_trainval`` + ``n_test`` images each; class id = breed index + 1."""
    base = root / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for cid, breed in enumerate(PET_BREEDS, 1):
        species = 1 if breed[0].isupper() else 2
        for k in range(1, n_trainval + n_test + 1):
            image = f"{breed}_{k}"
            write_jpeg(base / "images" / f"{image}.jpg", seed=cid * 10 + k, size=SMALL)
            split = "trainval" if k <= n_trainval else "test"
            lines[split].append(f"{image} {cid} {species} {cid}")
    for split, rows in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return base


# ---------------------------------------------------------------------------------------------
# MATLAB 5 MAT-file writer (cell arrays of strings, struct arrays, numbers, strings)


def _element(kind: int, data: bytes, order: str) -> bytes:
    if len(data) <= 4 and kind != 14:  # small data element format
        return struct.pack(order + "I", (len(data) << 16) | kind) + data.ljust(4, b"\0")
    pad = (-len(data)) % 8
    return struct.pack(order + "II", kind, len(data)) + data + b"\0" * pad


def _mat_matrix(name: str, value: Any, order: str) -> bytes:
    def header(mx: int, dims: tuple[int, ...]) -> bytes:
        flags = _element(6, struct.pack(order + "II", mx, 0), order)
        shape = _element(5, struct.pack(order + f"{len(dims)}i", *dims), order)
        return flags + shape + _element(1, name.encode("ascii"), order)

    if isinstance(value, str):  # char array 1×n, stored as UTF-16 code units (as MATLAB does)
        codes = np.array([ord(c) for c in value], dtype=order + "u2")
        body = header(4, (1, len(value))) + _element(4, codes.tobytes(), order)
    elif isinstance(value, list) and all(isinstance(v, dict) for v in value) and value:
        fields = list(value[0])
        width = max(len(f) for f in fields) + 1
        body = header(2, (1, len(value)))
        body += _element(5, struct.pack(order + "i", width), order)
        body += _element(1, b"".join(f.encode().ljust(width, b"\0") for f in fields), order)
        body += b"".join(_mat_matrix("", rec[f], order) for rec in value for f in fields)
    elif isinstance(value, list):  # cell array 1×n
        body = header(1, (1, len(value))) + b"".join(_mat_matrix("", v, order) for v in value)
    elif isinstance(
        value, int
    ):  # a double scalar, stored compactly as uint8/uint16 (as MATLAB does)
        kind, code = (2, "u1") if 0 <= value < 256 else (4, "u2")
        body = header(6, (1, 1)) + _element(kind, np.array([value], order + code).tobytes(), order)
    else:
        raise TypeError(f"cannot write {type(value)}")
    return _element(14, body, order)


def write_mat(
    path: Path, variables: dict[str, Any], compress: bool = True, order: str = "<"
) -> Path:
    """A MATLAB 5 MAT-file (level 5; compressed variables as MATLAB 7 saves them by default)."""
    text = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024"
    out = text.ljust(116, b" ") + b"\0" * 8 + struct.pack(order + "H", 0x0100)
    out += b"IM" if order == "<" else b"MI"
    for name, value in variables.items():
        matrix = _mat_matrix(name, value, order)
        if compress:
            packed = zlib.compress(matrix)
            out += struct.pack(order + "II", 15, len(packed)) + packed
        else:
            out += matrix
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return path


# ---------------------------------------------------------------------------------------------
# Stanford Cars: cars_train/, cars_test/, devkit/*.mat, cars_test_annos_withlabels.mat

CAR_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"] + [
    f"Make Model {i} 2012" for i in range(2, 196)
]
CARS_TRAIN = [(1, 1), (2, 2), (3, 196), (4, 1), (5, 50)]  # (image number, 1-based class)
CARS_TEST = [(1, 2), (2, 196), (3, 1)]


def _car_annotations(items: list[tuple[int, int]]) -> list[dict[str, Any]]:
    return [
        {
            "bbox_x1": 1,
            "bbox_y1": 2,
            "bbox_x2": 14,
            "bbox_y2": 10,
            "class": cls,
            "fname": f"{n:05d}.jpg",
        }
        for n, cls in items
    ]


def write_cars(root: Path, compress: bool = True, order: str = "<") -> Path:
    base = root / "stanford_cars"
    for folder, items, off in (("cars_train", CARS_TRAIN, 0), ("cars_test", CARS_TEST, 100)):
        for n, _ in items:
            write_jpeg(base / folder / f"{n:05d}.jpg", seed=off + n, size=SMALL)
    write_mat(base / "devkit" / "cars_meta.mat", {"class_names": CAR_NAMES}, compress, order)
    write_mat(
        base / "devkit" / "cars_train_annos.mat",
        {"annotations": _car_annotations(CARS_TRAIN)},
        compress,
        order,
    )
    write_mat(
        base / "cars_test_annos_withlabels.mat",
        {"annotations": _car_annotations(CARS_TEST)},
        compress,
        order,
    )
    return base


# ---------------------------------------------------------------------------------------------
# SUN397: ClassName.txt + <letter>/<class>[/<sub>]/sun_*.jpg

SUN_CLASSES = {"/a/abbey": 4, "/a/apartment_building/outdoor": 3, "/b/bedroom": 3}


def write_sun397(root: Path) -> Path:
    base = root / "SUN397"
    base.mkdir(parents=True, exist_ok=True)
    (base / "ClassName.txt").write_text("\n".join(SUN_CLASSES) + "\n")
    seed = 0
    for cls, n in SUN_CLASSES.items():
        for k in range(n):
            seed += 1
            write_jpeg(base / cls.strip("/") / f"sun_a{k:03d}xyz.jpg", seed=seed, size=SMALL)
    (base / "a" / "abbey" / "notes.txt").write_text("not an image")
    return base


# ---------------------------------------------------------------------------------------------
# ImageNet: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG, LOC_synset_mapping.txt

IMAGENET_CLASSES = {
    "n01440764": ("tench, Tinca tinca", 3, 1),
    "n01443537": ("goldfish, Carassius auratus", 2, 2),
    "n02012849": ("crane", 2, 1),
}


def write_imagenet(root: Path, mapping: bool = True) -> Path:
    base = root / "ImageNet"
    seed = 0
    for wnid, (_, n_train, n_val) in IMAGENET_CLASSES.items():
        for split, n in (("train", n_train), ("val", n_val)):
            for k in range(n):
                seed += 1
                name = f"{wnid}_{k}.JPEG" if split == "train" else f"ILSVRC2012_val_{seed:08d}.JPEG"
                write_jpeg(base / split / wnid / name, seed=seed, size=SMALL)
    if mapping:
        lines = [f"{w} {names}" for w, (names, _, _) in IMAGENET_CLASSES.items()]
        (base / "LOC_synset_mapping.txt").write_text("\n".join(lines) + "\n")
    return base
