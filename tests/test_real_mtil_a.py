"""Loaders of Aircraft, Caltech101, DTD, EuroSAT, Flowers and Food on tiny copies written in
their real on-disk formats (tests/real/fixtures_a.py)."""

from __future__ import annotations

import numpy as np
import pytest

from clipcl.data.real import (  # noqa: F401
    IMAGE_SIZE,
    aircraft,
    caltech,
    dtd,
    eurosat,
    flowers,
    food,
    get_dataset,
    split_80_20,
)
from clipcl.data.real.flowers import FLOWERS_NAMES, read_mat5
from clipcl.errors import ClipclError
from tests.real.fixtures_a import (
    AIRCRAFT_VARIANTS,
    CALTECH_COUNTS,
    DTD_CLASSES,
    EUROSAT_COUNTS,
    FLOWERS_LABELS,
    FLOWERS_SETID,
    FOOD_CLASSES,
    mat5_bytes,
    write_aircraft,
    write_caltech101,
    write_dtd,
    write_eurosat,
    write_flowers,
    write_food,
)


def _is_image(sample) -> bool:
    image, label = sample
    return image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and str(image.dtype) == "torch.uint8"


def _missing(tmp_path, folder: str, rels: list[str]) -> list[str]:
    return [str(tmp_path / folder / r.rstrip("/")) + ("/" if r.endswith("/") else "") for r in rels]


def test_registered_with_templates():
    for name in ("Aircraft", "Caltech101", "DTD", "EuroSAT", "Flowers", "Food"):
        ds = get_dataset(name)
        assert ds.templates and all(t.count("{}") == 1 for t in ds.templates)
    assert get_dataset("Food").templates[0] == "a photo of a {}, a type of food."
    assert len(get_dataset("Caltech101").templates) == 34 and len(get_dataset("DTD").templates) == 8


# --- Aircraft ------------------------------------------------------------------------------------


def test_aircraft_uses_train_not_trainval_and_variant_names(tmp_path):
    d = write_aircraft(tmp_path, per_split=2)
    splits = get_dataset("Aircraft").load(tmp_path)
    assert splits.class_names == AIRCRAFT_VARIANTS  # 'Cessna 172', 'F/A-18' keep their spelling
    assert (len(splits.train), len(splits.test)) == (8, 8)  # train only (trainval would be 16)
    # ids count up: train 1000000.., val 1000008.., test 1000016..; two per variant
    assert splits.train.paths[5] == str(d / "data" / "images" / "1000005.jpg")
    assert splits.train.labels == [0, 0, 1, 1, 2, 2, 3, 3]
    assert splits.test.paths[0].endswith("1000016.jpg") and splits.test.labels[6] == 3
    assert _is_image(splits.test[6]) and splits.test[6][1] == 3


def test_aircraft_check(tmp_path):
    ds = get_dataset("Aircraft")
    rels = ["data/variants.txt", "data/images_variant_train.txt"]
    rels += ["data/images_variant_test.txt", "data/images/"]
    check = ds.check(tmp_path)
    assert check.status == "missing"
    assert check.missing == _missing(tmp_path, "fgvc-aircraft-2013b", rels)
    d = write_aircraft(tmp_path)
    (d / "data" / "images_variant_test.txt").unlink()
    check = ds.check(tmp_path)
    assert check.status == "missing" and check.missing == _missing(
        tmp_path, "fgvc-aircraft-2013b", ["data/images_variant_test.txt"]
    )
    write_aircraft(tmp_path)
    assert ds.check(tmp_path).status == "present"
    train = d / "data" / "images_variant_train.txt"
    train.write_text(train.read_text() + "1000099 Concorde\n")
    check = ds.check(tmp_path)
    assert check.status == "malformed"
    assert f"{train}:9" in check.problems[0] and "'Concorde'" in check.problems[0]
    train.write_text("1000000 707-320\n1000777 A300B4\n")
    with pytest.raises(
        ClipclError, match=r"images_variant_train.txt:2: image not found: .*1000777"
    ):
        ds.load(tmp_path)


