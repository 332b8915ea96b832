"""Seed 002's weight averaging during training, each against a hand computation: ``we_wise``
(WiSE weight ensembling), ``moving_avg`` with its three references, and ``--wise-merge`` as
``wise-ft`` (with ``reference: zeroshot``); strict configs and chain ids kept. Their chains'
resumes are in test_resume_all_methods.py (``we`` cases) and test_snapshots.py."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from clipcl.data import get_benchmark
from clipcl.methods import TaskContext, create_method
from clipcl.models import ModelConfig, build_model
from clipcl.workers.train import make_loader, train_task
from tests.helpers import tiny_spec


def _method(name: str = "we", **kw):
    model = build_model(ModelConfig(arch="tiny"), torch.device("cpu"))
    method = create_method(name, kw)
    method.setup(model)
    bench = get_benchmark("smoke")
    ctx = TaskContext(index=0, task=bench.tasks[0], benchmark=bench, seed=0)
    method.before_task(ctx)
    return model, method, ctx


def _step(p: torch.Tensor, value: float) -> None:
    """Stand in for an optimizer step: θ ← θ + value."""
    with torch.no_grad():
        p.add_(value)


def test_we_wise_pulls_each_ensemble_update_back_to_the_start() -> None:
    alpha = 0.9
    model, method, ctx = _method(we_wise=True, we_wise_alpha=alpha, avg_freq=2)
    _, p = method._trainable[0]
    start = p.detach().clone().double()
    avg, n = start.clone(), 0
    for step in range(5):  # updates after steps 0, 2, 4 (4 is the last: no extra update)
        _step(p, float(step + 1))
        method.after_step()
        if step % 2 == 0:
            n += 1
            avg = alpha * ((n * avg + p.detach().double()) / (n + 1)) + (1 - alpha) * start
    method.after_task(ctx, None)
    torch.testing.assert_close(p.detach().double(), avg, rtol=0, atol=1e-5)
    # α = 1 is the plain running mean
    model, method, ctx = _method(we_wise=True, we_wise_alpha=1.0, avg_freq=1)
    _, p = method._trainable[0]
    points = [p.detach().clone()]
    for _ in range(3):
        _step(p, 1.0)
        method.after_step()
        points.append(p.detach().clone())
    method.after_task(ctx, None)
    torch.testing.assert_close(p.detach(), torch.stack(points).mean(0), rtol=0, atol=1e-5)


@pytest.mark.parametrize("reference", ["task-start", "previous", "zeroshot"])
def test_moving_avg_pulls_the_weights_towards_the_reference(reference: str) -> None:
    d = 0.75
    model, method, ctx = _method(
        we=False, moving_avg=True, moving_avg_decay=d, moving_avg_model=reference, avg_freq=2
    )
    _, p = method._trainable[0]
    start = p.detach().clone().double()
    if reference == "zeroshot":  # a task after the first: the pretrained weights differ
        with torch.no_grad():
            p.add_(10.0)
        method.before_task(ctx)
    theta = p.detach().clone().double()
    ref = start if reference == "zeroshot" else theta.clone()
    for step in range(5):  # pulls after steps 0, 2, 4
        _step(p, float(step + 1))
        theta = theta + float(step + 1)
        method.after_step()
        if step % 2 == 0:
            before = theta.clone()
            theta = d * theta + (1 - d) * ref
            if reference == "previous":
                ref = before
        torch.testing.assert_close(p.detach().double(), theta, rtol=0, atol=1e-4)
    method.after_task(ctx, None)  # nothing replaces θ afterwards
    torch.testing.assert_close(p.detach().double(), theta, rtol=0, atol=1e-4)


def test_moving_avg_previous_keeps_its_reference_in_the_task_state() -> None:
    model, method, ctx = _method(we=False, moving_avg=True, moving_avg_model="previous", avg_freq=1)
    _, p = method._trainable[0]
    _step(p, 1.0)
    method.after_step()
    state = method.task_state_dict()
    assert torch.equal(state["mv_ref"][0], method._mv_ref[0])
    _, again, _ = _method(we=False, moving_avg=True, moving_avg_model="previous", avg_freq=1)
    again.load_task_state_dict(state)
    assert torch.equal(again._mv_ref[0], method._mv_ref[0])
    with pytest.raises(ValueError, match="moving-average reference"):
        again.load_task_state_dict({**state, "mv_ref": state["mv_ref"][:1]})


def test_wise_merge_is_wise_ft_and_can_use_the_zero_shot_weights() -> None:
    alpha = 0.8
    spec = tiny_spec("wise-ft", iterations=2, reference="zeroshot")
    model = build_model(spec.model, torch.device("cpu"))
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = create_method("wise-ft", {"alpha": alpha, "reference": "zeroshot"})
    method.setup(model)
    bench = get_benchmark("smoke")
    for k in range(2):  # task 1: the reference is still θ_0, not task 0's result
        ctx = TaskContext(index=k, task=bench.tasks[k], benchmark=bench, seed=0)
        method.before_task(ctx)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        loader = make_loader(
            ctx.task.train, 32, shuffle=True, seed=k, num_workers=0, pin_memory=False
        )
        train_task(model, method, ctx, spec.train, loader)
        finetuned = {n: p.detach().clone() for n, p in model.named_parameters()}
        method.after_task(ctx, loader)
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        assert len(trained) > 10
        for name, p in model.named_parameters():
            if name not in trained:
                assert torch.equal(p.detach(), start[name]), name
                continue
            expected = alpha * finetuned[name] + (1 - alpha) * pretrained[name]
            assert torch.equal(p.detach(), expected), name
            if k == 1:  # θ_{t−1} ≠ θ_0 here, so the test tells the two references apart
                assert not torch.equal(pretrained[name], start[name]), name


def test_bad_combinations_are_clear_errors_and_old_ids_stay() -> None:
    with pytest.raises(ValidationError, match="we_wise .* needs we: true"):
        create_method("lwf", {"we_wise": True})
    with pytest.raises(ValidationError, match="moving_avg and we exclude each other"):
        create_method("we", {"moving_avg": True})
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        create_method("we", {"we_wise": True, "we_wise_alpha": 1.5})
    with pytest.raises(ValidationError, match="'task-start', 'previous' or 'zeroshot'"):
        create_method("we", {"we": False, "moving_avg": True, "moving_avg_model": "n"})
    with pytest.raises(ValidationError, match="'previous' or 'zeroshot'"):
        create_method("wise-ft", {"reference": "n"})
    # chain ids of runs made before these knobs existed are unchanged
    assert tiny_spec("we").chain_id == tiny_spec("we", we_wise=False, moving_avg=False).chain_id
    assert tiny_spec("wise-ft").chain_id == tiny_spec("wise-ft", reference="previous").chain_id
    assert tiny_spec("we").chain_id != tiny_spec("we", we_wise=True).chain_id
