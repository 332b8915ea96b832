"""``ogd``: the task basis of sampled gradients on hand-built matrices, the union kept
orthonormal, which steps are sampled, the bases spanning exactly the sampled gradients of a real
task, a full AdamW step with nothing along the bases (and the gradient variant leaking), the
``project: false`` twin equal to finetune, tracked parameters, the cap, state checks and strict
configs. The chain's resume is in test_resume_all_methods.py, its mid-task kills in
test_snapshots.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError

from clipcl.methods import TaskContext, create_method, method_config
from clipcl.methods.finetune import Finetune
from clipcl.methods.ogd import OGD, block_weight, sample_steps
from clipcl.methods.projection import extend_basis, gradient_basis, relative_component
from clipcl.models import ClipModel
from clipcl.workers.spec import TrainConfig
from tests.helpers import cil_context, method_on, run_task, tiny_model, tiny_spec


def _ogd(model: ClipModel, **cfg: Any) -> OGD:
    return method_on(model, "ogd", OGD, **cfg)  # type: ignore[return-value]


def _train(**kw: Any) -> TrainConfig:
    base = {"iterations": 4, "batch_size": 32, "warmup_steps": 0}
    return TrainConfig(**{**base, **kw})


def _ctx(index: int, steps: int | None) -> TaskContext:
    base = cil_context(index)
    return TaskContext(base.index, base.task, base.benchmark, base.seed, steps=steps)


def _run_task(method, ctx: TaskContext, cfg: TrainConfig) -> None:
    """before_task → train → after_task, as the chain does."""
    run_task(method, ctx, cfg)


def _orthonormal(u: torch.Tensor, atol: float = 1e-10) -> bool:
    eye = torch.eye(u.shape[1], dtype=torch.float64)
    return torch.allclose(u.to(torch.float64).t() @ u.to(torch.float64), eye, atol=atol)


# ----- the linear algebra, by hand -----
def test_gradient_basis_keeps_the_directions_whose_energy_reaches_the_fraction() -> None:
    # Rows 3·e1, 1·e2 (and a copy of e2): σ² = 9 and 2 along e1 and e2, 11 in all.
    g = torch.tensor([[3.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 1.0, 0, 0]])
    for energy, k in [(0.5, 1), (9 / 11, 1), (0.82, 2), (0.97, 2), (1.0, 2)]:
        u = gradient_basis(g, energy)
        assert u.shape == (4, k), energy
        assert _orthonormal(u)
    u = gradient_basis(g, 0.5)
    assert torch.allclose(u.abs().flatten(), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))
    # Rank 2 in R^4 from 3 samples: σ of the third direction is 0 and is never kept.
    assert gradient_basis(g, 1.0).shape[1] == 2
    assert gradient_basis(torch.zeros(3, 4), 0.97).shape == (4, 0)
    with pytest.raises(ValueError, match="energy"):
        gradient_basis(g, 0.0)


def test_gradient_basis_spans_the_samples_at_energy_one() -> None:
    g = torch.randn(5, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = gradient_basis(g, 1.0)
    assert u.shape == (40, 5) and _orthonormal(u)
    residual = g - (g @ u) @ u.t()
    assert float(residual.norm() / g.norm()) < 1e-12


def test_extend_basis_keeps_the_old_columns_and_adds_only_what_is_new() -> None:
    e = torch.eye(4, dtype=torch.float64)
    old = e[:, :1]  # e1
    new = torch.stack([e[:, 0], (e[:, 0] + e[:, 1]) / 2**0.5, e[:, 2]], dim=1)  # e1, (e1+e2)/√2, e3
    u = extend_basis(old, new)
    assert u.shape == (4, 3) and _orthonormal(u)
    assert torch.equal(u[:, 0], old[:, 0])  # the old column is first and unchanged
    assert float(u[3].abs().max()) < 1e-12  # e4 is not in the union
    assert extend_basis(old, new, max_columns=2).shape == (4, 2)
    assert torch.equal(extend_basis(u, e[:, :3]), u)  # nothing new: unchanged
    assert extend_basis(None, e[:, :2]).shape == (4, 2)
    full = extend_basis(u, e)  # at most n columns
    assert full.shape == (4, 4) and _orthonormal(full)


def test_sampled_steps_are_evenly_spaced() -> None:
    assert sample_steps(8, 4) == {0, 2, 4, 6}
    assert sample_steps(10, 3) == {0, 3, 6}
    assert sample_steps(3, 10) == {0, 1, 2}  # more samples than steps: every step once
    assert sample_steps(None, 3) == {0, 1, 2}
    assert sample_steps(1000, 10) == set(range(0, 1000, 100))


def test_block_weights_are_the_frameworks_tracked_layers() -> None:
    names = [n for n, _ in tiny_model().named_parameters()]
    tracked = {n for n in names if block_weight(n)}
    assert "clip.visual.transformer.resblocks.0.attn.in_proj_weight" in tracked
    assert "clip.visual.transformer.resblocks.0.mlp.c_fc.weight" in tracked
    assert "clip.visual.transformer.resblocks.0.ln_1.weight" in tracked
    assert "clip.ln_final.weight" in tracked
    for left_out in (
        "clip.visual.transformer.resblocks.0.attn.in_proj_bias",
        "clip.visual.transformer.resblocks.0.mlp.c_fc.bias",
        "clip.visual.conv1.weight",
        "clip.token_embedding.weight",
        "clip.visual.proj",
    ):
        assert left_out in names and left_out not in tracked, left_out


# ----- on the tiny CLIP -----
class _Spy(OGD):
    """OGD that also keeps every step's raw gradient of each tracked parameter."""

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        self.seen: list[dict[str, torch.Tensor]] = []

    def after_backward(self) -> None:
        self.seen.append({n: p.grad.detach().flatten().double().clone() for n, p in self._tracked})
        super().after_backward()