# --- Caltech101 ----------------------------------------------------------------------------------


def test_caltech101_drops_background_uses_clip_names_and_splits_80_20(tmp_path):
    top = write_caltech101(tmp_path)
    splits = get_dataset("Caltech101").load(tmp_path)
    assert splits.class_names == ("off-center face", "leopard", "airplane", "yin and yang symbol")
    n = sum(CALTECH_COUNTS.values()) - CALTECH_COUNTS["BACKGROUND_Google"]  # 12
    train_idx, test_idx = split_80_20(n)
    assert (len(splits.train), len(splits.test)) == (len(train_idx), len(test_idx)) == (9, 3)
    paths = splits.train.paths + splits.test.paths
    every = sorted(zip(paths, splits.train.labels + splits.test.labels, strict=True))
    assert len({p for p, _ in every}) == n and "BACKGROUND_Google" not in str(every)
    folders = ["Faces", "Leopards", "airplanes", "yin_yang"]
    for path, label in every:  # every image has the label of its category directory
        assert path.startswith(str(top / folders[label]) + "/")
    again = get_dataset("Caltech101").load(tmp_path)
    assert again.train.paths == splits.train.paths and again.test.paths == splits.test.paths
    assert _is_image(splits.test[0])


def test_caltech101_check(tmp_path):
    ds = get_dataset("Caltech101")
    check = ds.check(tmp_path)
    assert check.status == "missing"
    assert check.missing == [str(tmp_path / "caltech101" / "101_ObjectCategories") + "/"]
    top = write_caltech101(tmp_path)
    assert ds.check(tmp_path).status == "present"
    (top / "not_a_category").mkdir()
    check = ds.check(tmp_path)
    assert check.status == "malformed" and str(top / "not_a_category") in check.problems[0]


# --- DTD -----------------------------------------------------------------------------------------


def test_dtd_trains_on_train1_and_tests_on_test1(tmp_path):
    base = write_dtd(tmp_path, per_split=2)
    splits = get_dataset("DTD").load(tmp_path)
    assert splits.class_names == DTD_CLASSES
    assert (len(splits.train), len(splits.test)) == (6, 6)
    # per class: numbers 1-2 train, 3-4 val (unused), 5-6 test
    assert splits.train.paths[2] == str(base / "images" / "polka-dotted" / "polka-dotted_0001.jpg")
    assert splits.train.labels == [0, 0, 1, 1, 2, 2]
    assert (
        splits.test.paths[5].endswith("zigzagged/zigzagged_0006.jpg") and splits.test.labels[5] == 2
    )
    assert _is_image(splits.train[3]) and splits.train[3][1] == 1


def test_dtd_check(tmp_path):
    ds = get_dataset("DTD")
    rels = ["dtd/images/", "dtd/labels/train1.txt", "dtd/labels/test1.txt"]
    assert ds.check(tmp_path).missing == _missing(tmp_path, "dtd", rels)
    base = write_dtd(tmp_path)
    (base / "labels" / "test1.txt").unlink()
    check = ds.check(tmp_path)
    assert check.status == "missing" and check.missing == _missing(tmp_path, "dtd", rels[2:])
    write_dtd(tmp_path)
    assert ds.check(tmp_path).status == "present"
    test1 = base / "labels" / "test1.txt"
    test1.write_text("banded/banded_0005.jpg\nstriped/striped_0001.jpg\n")
    check = ds.check(tmp_path)
    assert check.status == "malformed"
    assert (
        f"{test1}:2: class directory not found: {base / 'images' / 'striped'}/" in check.problems[0]
    )
    test1.write_text("banded banded_0005.jpg\n")
    assert "expected '<class>/<file>'" in ds.check(tmp_path).problems[0]


# --- EuroSAT -------------------------------------------------------------------------------------


