"""CIFAR loaders on tiny pickles written in the real format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from clipcl.data.real import IMAGE_SIZE, get_dataset, split_80_20
from tests.real.fixtures import write_cifar100


def test_cifar100_loads_names_splits_and_labels(tmp_path):
    d = write_cifar100(tmp_path, n_train=6, n_test=4)
    splits = get_dataset("CIFAR100").load(tmp_path)
    assert len(splits.class_names) == 100 and splits.class_names[3] == "class 03"
    assert (len(splits.train), len(splits.test)) == (6, 4)
    image, label = splits.train[2]
    assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and str(image.dtype) == "torch.uint8"
    assert label == 2 and splits.test[1][1] == 51
    # the pixels are the pickle's (32×32 upscaled: the mean colour survives)
    with open(d / "train", "rb") as fh:
        raw = pickle.load(fh, encoding="latin1")["data"][2]
    want = raw.reshape(3, 32, 32).astype(float).mean(axis=(1, 2))
    assert np.allclose(image.float().mean(dim=(1, 2)).numpy(), want, atol=3)


def test_cifar100_check_reports_missing_and_malformed(tmp_path):
    ds = get_dataset("CIFAR100")
    check = ds.check(tmp_path)
    assert check.status == "missing"
    d = tmp_path / "cifar-100-python"
    assert check.missing == [str(d / f) for f in ("meta", "train", "test")]
    d = write_cifar100(tmp_path)
    assert ds.check(tmp_path).status == "present"
    (d / "test").write_bytes(b"not a pickle")
    check = ds.check(tmp_path)
    assert check.status == "malformed" and "test" in check.problems[0]


def test_split_80_20_is_deterministic_and_disjoint():
    a, b = split_80_20(101)
    assert split_80_20(101) == (a, b) and len(a) == 80 and len(b) == 21
    # the membership of torch.utils.data.random_split with a seed-42 generator (ZSCL's split)
    import torch

    ref = torch.utils.data.random_split(
        range(101), [80, 21], generator=torch.Generator().manual_seed(42)
    )
    assert (sorted(ref[0].indices), sorted(ref[1].indices)) == (a, b)
    assert not set(a) & set(b) and sorted(a + b) == list(range(101))
    assert split_80_20(101, seed=1) != (a, b)


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(Exception, match="unknown dataset 'CIFAR1000'.*did you mean"):
        get_dataset("CIFAR1000")


def test_cifar10_loads_five_training_batches_in_order(tmp_path):
    from tests.real.fixtures import write_cifar10

    write_cifar10(tmp_path, per_batch=3, n_test=4)
    splits = get_dataset("CIFAR10").load(tmp_path)
    assert splits.class_names[1] == "automobile" and len(splits.class_names) == 10
    assert (len(splits.train), len(splits.test)) == (15, 4)
    # batch k's labels are (i + k) % 10: batch 1 first, batch 5 last
    assert [splits.train[i][1] for i in (0, 3, 14)] == [1, 2, 7]
    assert splits.test[0][0].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    check = get_dataset("CIFAR10").check(tmp_path)
    assert check.status == "missing"
    assert check.missing == [str(tmp_path / "cifar-10-batches-py" / "data_batch_3")]


def test_cifar_pickles_with_bytes_keys_load(tmp_path):
    # Pickles loaded with encoding="bytes" and saved again from Python 3 (bytes keys and names)
    from tests.real.fixtures import write_cifar10

    write_cifar100(tmp_path, n_train=6, n_test=4, bytes_keys=True)
    cifar100 = get_dataset("CIFAR100")
    assert cifar100.check(tmp_path).status == "present"
    splits = cifar100.load(tmp_path)
    assert splits.class_names[3] == "class 03" and splits.test[1][1] == 51
    plain = get_dataset("CIFAR100").load(write_cifar100(tmp_path / "str").parent)
    assert np.array_equal(splits.train[2][0].numpy(), plain.train[2][0].numpy())
    write_cifar10(tmp_path, per_batch=3, n_test=4, bytes_keys=True)
    assert get_dataset("CIFAR10").check(tmp_path).status == "present"
    splits = get_dataset("CIFAR10").load(tmp_path)
    assert splits.class_names[1] == "automobile" and [splits.train[i][1] for i in (0, 14)] == [1, 7]
