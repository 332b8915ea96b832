"""MNIST, Oxford-IIIT Pet, Stanford Cars, SUN397 and ImageNet loaders on tiny copies written in
their real on-disk formats (tests/real/fixtures_b.py)."""

from __future__ import annotations

import numpy as np
import pytest

import clipcl.data.real.cars
import clipcl.data.real.imagenet
import clipcl.data.real.mnist
import clipcl.data.real.pets
import clipcl.data.real.sun397  # noqa: F401  (the imports register the datasets)
from clipcl.data.real import IMAGE_SIZE, dataset_names, get_dataset
from clipcl.data.real.base import dataset_labels
from clipcl.data.real.cars import load_mat
from clipcl.errors import ClipclError
from tests.real.fixtures_b import (
    CAR_NAMES,
    CARS_TEST,
    CARS_TRAIN,
    IMAGENET_CLASSES,
    PET_BREEDS,
    SUN_CLASSES,
    idx_bytes,
    mnist_arrays,
    write_cars,
    write_imagenet,
    write_mat,
    write_mnist,
    write_pets,
    write_sun397,
)

NAMES = ("MNIST", "OxfordPet", "StanfordCars", "SUN397", "ImageNet")


def assert_image(image) -> None:
    assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and str(image.dtype) == "torch.uint8"


def assert_missing(name: str, root, rels: list[str]) -> None:
    ds = get_dataset(name)
    check = ds.check(root)
    assert check.status == "missing", check
    slash = ["/" if r.endswith("/") else "" for r in rels]
    assert check.missing == [
        str(root / ds.folder / r) + s for r, s in zip(rels, slash, strict=True)
    ]
    assert check.how_to_get == ds.how_to_get


def assert_malformed(name: str, root, *needles: str) -> None:
    check = get_dataset(name).check(root)
    assert check.status == "malformed", check
    for needle in needles:
        assert needle in check.problems[0], check.problems


def test_registered_with_templates_and_layouts():
    for name in NAMES:
        ds = get_dataset(name)
        assert name in dataset_names() and ds.name == name
        assert ds.templates and all(t.count("{}") == 1 for t in ds.templates)
        assert ds.folder and ds.how_to_get and ds.expected()
    assert get_dataset("MNIST").templates[0] == 'a photo of the number: "{}".'
    assert get_dataset("StanfordCars").templates[0] == "a photo of a {}, a type of car."
    assert get_dataset("SUN397").templates == ("a photo of a {}.", "a photo of the {}.")


# ---------------------------------------------------------------------------------------------
# MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loads_idx_files(tmp_path, gz):
    write_mnist(tmp_path, n_train=12, n_test=5, gz=gz)
    splits = get_dataset("MNIST").load(tmp_path)
    assert splits.class_names == tuple("0123456789")
    assert (len(splits.train), len(splits.test)) == (12, 5)
    assert dataset_labels(splits.train) == [i % 10 for i in range(12)]
    assert dataset_labels(splits.test) == [i % 10 for i in range(5)]
    image, label = splits.test[3]
    assert_image(image)
    assert label == 3
    assert (image[0] == image[1]).all() and (image[1] == image[2]).all()  # grey → RGB
    want = mnist_arrays(5, 1)[0][3].astype(float).mean()
    assert abs(image.float().mean().item() - want) < 3
    assert get_dataset("MNIST").check(tmp_path).status == "present"