def test_eurosat_clip_names_and_80_20_split(tmp_path):
    top = write_eurosat(tmp_path)
    ds = get_dataset("EuroSAT")
    splits = ds.load(tmp_path)
    assert splits.class_names == ("annual crop land", "brushland or shrubland", "lake or sea")
    n = sum(EUROSAT_COUNTS.values())  # 10
    train_idx, test_idx = split_80_20(n)
    assert (len(splits.train), len(splits.test)) == (8, 2)
    # the samples in listing order (class, then sorted file name) before the split
    listing = [
        (str(top / c / f"{c}_{i}.jpg"), label)
        for label, c in enumerate(EUROSAT_COUNTS)
        for i in sorted(range(1, EUROSAT_COUNTS[c] + 1), key=str)
    ]
    for part, idx in ((splits.train, train_idx), (splits.test, test_idx)):
        assert list(zip(part.paths, part.labels, strict=True)) == [listing[i] for i in idx]
    assert not set(splits.train.paths) & set(splits.test.paths)
    again = ds.load(tmp_path)
    assert (again.train.paths, again.test.labels) == (splits.train.paths, splits.test.labels)
    assert _is_image(splits.train[0])


def test_eurosat_check(tmp_path):
    ds = get_dataset("EuroSAT")
    assert ds.check(tmp_path).missing == [str(tmp_path / "eurosat" / "2750") + "/"]
    top = write_eurosat(tmp_path)
    assert ds.check(tmp_path).status == "present"
    (top / "Glacier").mkdir()
    check = ds.check(tmp_path)
    assert (
        check.status == "malformed"
        and f"{top / 'Glacier'}/: not a EuroSAT class" in (check.problems[0])
    )


# --- Flowers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_flowers_official_splits_and_labels(tmp_path, compress):
    base = write_flowers(tmp_path, compress=compress)
    splits = get_dataset("Flowers").load(tmp_path)
    assert splits.class_names == FLOWERS_NAMES and len(FLOWERS_NAMES) == 102
    assert (len(splits.train), len(splits.test)) == (4, 5)  # trnid / tstid; valid unused
    assert splits.train.paths == [
        str(base / "jpg" / f"image_{i:05d}.jpg") for i in FLOWERS_SETID["trnid"]
    ]
    assert splits.train.labels == [FLOWERS_LABELS[i - 1] - 1 for i in FLOWERS_SETID["trnid"]]
    assert splits.test.labels == [0, 4, 101, 4, 101]
    assert splits.class_names[101] == "blackberry lily"
    assert _is_image(splits.test[2]) and splits.test[2][1] == 101


def test_flowers_check(tmp_path):
    ds = get_dataset("Flowers")
    rels = ["jpg/", "imagelabels.mat", "setid.mat"]
    assert ds.check(tmp_path).missing == _missing(tmp_path, "flowers-102", rels)
    base = write_flowers(tmp_path)
    (base / "setid.mat").unlink()
    check = ds.check(tmp_path)
    assert check.status == "missing" and check.missing == [str(base / "setid.mat")]
    write_flowers(tmp_path)
    assert ds.check(tmp_path).status == "present"
    labels_mat = base / "imagelabels.mat"
    labels_mat.write_bytes(b"not a mat file")
    check = ds.check(tmp_path)
    assert check.status == "malformed" and str(labels_mat) in check.problems[0]
    labels_mat.write_bytes(mat5_bytes({"labels": np.array([1, 103, 2])}))
    assert f"{labels_mat}: label 103 out of range 1..102" in ds.check(tmp_path).problems[0]
    write_flowers(tmp_path, setid={"trnid": [1], "valid": [2], "tstid": [3, 99]})
    problem = ds.check(tmp_path).problems[0]
    assert str(base / "setid.mat") in problem and "image id 99" in problem
    write_flowers(tmp_path, setid={"trnid": [1], "tstid": [3]})
    (base / "jpg" / "image_00003.jpg").unlink()
    assert (
        "missing image: " + str(base / "jpg" / "image_00003.jpg") in ds.check(tmp_path).problems[0]
    )
    write_flowers(tmp_path, setid={"trnid": [1], "valid": [2]})
    assert "no 'tstid' array" in ds.check(tmp_path).problems[0]


