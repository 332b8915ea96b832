"""``eval.extra`` (issue 20): held-out real datasets evaluated after every task and in the
zero-shot row, never trained, kept apart from the matrix (``heldout.jsonl``, the store's
``heldout_rows``) and shown as Held-out columns by ``results``; the seed's spellings; a resumed
chain; an unknown or missing dataset is one error line and writes nothing. Fixtures: the tiny
on-disk copies of tests/real."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipcl.data.real.benchmarks import load_heldout
from clipcl.models import build_model
from clipcl.results.records import RunDir
from clipcl.results.rows import ChainRecord
from clipcl.results.store import ResultsStore
from clipcl.results.tables import summarize
from clipcl.workers import ChainSpec, run_chain
from clipcl.workers.chain import seed_everything
from clipcl.workers.evaluate import _count_correct
from tests.helpers import clipcl_inprocess, tiny_spec
from tests.real.fixtures_b import write_imagenet
from tests.real.fixtures_c import write_imagenet_r


def _spec(extra: list[str], seed: int = 0, iterations: int = 3) -> ChainSpec:
    data = tiny_spec(iterations=iterations, seed=seed).model_dump(mode="json")
    return ChainSpec.build({**data, "eval": {**data["eval"], "extra": extra}})


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_imagenet(root)
    write_imagenet_r(root, n=3)
    return root


def test_names_take_the_seed_spellings_and_ids_stay_without_them() -> None:
    assert _spec(["ImageNetR", "imagenet"]).eval.extra == ("ImageNet-R", "ImageNet")
    assert _spec([]).chain_id == tiny_spec(iterations=3).chain_id
    assert _spec(["ImageNet"]).chain_id != tiny_spec(iterations=3).chain_id


def test_after_every_task_and_zero_shot_never_in_the_matrix(tmp_path, data_root) -> None:
    spec = _spec(["ImageNet-R", "ImageNet"])
    run = RunDir.of(tmp_path / "runs", spec.chain_id)
    result = run_chain(spec, run.path, data_root=str(data_root))
    plain = run_chain(tiny_spec(iterations=3), tmp_path / "plain")
    np.testing.assert_array_equal(result.matrix, plain.matrix)  # training is untouched
    rows = run.read_heldout_rows()
    tasks = result.matrix.shape[0]
    assert sorted((r.trained_task, r.eval_task, r.eval_name) for r in rows) == [
        (t, j, name) for t in range(-1, tasks) for j, name in enumerate(["ImageNet-R", "ImageNet"])
    ]
    # the zero-shot row is the pretrained model on the set's own class prompts
    sets = load_heldout(["ImageNet-R"], data_root)
    seed_everything(0, -1)  # as the chain builds its model
    model = build_model(spec.model, torch.device("cpu")).eval()
    clf = model.class_embeddings(sets[0].class_names, sets[0].templates).float()
    correct, total, correct5 = _count_correct(model, sets[0], clf, 0, 256, "fp32", 0)
    zs = next(r for r in rows if r.trained_task == -1 and r.eval_task == 0)
    assert (zs.correct, zs.total, zs.correct5) == (correct, total, correct5)
    assert total == len(sets[0].test) > 0
    assert {(r.trained_task, r.eval_task) for r in run.read_rows()} == {
        (r.trained_task, r.eval_task) for r in RunDir(tmp_path / "plain").read_rows()
    }


def test_store_and_results_show_held_out_columns(tmp_path, data_root) -> None:
    runs = tmp_path / "runs"
    specs = [_spec(["ImageNet-R"], seed=s) for s in (0, 1)]
    for spec in specs:
        run_chain(spec, RunDir.of(runs, spec.chain_id).path, data_root=str(data_root))
    with ResultsStore(runs) as store:
        recs = [
            ChainRecord.from_spec(s.chain_id, RunDir.of(runs, s.chain_id).read_spec())
            for s in specs
        ]
        store.record_sweep("s", None, {}, recs, {})
        store.ingest_root(runs)
        held = store.heldout_rows_frame("s")
        frame = store.eval_rows_frame("s")
    tasks = int(frame["num_tasks"].iloc[0])
    assert len(held) == 2 * (tasks + 1) and set(held["dataset"]) == {"ImageNet-R"}
    assert len(frame) == 2 * (tasks * tasks + tasks)  # no held-out row in the matrix rows
    final = held[held["trained_task"] == tasks - 1]["top1"].to_numpy()
    res = clipcl_inprocess("results", "s", "--root", runs, "--format", "json")
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert row["heldout/ImageNet-R_mean"] == pytest.approx(final.mean())
    assert row["heldout/ImageNet-R_std"] == pytest.approx(final.std(ddof=1))
    want = summarize(frame).iloc[0]
    assert row["transfer_mean"] == pytest.approx(want["transfer_mean"])  # metrics unchanged
    table = clipcl_inprocess("results", "s", "--root", runs, "--format", "md")
    assert "Held-out/ImageNet-R" in table.stdout


def test_a_resumed_chain_has_the_same_held_out_rows(tmp_path, data_root) -> None:
    spec = _spec(["ImageNet-R"])
    straight, resumed = (
        RunDir.of(tmp_path / "a", spec.chain_id),
        RunDir.of(tmp_path / "b", spec.chain_id),
    )
    run_chain(spec, straight.path, data_root=str(data_root))
    run_chain(spec, resumed.path, data_root=str(data_root), until_task=1)
    run_chain(spec, resumed.path, data_root=str(data_root))

    def key(r):
        return (r.trained_task, r.eval_task, r.correct, r.total, r.correct5)

    assert sorted(map(key, straight.read_heldout_rows())) == sorted(
        map(key, resumed.read_heldout_rows())
    )


@pytest.mark.parametrize(
    ("extra", "data", "expected"),
    [
        ("ImageNetX", True, ("eval.extra", "unknown dataset 'ImageNetX'", "ImageNet-R")),
        ("ImageNet-R", False, ("eval.extra", "--data-root")),
        ("TinyImageNet", True, ("eval.extra", "TinyImageNet", "missing")),
    ],
)
def test_unknown_or_missing_dataset_is_one_error_line(
    tmp_path, data_root, extra, data, expected
) -> None:
    root = tmp_path / "root"
    args = ["chain", "run", "--model", "tiny", "--benchmark", "smoke", "--method", "finetune"]
    args += ["--root", str(root), "--set", f"eval.extra=ImageNet,{extra}"]
    if data:
        args += ["--data-root", str(data_root)]
    res = clipcl_inprocess(*args)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and res.stdout == "", res.stdout + res.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert not root.exists()


def test_submit_refuses_a_sweep_whose_held_out_set_is_missing(tmp_path, data_root) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "name: s\nroot: runs\nbenchmarks: [smoke]\nmethods: {zeroshot: {}}\n"
        "eval: {extra: [TinyImageNet]}\n"
    )
    res = clipcl_inprocess("submit", sweep, "--data-root", data_root)
    assert res.returncode == 2 and "TinyImageNet" in res.stdout + res.stderr
    assert "nothing was submitted" in res.stderr
    assert not (tmp_path / "runs").exists()


def test_submit_without_a_data_root_names_eval_extra_not_a_benchmark(tmp_path, monkeypatch) -> None:
    """Only the held-out sets read from disk: the refusal names eval.extra and its sets, and
    does not offer `clipcl data check --benchmark eval.extra` (no such benchmark)."""
    from clipcl.data.catalog import DATA_ROOT_ENV

    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "name: s\nroot: runs\nbenchmarks: [smoke]\nmethods: {zeroshot: {}}\n"
        "eval: {extra: [TinyImageNet, ImageNet-R]}\n"
    )
    res = clipcl_inprocess("submit", sweep)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stdout + res.stderr
    assert "eval.extra (ImageNet-R, TinyImageNet) reads datasets from disk" in lines[0], lines[0]
    assert "--data-root" in lines[0] and "benchmark" not in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()
