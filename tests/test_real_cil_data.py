"""TinyImageNet / ImageNet-R / DomainNet loaders on tiny copies in their real on-disk formats,
the DomainNet-200 selection, and the class orders of the class-incremental benchmarks."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipcl.data.real import IMAGE_SIZE, get_dataset, split_80_20
from clipcl.data.real import domainnet as dn
from clipcl.data.real import imagenet_r as imr
from clipcl.data.real import tinyimagenet as tiny
from clipcl.data.real.base import FileImageDataset, Splits
from clipcl.data.real.imagenet_names import CLIP_IMAGENET_NAMES, IMAGENET_R_WNIDS
from clipcl.data.real.orders import check_order, cifar100_class_order
from clipcl.errors import ClipclError
from tests.real.fixtures_c import (
    DN_CLASSES,
    DOMAINS,
    IMR_WNIDS,
    TINY_WNIDS,
    write_domainnet,
    write_imagenet_r,
    write_imagenet_r_lists,
    write_tinyimagenet,
)

# CIFAR-100's seed-1993 order as written in ../shared/METHODS.md §2 (from Continual-CLIP / ZSCL /
# MoE-Adapters / DMNSP class_orders/cifar100.yaml).
METHODS_CIFAR100 = (
    "87,0,52,58,44,91,68,97,51,15,94,92,10,72,49,78,61,14,8,86,84,96,18,24,32,45,88,11,4,67,69,66,"
    "77,47,79,93,29,50,57,83,17,81,41,12,37,59,25,20,80,73,1,28,6,46,62,82,53,9,31,75,38,63,33,74,"
    "27,22,36,3,16,21,60,19,70,90,89,43,5,42,65,76,40,30,23,85,2,95,56,48,71,64,98,13,99,7,34,55,"
    "54,26,35,39"
)
# TinyImageNet's order: class_orders/tinyimagenet.yaml of Continual-CLIP (vgthengane), identical in
# ZSCL's cil/, MoE-Adapters4CL's cil/ and DMNSP (RL-VIG).
CONTINUAL_CLIP_TINY = [
    131, 181, 22, 172, 144, 92, 97, 187, 58, 93, 6, 70, 106, 68, 153, 168, 179, 199, 29, 46,
    9, 142, 134, 88, 193, 110, 26, 32, 117, 112, 17, 39, 166, 13, 94, 138, 109, 147, 51, 101,
    59, 188, 116, 5, 170, 99, 100, 167, 180, 146, 65, 1, 104, 43, 38, 184, 123, 171, 137, 162,
    71, 44, 95, 174, 12, 7, 54, 152, 21, 47, 28, 176, 34, 2, 132, 118, 42, 189, 150, 14,
    165, 41, 192, 45, 82, 128, 63, 57, 197, 160, 53, 75, 108, 135, 121, 159, 183, 67, 169, 50,
    87, 69, 89, 196, 115, 19, 148, 96, 86, 11, 8, 60, 33, 173, 78, 4, 119, 105, 182, 127,
    177, 30, 186, 40, 49, 178, 76, 157, 161, 73, 164, 151, 31, 74, 191, 27, 125, 198, 81, 20,
    155, 114, 139, 36, 61, 56, 145, 48, 16, 83, 62, 85, 126, 0, 102, 23, 3, 140, 15, 195,
    133, 113, 190, 141, 52, 163, 156, 80, 111, 90, 175, 143, 120, 84, 18, 25, 79, 37, 154, 136,
    64, 158, 24, 185, 72, 35, 129, 55, 149, 91, 122, 77, 103, 124, 130, 66, 10, 107, 194, 98,
]  # fmt: skip
# First task (20 classes) of NSP²'s 10-split order, seed 2024, as its own ClassIncrementalManager
# (utils/continual_manager.py) computes it for 200 classes.
NSP2_SEED2024_HEAD = [192, 54, 163, 105, 170, 138, 69, 57, 36, 61, 118, 131, 155, 26, 83, 139, 172]


def _same(a: FileImageDataset, b: FileImageDataset) -> bool:
    return a.paths == b.paths and a.labels == b.labels


def _assert_image(splits: Splits) -> None:
    image, _ = splits.train[0]
    assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and str(image.dtype) == "torch.uint8"


# ---------------------------------------------------------------- TinyImageNet


def test_tinyimagenet_loads_names_splits_and_labels(tmp_path):
    d = write_tinyimagenet(tmp_path, n_train=3, n_val=2)
    ds = get_dataset("TinyImageNet")
    splits = ds.load(tmp_path)
    # wnids.txt order; CLIP's curated names (not words.txt's "Egyptian cat" / "reel")
    assert splits.class_names == ("Egyptian Mau", "fishing casting reel", "volleyball")
    assert (len(splits.train), len(splits.test)) == (9, 6)
    for path, y in zip(splits.train.paths, splits.train.labels, strict=True):
        assert Path(path).parent.parent.name == TINY_WNIDS[y]
    ann = dict(
        ln.split("\t")[:2] for ln in (d / "val/val_annotations.txt").read_text().splitlines()
    )
    for path, y in zip(splits.test.paths, splits.test.labels, strict=True):
        assert ann[Path(path).name] == TINY_WNIDS[y]
    again = ds.load(tmp_path)
    assert _same(splits.train, again.train) and _same(splits.test, again.test)
    assert not set(splits.train.paths) & set(splits.test.paths)
    _assert_image(splits)


def test_tinyimagenet_label_order_follows_wnids_txt_and_words_is_the_fallback(tmp_path):
    wnids = ("n04540053", "n00001740", "n02124075")  # n00001740 has no CLIP name
    write_tinyimagenet(tmp_path, wnids=wnids, n_train=2, n_val=1)
    splits = get_dataset("TinyImageNet").load(tmp_path)
    assert splits.class_names == ("volleyball", "entity", "Egyptian Mau")
    assert sorted(set(splits.train.labels)) == [0, 1, 2]


def test_tinyimagenet_check_missing_malformed_present(tmp_path):
    ds = get_dataset("TinyImageNet")
    d = tmp_path / "tiny-imagenet-200"
    want = ["wnids.txt", "words.txt", "train/", "val/val_annotations.txt", "val/images/"]
    want = [str(d / p) + ("/" if p.endswith("/") else "") for p in want]
    check = ds.check(tmp_path)
    assert check.status == "missing" and check.missing == want
    d.mkdir()
    (d / "wnids.txt").write_text("n02124075\n")
    check = ds.check(tmp_path)  # partial copy
    assert check.missing == want[1:]
    write_tinyimagenet(tmp_path)
    assert ds.check(tmp_path).status == "present"
    ann = d / "val" / "val_annotations.txt"
    good = ann.read_text()
    ann.write_text(good + "val_0.JPEG\tn09999999\t0\t0\t1\t1\n")
    check = ds.check(tmp_path)
    assert check.status == "malformed"
    assert f"{ann}:7" in check.problems[0] and "n09999999" in check.problems[0]
    ann.write_text(good.replace("val_3.JPEG", "val_99.JPEG"))
    problem = ds.check(tmp_path).problems[0]
    assert "image not found" in problem and str(d / "val/images/val_99.JPEG") in problem
    ann.write_text(good)
    for f in (d / "train" / TINY_WNIDS[1] / "images").iterdir():
        f.unlink()
    assert str(d / "train" / TINY_WNIDS[1] / "images") in ds.check(tmp_path).problems[0]


# ---------------------------------------------------------------- ImageNet-R


def test_imagenet_r_loads_names_and_a_seeded_80_20_split(tmp_path):
    d = write_imagenet_r(tmp_path, n=5)
    ds = get_dataset("ImageNet-R")
    splits = ds.load(tmp_path)
    assert splits.class_names == (
        "goldfish",
        "snow leopard",
        "ice cream",
    )  # CLIP names, sorted wnids
    assert (len(splits.train), len(splits.test)) == (12, 3)
    every = sorted(d.glob("*/*.jpg"))
    tr, te = split_80_20(len(every))
    assert [Path(p) for p in splits.train.paths] == [every[i] for i in tr]
    assert [Path(p) for p in splits.test.paths] == [every[i] for i in te]
    for part in (splits.train, splits.test):
        for path, y in zip(part.paths, part.labels, strict=True):
            assert Path(path).parent.name == IMR_WNIDS[y]
    again = ds.load(tmp_path)
    assert _same(splits.train, again.train) and _same(splits.test, again.test)
    assert not set(splits.train.paths) & set(splits.test.paths)
    _assert_image(splits)


def test_imagenet_r_uses_nsp2_split_lists_when_present(tmp_path):
    d = write_imagenet_r(tmp_path, n=3)
    rel = sorted(f"{p.parent.name}/{p.name}" for p in d.glob("*/*.jpg"))
    write_imagenet_r_lists(d, rel[1:], rel[:1])
    splits = get_dataset("ImageNet-R").load(tmp_path)
    assert [str(p) for p in splits.test.paths] == [str(d / rel[0])]
    assert len(splits.train) == 8 and splits.test.labels == [0]
    write_imagenet_r_lists(d, [*rel[1:], "n01443537/art_77.jpg"], rel[:1])
    with pytest.raises(ClipclError, match=r"imagenet_r_train\.txt:9: image not found"):
        get_dataset("ImageNet-R").load(tmp_path)
    write_imagenet_r_lists(d, rel, rel[:1])
    with pytest.raises(ClipclError, match="also in the train list"):
        get_dataset("ImageNet-R").load(tmp_path)


def test_imagenet_r_check_missing_malformed_present(tmp_path):
    ds = get_dataset("ImageNet-R")
    d = tmp_path / "imagenet-r"
    check = ds.check(tmp_path)
    assert check.status == "missing" and check.missing == [f"{d}/"]
    d.mkdir()
    assert ds.check(tmp_path).status == "malformed"  # present but empty: no class folders
    write_imagenet_r(tmp_path, n=2)
    assert ds.check(tmp_path).status == "present"
    write_imagenet_r(tmp_path, wnids=("n02124075",), n=2)  # a TinyImageNet class, not ImageNet-R's
    check = ds.check(tmp_path)
    assert check.status == "malformed" and f"{d / 'n02124075'}/" in check.problems[0]


# ---------------------------------------------------------------- DomainNet


def test_domainnet_loads_official_lists_of_all_six_domains(tmp_path):
    d = write_domainnet(tmp_path, n_train=2, n_test=1)
    ds = get_dataset("DomainNet")
    splits = ds.load(tmp_path)
    assert splits.class_names == ("kangaroo", "pickup truck", "sweater", "The Eiffel Tower")
    assert (len(splits.train), len(splits.test)) == (6 * 4 * 2, 6 * 4)
    listed = {}
    for domain in DOMAINS:
        for split in ("train", "test"):
            for line in (d / f"{domain}_{split}.txt").read_text().splitlines():
                rel, label = line.split()
                listed[str(d / rel)] = int(label)
    for part in (splits.train, splits.test):
        assert all(listed[p] == y for p, y in zip(part.paths, part.labels, strict=True))
        assert all(
            Path(p).parent.name == DN_CLASSES[y]
            for p, y in zip(part.paths, part.labels, strict=True)
        )
    assert {Path(p).parent.parent.name for p in splits.test.paths} == set(DOMAINS)
    again = ds.load(tmp_path)
    assert _same(splits.train, again.train) and _same(splits.test, again.test)
    assert not set(splits.train.paths) & set(splits.test.paths)
    _assert_image(splits)
    quickdraw = splits.test.paths.index(next(p for p in splits.test.paths if p.endswith(".png")))
    assert splits.test[quickdraw][0].shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_domainnet_check_missing_malformed_present(tmp_path):
    ds = get_dataset("DomainNet")
    d = tmp_path / "domainnet"
    lists = [f"{dom}_{s}.txt" for dom in DOMAINS for s in ("train", "test")]
    want = [str(d / f) for f in lists] + [f"{d / dom}/" for dom in DOMAINS]
    check = ds.check(tmp_path)
    assert check.status == "missing" and check.missing == want
    d.mkdir()
    (d / "real").mkdir()
    (d / "real_train.txt").write_text("")
    present = (str(d / "real_train.txt"), f"{d / 'real'}/")
    assert ds.check(tmp_path).missing == [w for w in want if w not in present]
    write_domainnet(tmp_path)
    assert ds.check(tmp_path).status == "present"
    sketch = d / "sketch_test.txt"
    good = sketch.read_text()
    for bad, message in (
        (
            "sketch/kangaroo/sketch_001_000003.jpg 345\n",
            "sketch_test.txt:1: label 345 out of range",
        ),
        ("sketch/kangaroo/sketch_001_000003.jpg 2\n", "sketch_test.txt:1: label 2 is 'sweater'"),
        ("sketch/kangaroo/sketch_001_000099.jpg 0\n", "image not found"),
        ("sketch/kangaroo/sketch_001_000003.jpg\n", "sketch_test.txt:1: expected"),
        ("real/kangaroo/real_001_000003.jpg 0\n", "sketch_test.txt:1: expected 'sketch/"),
    ):
        sketch.write_text(bad + good)
        check = ds.check(tmp_path)
        assert check.status == "malformed" and message in check.problems[0], check.problems
    sketch.write_text(good.replace(" 3\n", " 4\n"))
    assert "'The_Eiffel_Tower' has label 3 elsewhere" in ds.check(tmp_path).problems[0]
    for f in d.glob("*.txt"):  # relabel everywhere: nothing has label 3 any more
        f.write_text(f.read_text().replace(" 3\n", " 4\n"))
    assert "no image has label 3" in ds.check(tmp_path).problems[0]


def test_domainnet200_selection_relabels_the_chosen_domain_class_pairs(tmp_path):
    write_domainnet(tmp_path, n_train=2, n_test=1)
    full = get_dataset("DomainNet").load(tmp_path)
    pairs = [("real", "pickup_truck"), ("real", "The_Eiffel_Tower"), ("sketch", "kangaroo")]
    sub = dn.select_domainnet200(full, pairs)
    assert sub.class_names == ("pickup truck", "The Eiffel Tower", "kangaroo")
    assert (len(sub.train), len(sub.test)) == (6, 3)
    for part in (sub.train, sub.test):
        for path, y in zip(part.paths, part.labels, strict=True):
            assert (Path(path).parent.parent.name, Path(path).parent.name) == pairs[y]
    with pytest.raises(ClipclError, match="196 classes have no images"):
        dn.select_domainnet200(full)
    check = get_dataset("DomainNet200").check(tmp_path)
    assert check.status == "malformed" and "DomainNet-200" in check.problems[0]
    cached = Splits(full.class_names, [], [])  # e.g. pre-resized arrays: no paths to read
    with pytest.raises(ClipclError, match="needs DomainNet's image paths"):
        dn.select_domainnet200(cached, pairs)


def test_domainnet200_table_has_200_classes_in_ten_single_domain_blocks():
    assert len(dn.DOMAINNET200) == 200 and len({f for _, f in dn.DOMAINNET200}) == 200
    domains = [dn.DOMAINNET200[20 * t][0] for t in range(10)]
    assert domains == [
        "real", "sketch", "painting", "quickdraw", "quickdraw",
        "painting", "real", "clipart", "sketch", "infograph",
    ]  # fmt: skip
    assert all(dn.DOMAINNET200[i][0] == domains[i // 20] for i in range(200))
    assert dn.DOMAINNET200[:3] == (
        ("real", "pickup_truck"),
        ("real", "sweater"),
        ("real", "The_Eiffel_Tower"),
    )
    assert dn.DOMAINNET200[-1] == ("infograph", "parrot")


# ---------------------------------------------------------------- class orders and names


def test_cifar100_order_is_the_methods_md_list():
    assert cifar100_class_order() == [int(c) for c in METHODS_CIFAR100.split(",")]


def test_tinyimagenet_order_is_continual_clips_list():
    assert tiny.class_order() == CONTINUAL_CLIP_TINY


def test_nsp2_orders_for_imagenet_r_and_domainnet200():
    assert imr.class_order()[:17] == NSP2_SEED2024_HEAD
    assert dn.class_order() == imr.class_order()  # same generator, same 200 labels
    assert imr.class_order(2025) != imr.class_order(2024)


@pytest.mark.parametrize(
    ("order", "n"),
    [
        (cifar100_class_order, 100),
        (tiny.class_order, 200),
        (imr.class_order, 200),
        (dn.class_order, 200),
    ],
)
def test_every_order_is_a_deterministic_permutation(order, n):
    first = order()
    assert sorted(first) == list(range(n)) and first == order() and first != list(range(n))
    assert check_order(first, n) == first


def test_check_order_rejects_non_permutations():
    with pytest.raises(ClipclError, match="not a permutation"):
        check_order([0, 1, 1], 3)


def test_imagenet_name_table_covers_both_datasets():
    assert len(IMAGENET_R_WNIDS) == 200 and list(IMAGENET_R_WNIDS) == sorted(set(IMAGENET_R_WNIDS))
    assert all(w in CLIP_IMAGENET_NAMES for w in IMAGENET_R_WNIDS)
    assert CLIP_IMAGENET_NAMES["n01443537"] == "goldfish"
    assert CLIP_IMAGENET_NAMES["n02124075"] == "Egyptian Mau"
    for templates in (
        imr.IMAGENET_R_TEMPLATES,
        dn.DOMAINNET_TEMPLATES,
        tiny.TINYIMAGENET_TEMPLATES,
    ):
        assert templates[0] == "a bad photo of a {}."