def test_mat5_reader_big_endian_storage_types_and_corruption(tmp_path):
    m = np.arange(6.0).reshape(2, 3)
    for storage in ("u1", "i2", "u2", "i4", "f4", "f8"):
        for big in (False, True):
            for compress in (False, True):
                p = tmp_path / f"{storage}{big}{compress}.mat"
                p.write_bytes(mat5_bytes({"ab": [3], "m": m}, compress, storage, big))
                got = read_mat5(p)
                assert got["ab"].shape == (1, 1) and got["ab"].dtype == np.float64
                assert np.array_equal(got["m"], m)
    good = mat5_bytes({"labels": np.arange(1, 30)})
    p = tmp_path / "bad.mat"
    for bad in (good[:150], good[:128] + b"\xff" * 40, b"MATLAB 7.3 MAT-file" + good[19:]):
        p.write_bytes(bad)
        with pytest.raises(ClipclError, match=str(p)):
            read_mat5(p)


def test_mat5_reader_matches_scipy(tmp_path):
    sio = pytest.importorskip("scipy.io")
    arrays = {"trnid": np.arange(1, 9.0), "labels": np.array([1, 2, 102], dtype=np.uint8)}
    for compress in (True, False):
        p = tmp_path / f"s{compress}.mat"
        sio.savemat(p, {**arrays, "note": "text"}, do_compression=compress)
        ours, ref = read_mat5(p), sio.loadmat(p)
        assert sorted(ours) == sorted(arrays)
        for k in arrays:
            assert np.array_equal(ours[k], ref[k]) and ours[k].dtype == ref[k].dtype
        p.write_bytes(mat5_bytes(arrays, compress))
        assert np.array_equal(sio.loadmat(p)["labels"], [[1, 2, 102]])


# --- Food ----------------------------------------------------------------------------------------


def test_food_official_splits_and_names(tmp_path):
    base = write_food(tmp_path, n_train=3, n_test=2)
    splits = get_dataset("Food").load(tmp_path)
    assert splits.class_names == ("apple pie", "baby back ribs", "waffles")
    assert len(FOOD_CLASSES) == 3 and (len(splits.train), len(splits.test)) == (9, 6)
    # ids: apple_pie 100000-100002 train, 100003-100004 test; baby_back_ribs from 100005 ...
    assert splits.train.paths[3] == str(base / "images" / "baby_back_ribs" / "100005.jpg")
    assert splits.train.labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert splits.test.paths[0].endswith("apple_pie/100003.jpg") and splits.test.labels[-1] == 2
    assert _is_image(splits.test[4]) and splits.test[4][1] == 2


def test_food_check(tmp_path):
    ds = get_dataset("Food")
    rels = ["meta/classes.txt", "meta/train.txt", "meta/test.txt", "images/"]
    assert ds.check(tmp_path).missing == _missing(tmp_path, "food-101", rels)
    base = write_food(tmp_path)
    (base / "meta" / "train.txt").unlink()
    (base / "meta" / "classes.txt").unlink()
    check = ds.check(tmp_path)
    assert check.status == "missing"
    assert check.missing == _missing(tmp_path, "food-101", rels[:2])
    write_food(tmp_path)
    assert ds.check(tmp_path).status == "present"
    test_txt = base / "meta" / "test.txt"
    test_txt.write_text("apple_pie/100003\nsushi/123\n")
    check = ds.check(tmp_path)
    assert check.status == "malformed"
    assert f"{test_txt}:2: class 'sushi' is not in classes.txt" in check.problems[0]
    test_txt.write_text("apple_pie/100003\nwaffles/999\n")
    want = f"{test_txt}:2: image not found: {base / 'images' / 'waffles' / '999.jpg'}"
    assert want in ds.check(tmp_path).problems[0]
