"""The procedural world and the mini benchmarks: determinism, splits, vocabularies."""

from __future__ import annotations

import hashlib

import torch

from clipcl.data import benchmark_info, get_benchmark, world
from clipcl.data.mini import (
    DOMAINS,
    ORDER_I,
    ORDER_II,
    cil_class_order,
    domain_split,
    reference_set,
)


def _digest(images: torch.Tensor) -> str:
    return hashlib.sha256(images.numpy().tobytes()).hexdigest()


def _row_hashes(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(im.numpy().tobytes()).hexdigest() for im in images}


def test_same_seed_same_images_and_captions() -> None:
    a_img, a_cap = world.sample_pretraining_batch(7, 300)
    b_img, b_cap = world.sample_pretraining_batch(7, 300)
    assert torch.equal(a_img, b_img) and a_cap == b_cap
    c_img, _ = world.sample_pretraining_batch(8, 300)
    assert not torch.equal(a_img, c_img)


def test_domain_splits_are_deterministic() -> None:
    for name in DOMAINS:
        assert _digest(domain_split(name, "test").images) == _digest(
            domain_split(name, "test").images
        ), name


def test_train_and_test_splits_are_disjoint() -> None:
    for name in DOMAINS:
        train, test = domain_split(name, "train"), domain_split(name, "test")
        assert not (_row_hashes(train.images) & _row_hashes(test.images)), name


def test_reference_set_is_held_out_from_pretraining_seeds() -> None:
    images, captions = reference_set(64)
    pre, _ = world.sample_pretraining_batch(0, 64)
    assert len(captions) == 64 and not (_row_hashes(images) & _row_hashes(pre))


def test_images_are_uint8_rgb_and_labels_balanced() -> None:
    ds = domain_split("shapes", "train")
    assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (3, 32, 32)
    assert torch.bincount(ds.labels).tolist() == [32] * 8


def test_captions_never_name_glyphs_and_use_the_seen_vocabulary() -> None:
    _, captions = world.sample_pretraining_batch(3, 2000)
    text = " ".join(captions)
    for seen in ["circle", "red", "checkerboard", "three", "top left", "small"]:
        assert seen in text
    words = set(text.replace(".", " ").split())
    assert not words & {"letter", "digit", "number"}
    assert not words & set(world.GLYPHS) - {"a", "A"}  # 'a' is an article, not the glyph


def test_glyph_images_differ_by_glyph() -> None:
    bank = world.glyph_bank()
    assert bank.shape == (36, 20, 20)
    flat = bank.flatten(1)
    assert len({tuple((row > 0.5).tolist()) for row in flat}) == 36


def test_mini_mtil_orders_and_mini_cil_class_order() -> None:
    assert benchmark_info("mini-mtil").task_names == tuple(ORDER_I)
    assert benchmark_info("mini-mtil-order2").task_names == tuple(ORDER_II)
    assert sorted(ORDER_II) == sorted(ORDER_I) and sorted(ORDER_I) == ORDER_I
    assert len(ORDER_I) >= 7
    order = cil_class_order()
    assert sorted(order) == list(range(48)) and order == cil_class_order()
    cil = get_benchmark("mini-cil")
    assert cil.protocol == "cil" and len(cil.tasks) == 6
    names = [c for t in cil.tasks for c in t.class_names]
    assert len(set(names)) == 48
    classes = DOMAINS["colored-shapes"].classes
    assert names == [classes[i] for i in order]
    for task in cil.tasks:  # labels are local to the task and every class has its images
        assert torch.bincount(task.test.labels).tolist() == [16] * 8
