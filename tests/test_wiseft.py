"""``wise-ft``: after each task θ_t = α θ_ft + (1 − α) θ_{t−1} exactly; α = 1 is finetune,
α = 0 stays at the start; θ_{t−1} is right after a resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from clipcl.data import get_benchmark
from clipcl.methods import TaskContext, create_method
from clipcl.models import ClipModel, build_model, load_checkpoint
from clipcl.results.records import RunDir
from clipcl.workers import run_chain
from clipcl.workers.chain import ChainResult, seed_everything
from clipcl.workers.train import make_loader, train_task
from tests.helpers import tiny_spec


def _snapshot(model: ClipModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _final_weights(run_dir: Path, task: int = 2) -> dict[str, torch.Tensor]:
    return load_checkpoint(RunDir(run_dir).checkpoint_path(task), None)["model"]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ: {different[:5]}"


@pytest.mark.parametrize("train_mode", ["whole", "image-fc"])
def test_after_each_task_weights_are_the_exact_interpolation(train_mode: str) -> None:
    alpha = 0.8
    spec = tiny_spec("wise-ft", iterations=3, train_mode=train_mode, alpha=alpha)
    model = build_model(spec.model, torch.device("cpu"))
    method = create_method("wise-ft", {"alpha": alpha, "train_mode": train_mode})
    method.setup(model)
    bench = get_benchmark("smoke")
    for k in range(2):  # task 1 checks that θ_{t−1} is task 0's interpolated weights
        ctx = TaskContext(index=k, task=bench.tasks[k], benchmark=bench, seed=0)
        method.before_task(ctx)
        start = _snapshot(model)  # θ_{t−1} (incl. the new head's initialisation)
        loader = make_loader(
            ctx.task.train, 32, shuffle=True, seed=k, num_workers=0, pin_memory=False
        )
        train_task(model, method, ctx, spec.train, loader)
        finetuned = _snapshot(model)  # θ_ft
        method.after_task(ctx, loader)
        after = model.state_dict()
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trained  # the interpolation covered the trained params, the rest are untouched
        for key, prev in start.items():
            expected = alpha * finetuned[key] + (1 - alpha) * prev if key in trained else prev
            assert torch.equal(after[key], expected), key
            if key in trained and not torch.equal(finetuned[key], prev):
                assert not torch.equal(after[key], finetuned[key]), key


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory) -> tuple[Path, ChainResult]:
    """The plain finetune chain the wise-ft chains are compared with (same seed and data)."""
    run_dir = tmp_path_factory.mktemp("finetune") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_dir, run_chain(tiny_spec("finetune"), run_dir)
    finally:
        torch.set_num_threads(before)


def test_alpha_one_is_finetune_exactly(tmp_path: Path, finetune_run) -> None:
    ft_dir, ft = finetune_run
    wise = run_chain(tiny_spec("wise-ft", alpha=1.0), tmp_path / "wise")
    np.testing.assert_array_equal(wise.matrix, ft.matrix)
    _assert_same(_final_weights(tmp_path / "wise"), _final_weights(ft_dir))


def test_alpha_zero_keeps_the_starting_weights(tmp_path: Path) -> None:
    spec = tiny_spec("wise-ft", alpha=0.0)
    result = run_chain(spec, tmp_path / "run")
    seed_everything(spec.seed, -1)  # as run_chain builds the model
    pretrained = build_model(spec.model, torch.device("cpu")).state_dict()
    _assert_same(_final_weights(tmp_path / "run"), pretrained)
    np.testing.assert_array_equal(result.matrix, np.tile(result.zeroshot, (3, 1)))


def test_wise_ft_chain_differs_from_plain_finetuning(resume_runs, finetune_run) -> None:
    # The resume of this chain (same matrix, same weights) is checked in
    # test_resume_all_methods.py; the shared run is also compared with plain finetuning here.
    full = resume_runs("wise-ft").full
    assert not np.array_equal(full.matrix[:2], finetune_run[1].matrix[:2])


def test_alpha_out_of_range_is_rejected() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        create_method("wise-ft", {"alpha": 1.5})
    modes = "'whole', 'image', 'text', 'image-fc', 'image-fc-fixed' or 'fc'"
    with pytest.raises(ValidationError, match=modes):
        create_method("wise-ft", {"train_mode": "all"})
