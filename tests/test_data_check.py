"""`clipcl data check`, the data preflight of plan/submit/sbatch, the pre-resized cache, and
the MTIL / CIL benchmarks assembled from real loaders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clipcl.data import benchmark_info, get_benchmark
from clipcl.data.real import get_dataset
from clipcl.data.real.benchmarks import BENCHMARK_DATASETS, cil_tasks, class_groups
from clipcl.data.real.cache import MemmapImageDataset, load_splits, write_cache
from clipcl.errors import ClipclError
from tests.real.fixtures import write_cifar100

CLI = [sys.executable, "-m", "clipcl.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True)


def test_mtil_orders_are_registered_without_data():
    assert benchmark_info("mtil").task_names[:3] == ("Aircraft", "Caltech101", "CIFAR100")
    assert benchmark_info("mtil-order2").task_names[0] == "StanfordCars"
    assert len(BENCHMARK_DATASETS["mtil"]) == 11 and benchmark_info("mtil").protocol == "til"


def test_data_check_lists_every_missing_file_and_exits_nonzero(tmp_path):
    write_cifar100(tmp_path)  # one of MTIL's eleven datasets present
    res = run("data", "check", "--root", str(tmp_path), "--benchmark", "mtil")
    assert res.returncode == 1, res.stderr
    text = res.stdout.replace("\n", " ")
    for name in BENCHMARK_DATASETS["mtil"]:
        check = get_dataset(name).check(tmp_path)
        if name == "CIFAR100":
            assert check.status == "present"
            continue
        assert check.status == "missing" and check.missing
        for path in check.missing:
            assert path in res.stdout, f"{name}: {path} not listed"
    assert "how to get it" in text and "CIFAR100" in text


def test_data_check_of_a_complete_benchmark_exits_zero(tmp_path):
    write_cifar100(tmp_path)
    res = run("data", "check", "--root", str(tmp_path), "--benchmark", "cifar100-b0inc10")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "present" in res.stdout
    embedded = run("data", "check", "--root", str(tmp_path), "--benchmark", "mini-mtil")
    assert embedded.returncode == 0 and "embedded" in embedded.stdout


def test_submit_is_refused_with_the_list_and_nothing_is_written(tmp_path):
    write_cifar100(tmp_path / "data")
    sweep = tmp_path / "mtil.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": "mtil-check",
                "root": str(tmp_path / "runs"),
                "data_root": str(tmp_path / "data"),
                "benchmarks": ["mtil"],
                "methods": {"finetune": {}},
            }
        )
    )
    res = run("submit", str(sweep), "--backend", "local")
    assert res.returncode == 2 and "nothing was submitted" in res.stderr
    for path in get_dataset("Food").check(tmp_path / "data").missing:
        assert path in res.stdout
    assert not (tmp_path / "runs").exists()
    plan = run("plan", str(sweep))
    assert plan.returncode == 0 and "submit would be refused" in plan.stdout
    script = run("sbatch", str(sweep), "-o", str(tmp_path / "x.sbatch"))
    assert script.returncode == 2 and not (tmp_path / "x.sbatch").exists()


def test_a_relative_data_root_is_the_sweep_files_like_its_root(tmp_path):
    """``data_root: ../data`` in sweeps/x.yaml names <repo>/data whatever the working directory
    (as ``root`` does); ``--data-root`` stays relative to the working directory."""
    write_cifar100(tmp_path / "data")
    (tmp_path / "sweeps").mkdir()
    cwd = tmp_path / "deep" / "elsewhere"  # ../data from here is deep/data
    (cwd / "data").mkdir(parents=True)
    (tmp_path / "sweeps" / "mtil.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "rel",
                "root": "../runs",
                "data_root": "../data",
                "benchmarks": ["mtil"],
                "methods": {"finetune": {}},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "CLIPCL_DATA_ROOT"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])

    def plan(*extra: str) -> str:
        res = subprocess.run(
            [*CLI, "plan", "../../sweeps/mtil.yaml", *extra],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
        )
        assert res.returncode == 0, res.stderr
        return " ".join(res.stdout.split())  # rich wraps long paths

    shown = plan()
    for path in get_dataset("Food").check(tmp_path / "data").missing:
        assert path in shown
    assert f"{tmp_path / 'data'} " in shown and str(tmp_path / "deep" / "data") not in shown
    assert str(cwd / "data") in plan("--data-root", "data")


def test_real_benchmark_without_a_data_root_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("CLIPCL_DATA_ROOT", raising=False)
    with pytest.raises(ClipclError, match="pass --data-root"):
        get_benchmark("cifar100-b0inc10")


def test_class_groups_and_cil_tasks_remap_labels():
    assert class_groups(list(range(10)), 4, 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    images = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
    from clipcl.data import TensorImageDataset

    train = TensorImageDataset(images, torch.tensor([0, 1, 2, 3, 2, 1]))
    test = TensorImageDataset(images[:4], torch.tensor([3, 2, 1, 0]))
    train.labels = train.labels.tolist()  # what dataset_labels reads
    test.labels = test.labels.tolist()
    tasks = cil_tasks(["a", "b", "c", "d"], train, test, [2, 0, 3, 1], 2, 2)
    assert [t.class_names for t in tasks] == [("c", "a"), ("d", "b")]
    assert [tasks[0].train[i][1] for i in range(len(tasks[0].train))] == [1, 0, 0]  # 0→1, 2→0
    assert [tasks[1].test[i][1] for i in range(len(tasks[1].test))] == [0, 1]


def test_cifar100_cil_benchmark_from_pickles(tmp_path):
    write_cifar100(tmp_path, n_train=200, n_test=100)
    bench = get_benchmark("cifar100-b0inc10", data_root=str(tmp_path))
    assert len(bench.tasks) == 10 and bench.protocol == "cil"
    first = bench.tasks[0]
    assert first.templates == ("a bad photo of a {}.",)
    # the published order starts 87, 0, 52, ...: task 1's classes in that order
    assert first.class_names[:3] == ("class 87", "class 00", "class 52")
    seen = sum(len(t.train) for t in bench.tasks)
    assert seen == 200  # every training image lands in exactly one task


def test_cache_serves_identical_images_and_is_ignored_when_stale(tmp_path):
    write_cifar100(tmp_path, n_train=20, n_test=10)
    ds = get_dataset("CIFAR100")
    plain = ds.load(tmp_path)
    write_cache(ds, tmp_path, num_workers=0)
    cached = load_splits(ds, tmp_path)
    assert isinstance(cached.train, MemmapImageDataset)
    for i in (0, 7, 19):
        a, b = plain.train[i], cached.train[i]
        assert torch.equal(a[0], b[0]) and a[1] == b[1]
    # the dataset changes (more images): the cache no longer matches and is not used
    write_cifar100(tmp_path, n_train=21, n_test=10)
    assert not isinstance(load_splits(ds, tmp_path).train, MemmapImageDataset)
    labels = np.load(tmp_path / ".clipcl-cache" / "CIFAR100" / "train.labels.npy")
    assert len(labels) == 20


def _write_mtil(root):
    from tests.real import fixtures_a as a
    from tests.real import fixtures_b as b

    write_cifar100(root, n_train=8, n_test=4)
    for writer in (
        a.write_aircraft,
        a.write_caltech101,
        a.write_dtd,
        a.write_eurosat,
        a.write_flowers,
        a.write_food,
        b.write_mnist,
        b.write_pets,
        b.write_cars,
        b.write_sun397,
    ):
        writer(root)


def test_a_chain_trains_on_mtil_read_from_real_formats(tmp_path):
    """All eleven MTIL datasets in their on-disk formats → `mtil` → a finetune chain runs."""
    from clipcl.workers import ChainSpec, run_chain

    data = tmp_path / "data"
    _write_mtil(data)
    res = run("data", "check", "--root", str(data), "--benchmark", "mtil")
    assert res.returncode == 0, res.stdout
    bench = get_benchmark("mtil", data_root=str(data))
    assert [t.name for t in bench.tasks] == list(benchmark_info("mtil").task_names)
    assert bench.tasks[2].num_classes == 100 and bench.tasks[7].class_names[:2] == ("0", "1")
    spec = ChainSpec.build(
        {
            "model": {"arch": "tiny"},
            "benchmark": "mtil",
            "method": "finetune",
            "train": {"iterations": 2, "batch_size": 4, "warmup_steps": 1},
        }
    )
    result = run_chain(spec, tmp_path / "run", data_root=str(data))
    assert len(result.matrix) == 11 and result.metrics is not None


def test_docs_list_every_dataset_layout():
    """docs/datasets.md's layout table matches the loaders (folder and needed files)."""
    from clipcl.data.real import dataset_names

    doc = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    for name in dataset_names():
        ds = get_dataset(name)
        row = next((ln for ln in doc.splitlines() if ln.startswith(f"| {name} |")), "")
        assert f"`{ds.folder}/`" in row, name
        for rel in ds.expected():
            assert f"`{rel}`" in row, (name, rel)
    for bench in BENCHMARK_DATASETS:
        assert f"`{bench}`" in doc, bench