def test_mnist_check_missing_and_malformed(tmp_path):
    files = [
        "raw/train-images-idx3-ubyte",
        "raw/train-labels-idx1-ubyte",
        "raw/t10k-images-idx3-ubyte",
        "raw/t10k-labels-idx1-ubyte",
    ]
    assert_missing("MNIST", tmp_path, files)
    raw = write_mnist(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-images-idx3-ubyte").rename(raw / "t10k-images-idx3-ubyte.gz")  # not really gzip
    assert_missing("MNIST", tmp_path, files[3:])

    write_mnist(tmp_path)
    (raw / "t10k-images-idx3-ubyte.gz").unlink()
    assert get_dataset("MNIST").check(tmp_path).status == "present"
    labels = raw / "train-labels-idx1-ubyte"
    good = labels.read_bytes()
    labels.write_bytes(b"\x00\x00\x08\x03" + good[4:])  # a 3-d magic number on a label file
    assert_malformed("MNIST", tmp_path, str(labels), "magic")
    labels.write_bytes(idx_bytes(np.zeros(11, np.uint8)))  # 12 images, 11 labels
    assert_malformed("MNIST", tmp_path, str(raw / "train-images-idx3-ubyte"), str(labels), "11")
    labels.write_bytes(idx_bytes(np.full(12, 10, np.uint8)))
    assert_malformed("MNIST", tmp_path, str(labels), "out of range")
    labels.write_bytes(good[:-1])  # truncated
    assert_malformed("MNIST", tmp_path, str(labels), "12 bytes of data")


# ---------------------------------------------------------------------------------------------
# Oxford-IIIT Pet


def test_pets_loads_trainval_and_test(tmp_path):
    base = write_pets(tmp_path, n_trainval=2, n_test=1)
    splits = get_dataset("OxfordPet").load(tmp_path)
    assert len(splits.class_names) == 37
    assert splits.class_names[:4] == (
        "Abyssinian",
        "american bulldog",
        "american pit bull terrier",
        "British Shorthair",
    )
    assert (len(splits.train), len(splits.test)) == (74, 37)
    assert dataset_labels(splits.train)[:4] == [0, 0, 1, 1]
    assert dataset_labels(splits.test) == list(range(37))
    assert splits.test.paths[1] == str(base / "images" / f"{PET_BREEDS[1]}_3.jpg")
    image, label = splits.train[5]
    assert_image(image)
    assert label == 2


def test_pets_check_missing_and_malformed(tmp_path):
    rels = ["images/", "annotations/trainval.txt", "annotations/test.txt"]
    assert_missing("OxfordPet", tmp_path, rels)
    base = write_pets(tmp_path)
    (base / "annotations" / "test.txt").unlink()
    assert_missing("OxfordPet", tmp_path, rels[2:])
    base = write_pets(tmp_path)
    assert get_dataset("OxfordPet").check(tmp_path).status == "present"
    ann = base / "annotations" / "test.txt"
    good = ann.read_text()
    (base / "images" / "Abyssinian_3.jpg").unlink()
    assert_malformed("OxfordPet", tmp_path, f"{ann}:1", str(base / "images" / "Abyssinian_3.jpg"))
    write_pets(tmp_path)
    ann.write_text(good.replace("Abyssinian_3 1 1 1", "Abyssinian_3 38 1 1"))
    assert_malformed("OxfordPet", tmp_path, f"{ann}:1", "out of range")
    ann.write_text(good.replace("Abyssinian_3 1 1 1", "Abyssinian_3 one"))
    assert_malformed("OxfordPet", tmp_path, f"{ann}:1")


# ---------------------------------------------------------------------------------------------
# Stanford Cars


@pytest.mark.parametrize("compress,order", [(True, "<"), (False, "<"), (True, ">")])
def test_cars_loads_mat_annotations(tmp_path, compress, order):
    base = write_cars(tmp_path, compress=compress, order=order)
    splits = get_dataset("StanfordCars").load(tmp_path)
    assert splits.class_names == tuple(CAR_NAMES) and len(splits.class_names) == 196
    assert (len(splits.train), len(splits.test)) == (len(CARS_TRAIN), len(CARS_TEST))
    assert dataset_labels(splits.train) == [c - 1 for _, c in CARS_TRAIN]
    assert dataset_labels(splits.test) == [c - 1 for _, c in CARS_TEST]
    assert splits.test.paths[0] == str(base / "cars_test" / "00001.jpg")
    image, label = splits.train[2]
    assert_image(image)
    assert label == 195


def test_mat_reader_reads_cells_structs_and_multirow_chars(tmp_path):
    path = write_mat(
        tmp_path / "x.mat", {"c": ["ab", "", "xyz"], "s": [{"a": 300, "b": "q"}]}, False
    )
    got = load_mat(path)
    assert got["c"] == ["ab", "", "xyz"]
    assert int(got["s"][0]["a"][0, 0]) == 300 and got["s"][0]["b"] == "q"


def test_cars_check_missing_and_malformed(tmp_path):
    rels = [
        "cars_train/",
        "cars_test/",
        "devkit/cars_meta.mat",
        "devkit/cars_train_annos.mat",
        "cars_test_annos_withlabels.mat",
    ]
    assert_missing("StanfordCars", tmp_path, rels)
    base = write_cars(tmp_path)
    (base / "cars_test_annos_withlabels.mat").unlink()
    assert_missing("StanfordCars", tmp_path, rels[4:])
    write_cars(tmp_path)
    assert get_dataset("StanfordCars").check(tmp_path).status == "present"

    meta = base / "devkit" / "cars_meta.mat"
    good = meta.read_bytes()
    meta.write_bytes(good[:200])  # truncated
    assert_malformed("StanfordCars", tmp_path, str(meta))
    meta.write_bytes(b"garbage" * 40)
    assert_malformed("StanfordCars", tmp_path, str(meta), "not a MATLAB 5 MAT-file")
    write_mat(meta, {"class_names": CAR_NAMES[:10]})
    assert_malformed("StanfordCars", tmp_path, str(meta), "10 class names")
    meta.write_bytes(good)

    (base / "cars_test" / "00002.jpg").unlink()
    annos = base / "cars_test_annos_withlabels.mat"
    assert_malformed("StanfordCars", tmp_path, str(annos), str(base / "cars_test" / "00002.jpg"))
    write_cars(tmp_path)
    bad = [{"class": 197, "fname": "00001.jpg"}]
    write_mat(annos, {"annotations": bad})
    assert_malformed("StanfordCars", tmp_path, str(annos), "197", "out of range")


# ---------------------------------------------------------------------------------------------
# SUN397


def test_sun397_loads_and_splits_80_20(tmp_path):
    base = write_sun397(tmp_path)
    ds = get_dataset("SUN397")
    splits = ds.load(tmp_path)
    assert splits.class_names == ("abbey", "apartment building outdoor", "bedroom")
    assert (len(splits.train), len(splits.test)) == (8, 2)
    again = ds.load(tmp_path)
    assert again.train.paths == splits.train.paths and again.test.paths == splits.test.paths
    assert not set(splits.train.paths) & set(splits.test.paths)
    every = sorted(splits.train.paths + splits.test.paths)
    assert every == sorted(str(p) for p in base.rglob("sun_*.jpg"))
    for part in (splits.train, splits.test):
        for path, label in zip(part.paths, part.labels, strict=True):
            cls = list(SUN_CLASSES)[label].strip("/")
            assert path.startswith(str(base / cls) + "/")
    image, _ = splits.test[0]
    assert_image(image)


def test_sun397_check_missing_and_malformed(tmp_path):
    assert_missing("SUN397", tmp_path, ["ClassName.txt"])
    base = write_sun397(tmp_path)
    (base / "ClassName.txt").unlink()
    assert_missing("SUN397", tmp_path, ["ClassName.txt"])
    base = write_sun397(tmp_path)
    assert get_dataset("SUN397").check(tmp_path).status == "present"
    for f in (base / "b" / "bedroom").iterdir():
        f.unlink()
    (base / "b" / "bedroom").rmdir()
    assert_malformed("SUN397", tmp_path, str(base / "b" / "bedroom"), "ClassName.txt")
    (base / "ClassName.txt").write_text("/a/abbey\nbedroom\n")
    assert_malformed("SUN397", tmp_path, f"{base / 'ClassName.txt'}:2")


# ---------------------------------------------------------------------------------------------
# ImageNet


@pytest.mark.parametrize("mapping", [True, False])
def test_imagenet_loads_image_folders(tmp_path, mapping):
    base = write_imagenet(tmp_path, mapping=mapping)
    splits = get_dataset("ImageNet").load(tmp_path)
    wnids = list(IMAGENET_CLASSES)
    want = ("tench", "goldfish", "crane") if mapping else tuple(wnids)
    assert splits.class_names == want
    assert (len(splits.train), len(splits.test)) == (7, 4)
    assert dataset_labels(splits.train) == [0, 0, 0, 1, 1, 2, 2]
    assert dataset_labels(splits.test) == [0, 1, 1, 2]
    assert splits.train.paths[0] == str(base / "train" / wnids[0] / f"{wnids[0]}_0.JPEG")
    image, label = splits.test[3]
    assert_image(image)
    assert label == 2


def test_imagenet_check_missing_and_malformed(tmp_path):
    assert_missing("ImageNet", tmp_path, ["train/", "val/"])
    base = write_imagenet(tmp_path)
    for f in (base / "val").rglob("*.JPEG"):
        f.unlink()
    for d in (base / "val").iterdir():
        d.rmdir()
    (base / "val").rmdir()
    assert_missing("ImageNet", tmp_path, ["val/"])
    write_imagenet(tmp_path)
    assert get_dataset("ImageNet").check(tmp_path).status == "present"
    (base / "val" / "n09999999").mkdir()
    assert_malformed("ImageNet", tmp_path, "n09999999", str(base / "val"))
    (base / "val" / "n09999999").rmdir()
    mapping = base / "LOC_synset_mapping.txt"
    mapping.write_text("n01440764 tench, Tinca tinca\n")
    assert_malformed("ImageNet", tmp_path, str(mapping), "n01443537")


def test_loaders_raise_clipcl_errors(tmp_path):
    for name in NAMES:
        with pytest.raises(ClipclError, match=str(tmp_path)):
            get_dataset(name).load(tmp_path)