def test_the_bases_span_exactly_the_sampled_gradients() -> None:
    model = tiny_model()
    method = _Spy(method_config("ogd", {"samples": 3, "energy": 1.0, "train_mode": "image"}))
    method.setup(model)
    _run_task(method, _ctx(0, steps=6), _train(iterations=6, lr=1e-3))
    assert len(method.seen) == 6
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(method.bases) == trainable and all(n.startswith("clip.visual.") for n in trainable)
    wide = 0
    for name, basis in method.bases.items():
        n, k = basis.shape
        assert 1 <= k <= min(3, n), name
        u = basis.double()
        assert _orthonormal(u, atol=1e-5), name  # stored in float32
        for step, grads in enumerate(method.seen):
            g = grads[name]
            if float(g.norm()) == 0.0:
                continue
            off = float((g - u @ (u.t() @ g)).norm() / g.norm())
            if step in (0, 2, 4):  # sampled: inside the span (float32 basis)
                assert off < 1e-5, (name, step, off)
            elif n > 3:  # not sampled: a fourth direction, outside a 3-dim span
                assert off > 1e-3, (name, step, off)
                wide += 1
    assert wide > 0


def test_a_full_adamw_step_has_no_component_along_the_bases() -> None:
    """AdamW with weight decay after task 0: the projected update stays off every basis; the
    framework's gradient projection leaks (Adam's per-coordinate scaling, −λθ)."""
    adamw = _train(iterations=3, lr=1e-2, optimizer="adamw", weight_decay=0.1)
    leaks = {}
    for variant in (True, False):
        model = tiny_model()
        method = _ogd(model, samples=4, train_mode="image", project_update=variant)
        _run_task(method, _ctx(0, steps=4), _train(iterations=4, lr=1e-3))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        bases = {n: b.clone() for n, b in method.bases.items()}  # task 0's (task 1 adds more)
        _run_task(method, _ctx(1, steps=3), adamw)
        worst, moved = 0.0, 0
        for name, p in model.named_parameters():
            basis = bases.get(name)
            delta = (p.detach() - before[name]).reshape(1, -1)
            if basis is None or not float(delta.norm()):
                continue
            moved += float(delta.norm() / before[name].norm()) > 1e-4
            worst = max(worst, relative_component(delta, basis.double()))
        assert moved > 10  # the tower still learns
        leaks[variant] = worst
    assert leaks[True] <= 1e-5
    assert leaks[False] > 1e-2


