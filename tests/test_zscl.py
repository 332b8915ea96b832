"""ZSCL and LwF: the distillation loss, weight ensembling, the cached reference text, chains."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from clipcl.data import get_benchmark
from clipcl.errors import ClipclError
from clipcl.methods import TaskContext, create_method
from clipcl.methods.zscl import distillation
from clipcl.models import ModelConfig, build_model
from clipcl.workers import run_chain
from tests.helpers import tiny_spec


def test_distillation_equals_a_hand_computed_value():
    t = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    # τ = 2: row 0: p = softmax([1, 0]), log q = log softmax([0, 0]) = [-ln 2, -ln 2] → ln 2
    # row 1: p = softmax([0, 1]), log q = log softmax([0.5, 0]) → 0.268941·0.474077 +
    # 0.731059·0.974077 = 0.839606; τ² · mean = 4 · (0.693147 + 0.839606) / 2
    want = 4 * (math.log(2) + 0.268941 * 0.474077 + 0.731059 * 0.974077) / 2
    assert float(distillation(t, s, 2.0)) == pytest.approx(want, abs=1e-5)
    assert float(distillation(s, s, 2.0)) == pytest.approx(
        4 * float(-(torch.softmax(s / 2, 1) * torch.log_softmax(s / 2, 1)).sum(1).mean()), abs=1e-6
    )


def _method(**kw):
    model = build_model(ModelConfig(arch="tiny"), torch.device("cpu"))
    method = create_method("zscl", {"reference_size": 64, "reference_batch_size": 8, **kw})
    method.setup(model)
    bench = get_benchmark("smoke")
    ctx = TaskContext(index=0, task=bench.tasks[0], benchmark=bench, seed=0)
    torch.manual_seed(0)
    method.before_task(ctx)
    return model, method, ctx


def test_weight_ensemble_is_the_running_mean_of_the_merge_points():
    model, method, ctx = _method(avg_freq=3, image_loss=False, text_loss=False, l2=0.0)
    name, p = method._trainable[0]
    start = p.detach().clone()
    merged = [start]  # θ_{t−1} is the first element of the average
    for step in range(8):  # merges after steps 0, 3, 6, and the final weights (step 7)
        with torch.no_grad():
            p.add_(float(step + 1))
        method.after_step()
        if step % 3 == 0 or step == 7:
            merged.append(p.detach().clone())
    method.after_task(ctx, None)
    torch.testing.assert_close(p.detach(), torch.stack(merged).mean(0), rtol=0, atol=1e-5)


def test_cached_reference_text_gives_exactly_the_same_loss():
    model, cached, _ = _method(cache_text=True)
    _, fresh, _ = _method(cache_text=False)
    fresh.model = model  # the same student
    fresh.teacher = cached.teacher
    batch = cached._reference_batch()
    a = cached.kd_loss(batch)
    b = cached.kd_loss(batch)  # served from the cache
    c = fresh.kd_loss(batch)  # recomputed
    assert torch.equal(a, b) and torch.equal(a, c)
    assert cached._text_cache is not None and cached._text_cache.shape[0] == 64


def test_l2_is_zero_at_the_start_and_grows_with_the_change():
    model, method, _ = _method()
    assert float(method.l2_loss().detach()) == 0.0
    _, p = method._trainable[0]
    with torch.no_grad():
        p.add_(0.5)
    assert float(method.l2_loss().detach()) == pytest.approx(0.25 * p.numel(), rel=1e-5)


@pytest.mark.parametrize("method", ["zscl", "lwf"])
def test_whole_chain_has_metrics(resume_runs, method: str):
    # The resume after task 0 (same matrix, weights) is in test_resume_all_methods.py.
    runs = resume_runs(method)
    assert runs.case.tasks == 3 and runs.full.metrics


def test_reference_folder_and_captions(tmp_path: Path):
    from tests.real.fixtures import write_jpeg

    for i in range(3):
        write_jpeg(tmp_path / "imgs" / f"sub{i}" / f"{i}.jpg", seed=i)
    (tmp_path / "caps.txt").write_text("a red circle\n\na blue square\n")
    model, method, _ = _method(
        reference="folder",
        reference_images=str(tmp_path / "imgs"),
        reference_captions=str(tmp_path / "caps.txt"),
    )
    assert method._ref_captions == ["a red circle", "a blue square"]
    batch = method._reference_batch()
    assert batch.shape == (8, 3, 224, 224)
    assert torch.isfinite(method.kd_loss(batch))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipclError, match="no images"):
        _method(
            reference="folder",
            reference_images=str(tmp_path / "empty"),
            reference_captions=str(tmp_path / "caps.txt"),
        )


def test_reference_folder_needs_both_paths():
    with pytest.raises(Exception, match="reference_images and reference_captions"):
        create_method("zscl", {"reference": "folder"})


@pytest.mark.parametrize(
    "name,kd,l2,we",
    [("l2", False, 1.0, False), ("we", False, 0.0, True), ("lwf", True, 0.0, False)],
)
def test_presets_are_zscl_with_terms_switched(tmp_path: Path, name, kd, l2, we):
    cfg = create_method(name, {}).config
    assert (cfg.image_loss and cfg.text_loss) == kd and cfg.l2 == l2 and cfg.we == we
    if name != "lwf":
        result = run_chain(tiny_spec(name, iterations=4, avg_freq=2), tmp_path / "run")
        assert result.metrics is not None