def test_project_false_is_finetune_on_the_same_batches() -> None:
    weights = []
    for name, cls, cfg in [
        ("ogd", OGD, {"project": False, "train_mode": "image"}),
        ("finetune", Finetune, {"train_mode": "image"}),
    ]:
        model = tiny_model()
        method = method_on(model, name, cls, **cfg)
        for k in range(2):
            _run_task(method, _ctx(k, steps=3), _train(iterations=3, lr=1e-3))
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
        if name == "ogd":
            assert method.bases == {}  # type: ignore[attr-defined]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])


def test_tracked_block_weights_projects_only_those_and_max_basis_caps() -> None:
    model = tiny_model()
    method = _ogd(model, samples=5, tracked="block-weights", max_basis=3, train_mode="image")
    _run_task(method, _ctx(0, steps=5), _train(iterations=5, lr=1e-3))
    _run_task(method, _ctx(1, steps=5), _train(iterations=5, lr=1e-3))
    assert method.bases and all(block_weight(n) for n in method.bases)
    assert "clip.visual.conv1.weight" not in method.bases
    assert max(k for k, _ in method.basis_sizes().values()) == 3


def test_state_dicts_round_trip_and_reject_what_does_not_fit() -> None:
    model = tiny_model()
    method = _ogd(model, samples=2, train_mode="image")
    _run_task(method, _ctx(0, steps=2), _train(iterations=2, lr=1e-3))
    other = _ogd(tiny_model(), samples=2, train_mode="image")
    other.load_state_dict(method.state_dict())
    assert all(torch.equal(other.bases[n], b) for n, b in method.bases.items())
    name = next(iter(method.bases))
    with pytest.raises(ValueError, match="does not have"):
        other.load_state_dict({"bases": {"clip.nothing": method.bases[name]}})
    with pytest.raises(ValueError, match="has shape"):
        other.load_state_dict({"bases": {name: method.bases[name][:-1]}})
    # task state: the step counter and the samples so far
    other.before_task(_ctx(1, steps=4))
    other._samples[name].append(torch.ones(method.bases[name].shape[0]))
    other._step = 1
    state = other.task_state_dict()
    again = _ogd(tiny_model(), samples=2, train_mode="image")
    again.before_task(_ctx(1, steps=4))
    again.load_task_state_dict(state)
    assert again._step == 1 and torch.equal(again._samples[name][0], state["samples"][name][0])
    with pytest.raises(ValueError, match="another size"):
        again.load_task_state_dict(
            {**state, "samples": {**state["samples"], name: [torch.ones(2)]}}
        )
    text_mode = _ogd(tiny_model(), samples=2, train_mode="text")
    text_mode.before_task(_ctx(1, steps=4))
    with pytest.raises(ValueError, match="sampled parameters differ"):
        text_mode.load_task_state_dict(state)


def test_bad_configs_are_clear_errors() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        create_method("ogd", {"samples": 0})
    with pytest.raises(ValidationError, match="greater than 0"):
        create_method("ogd", {"energy": 0})
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        create_method("ogd", {"energy": 1.5})
    with pytest.raises(ValidationError, match="'trainable' or 'block-weights'"):
        create_method("ogd", {"tracked": "all"})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        create_method("ogd", {"max_basis": 0})
    with pytest.raises(ValidationError, match="Extra inputs"):
        create_method("ogd", {"sample": 10})
    spec = tiny_spec("ogd")
    assert spec.train.optimizer == "adamw"  # finetune's training
