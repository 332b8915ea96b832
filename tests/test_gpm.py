"""``gpm``: projected steps leave nothing along the bases, the old task's layer outputs survive a
new task (and do not without projection), bias freezing, which parameters train, the AdamW
update variant, a resumed chain on ``test-cil`` and strict configs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch.utils.data import Subset

from clipcl.data import Task, get_benchmark
from clipcl.errors import ClipclError
from clipcl.methods import TaskContext, create_method
from clipcl.methods.capture import attention_internals, capture
from clipcl.methods.gpm import GPM
from clipcl.methods.projection import relative_component
from clipcl.models import ClipModel, load_checkpoint
from clipcl.results.records import RunDir
from clipcl.workers import ChainSpec
from clipcl.workers.spec import TrainConfig
from clipcl.workers.train import make_loader, train_task
from tests.helpers import cil_context, gpm_chain_spec, method_on, run_task, tiny_model, tiny_spec

PREFIX = "visual.transformer.resblocks"


_model = tiny_model


def _gpm(model: ClipModel, **cfg: Any) -> GPM:
    return method_on(model, "gpm", GPM, **cfg)  # type: ignore[return-value]


def _train(**kw: Any) -> TrainConfig:
    base = {"iterations": 4, "batch_size": 32, "warmup_steps": 0, "optimizer": "sgd"}
    return TrainConfig(**{**base, **kw})


def _run_task(method: GPM, ctx: TaskContext, cfg: TrainConfig) -> None:
    """before_task → train → after_task, as the chain does."""
    run_task(method, ctx, cfg)


_ctx = cil_context


def _weights(method: GPM) -> dict[str, torch.Tensor]:
    return {n: layer.weight.detach().clone() for n, layer in method.layers.items()}


# ----- the projection guarantee -----
@pytest.mark.parametrize(
    "train", [{"lr": 0.2}, {"lr": 5.0, "momentum": 0.9, "grad_clip_norm": 1.0}]
)
def test_a_full_sgd_step_has_no_component_along_the_bases(train: dict) -> None:
    model = _model()
    method = _gpm(model)
    _run_task(method, _ctx(0), _train(iterations=2, lr=0.05))
    assert len(method.bases) == 4 * 3  # every layer kind of every block
    before = _weights(method)
    ctx = _ctx(1)
    method.before_task(ctx)
    cfg = _train(iterations=2, **train)
    loader = make_loader(ctx.task.train, 32, shuffle=True, seed=1, num_workers=0, pin_memory=False)
    train_task(model, method, ctx, cfg, loader)
    for name, w in _weights(method).items():
        delta, basis = w - before[name], method.bases[name]
        assert 0 < basis.shape[1] < basis.shape[0], name
        # The layer still learns, by enough that float32 rounding of W + ΔW (~1e-7 · ‖W‖)
        # stays far below the 1e-5 bound.
        assert float(delta.norm() / before[name].norm()) > 1e-2, name
        assert relative_component(delta, basis) <= 1e-5, name


def _old_task(n_images: int) -> Task:
    """A first task made of the first ``n_images`` training images of test-cil's part0."""
    part0 = get_benchmark("test-cil").tasks[0]
    keep = Subset(part0.train, range(n_images))
    return Task("old", part0.class_names, part0.templates, keep, part0.test)


def _layer_outputs(method: GPM, name: str, images: torch.Tensor) -> torch.Tensor:
    """``W x + b`` of the protected layer ``name`` on every token of ``images``."""
    model, layer = method.model, method.layers[name]
    assert model is not None
    inputs: list[torch.Tensor] = []
    hook = method.hooks[layer.hook]
    with torch.no_grad(), capture({"h": hook}, lambda n, t: inputs.append(t)):
        model.encode_image(model.preprocess(images))
    x = inputs[0]  # (B, N, d)
    with torch.no_grad():
        if layer.source == "context":
            assert isinstance(hook, torch.nn.MultiheadAttention)
            x = attention_internals(hook, x, batch_first=hook.batch_first).context
        return F.linear(x, layer.weight, layer.bias)  # (B, N, out)


def _near_one(kind: str, **cfg: Any) -> GPM:
    """One protected layer (block 1) and ε = 1 − 1e-9: the basis keeps all but 1e-9 of the
    energy of the inputs (with ``first_task_rule: paper``, see the next test)."""
    return _gpm(_model(), layers=[kind], blocks=[1], threshold=1 - 1e-9, threshold_step=0.0, **cfg)


def _forgetting(kind: str, project: bool) -> tuple[float, float, float]:
    """Train a one-image task 0, then task part1. Return the relative change of the protected
    layer's outputs and of the image features on the old image, and of the weight."""
    method = _near_one(kind, project=project, first_task_rule="paper")
    model = method.model
    assert model is not None
    old = _old_task(1)
    images = old.train[0][0][None]  # (1, 3, 32, 32)
    _run_task(method, _ctx(0, old), _train(iterations=2, lr=0.05))
    name = next(iter(method.layers))
    out0 = _layer_outputs(method, name, images)
    with torch.no_grad():
        feat0 = model.encode_image(model.preprocess(images))
    w0 = method.layers[name].weight.detach().clone()
    _run_task(method, _ctx(1), _train(iterations=6, lr=0.5))
    out1 = _layer_outputs(method, name, images)
    with torch.no_grad():
        feat1 = model.encode_image(model.preprocess(images))
    w1 = method.layers[name].weight.detach()

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    return rel(out1, out0), rel(feat1, feat0), rel(w1, w0)


@pytest.mark.parametrize("kind", ["attn.out_proj", "mlp.c_proj"])
def test_first_task_rule_code_leaves_the_crossing_direction_out(kind: str) -> None:
    """One image = 65 tokens in d ≥ 96: its inputs have rank 65. The authors' code keeps the
    directions whose cumulative energy stays below ε, so with ε → 1 it keeps 64 of them and the
    last (with real energy) stays unprotected; the paper's count (Eq. 5) keeps all 65."""
    sizes = {}
    for rule in ("code", "paper"):
        method = _near_one(kind, first_task_rule=rule)
        _run_task(method, _ctx(0, _old_task(1)), _train(iterations=1, lr=0.01))
        (basis,) = method.bases.values()
        sizes[rule] = basis.shape[1]
    assert sizes == {"code": 64, "paper": 65}


@pytest.mark.parametrize("kind", ["attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"])
def test_old_task_outputs_survive_a_new_task_only_with_projection(kind: str) -> None:
    """GPM's point: the basis spans the old inputs (65 tokens < d), so a projected update does
    not change the layer's response to them although the weight moves."""
    out_gpm, feat_gpm, w_gpm = _forgetting(kind, project=True)
    out_seq, feat_seq, _ = _forgetting(kind, project=False)
    assert w_gpm > 1e-3  # real training happened in the free directions
    assert out_gpm <= 1e-4
    assert feat_gpm <= 1e-4  # the one trained layer was the only change: features survive
    assert out_seq > 1e-2 and out_seq > 100 * out_gpm
    assert feat_seq > 100 * max(feat_gpm, 1e-7)


def _step_leak(method: GPM, cfg: TrainConfig) -> float:
    """Train task 1 (bases from task 0) and return the largest relative component of a
    weight's change along its basis."""
    model = method.model
    assert model is not None
    before = _weights(method)
    ctx = _ctx(1)
    method.before_task(ctx)
    loader = make_loader(ctx.task.train, 32, shuffle=True, seed=1, num_workers=0, pin_memory=False)
    train_task(model, method, ctx, cfg, loader)
    return max(
        relative_component(w - before[n], method.bases[n]) for n, w in _weights(method).items()
    )


def test_project_update_keeps_adamw_steps_out_of_the_bases() -> None:
    """AdamW with weight decay: projecting the gradient alone leaks into the bases (Adam's
    per-coordinate scaling, −λθ); projecting the update does not."""
    adamw = _train(iterations=3, lr=1e-3, optimizer="adamw", weight_decay=0.1)
    leaks = {}
    for variant in (False, True):
        method = _gpm(_model(), layers=["mlp.c_fc", "attn.out_proj"], project_update=variant)
        _run_task(method, _ctx(0), _train(iterations=2, lr=0.05))
        leaks[variant] = _step_leak(method, adamw)
    assert leaks[True] <= 1e-5
    assert leaks[False] > 1e-2


# ----- what trains -----
def _trainable(model: ClipModel) -> set[str]:
    return {n for n, p in model.clip.named_parameters() if p.requires_grad}


def test_biases_train_on_task_0_only() -> None:
    model = _model()
    method = _gpm(model, layers=["attn.in_proj", "mlp.c_proj"], blocks=[2])
    weights = {f"{PREFIX}.2.attn.in_proj_weight", f"{PREFIX}.2.mlp.c_proj.weight"}
    biases = {f"{PREFIX}.2.attn.in_proj_bias", f"{PREFIX}.2.mlp.c_proj.bias"}
    method.before_task(_ctx(0))
    assert _trainable(model) == weights | biases
    method.before_task(_ctx(1))
    assert _trainable(model) == weights
    # The -Seq baseline keeps training them; freeze_biases decides explicitly.
    seq = _gpm(_model(), layers=["attn.in_proj", "mlp.c_proj"], blocks=[2], project=False)
    seq.before_task(_ctx(1))
    assert _trainable(seq.model) == weights | biases  # type: ignore[arg-type]
    frozen = _gpm(_model(), blocks=[2], project=False, freeze_biases=True)
    frozen.before_task(_ctx(1))
    assert not any("bias" in n for n in _trainable(frozen.model))  # type: ignore[arg-type]


def test_only_the_chosen_layers_train() -> None:
    model = _model()
    method = _gpm(model, layers=["mlp.c_fc"], blocks=[0, 2])
    chosen = {f"{PREFIX}.{b}.mlp.c_fc.{p}" for b in (0, 2) for p in ("weight", "bias")}
    before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    method.before_task(_ctx(0))
    assert _trainable(model) == chosen
    _run_task(method, _ctx(0), _train(iterations=2, lr=0.05))
    changed = {k for k, v in model.clip.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == chosen
    assert set(method.bases) == {f"{PREFIX}.{b}.mlp.c_fc.weight" for b in (0, 2)}
    # The text tower, LNs, embeddings, visual proj and logit scale are frozen by default too.
    all_layers = _gpm(_model())
    all_layers.before_task(_ctx(1))
    kinds = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    expected = {f"{PREFIX}.{b}.{k}" for b in range(3) for k in kinds}
    assert _trainable(all_layers.model) == expected  # type: ignore[arg-type]


def test_seq_baseline_has_no_bases_and_no_projection() -> None:
    method = _gpm(_model(), layers=["mlp.c_fc"], project=False)
    _run_task(method, _ctx(0), _train(iterations=2, lr=0.05))
    assert method.bases == {} and method.state_dict() == {"bases": {}}


def test_thresholds_grow_per_task_and_the_basis_only_grows() -> None:
    method = _gpm(_model(), layers=["mlp.c_proj"], blocks=[0], threshold=0.9, threshold_step=0.04)
    name = f"{PREFIX}.0.mlp.c_proj.weight"
    sizes: list[int] = []
    previous = torch.zeros(384, 0)
    for k in range(3):
        _run_task(method, _ctx(k), _train(iterations=1, lr=0.01))
        basis = method.bases[name]
        assert torch.equal(basis[:, : previous.shape[1]], previous)  # old columns kept, first
        torch.testing.assert_close(basis.t() @ basis, torch.eye(basis.shape[1]), atol=1e-5, rtol=0)
        sizes.append(basis.shape[1])
        previous = basis.clone()
    assert sizes[0] < sizes[1] <= sizes[2] < 384


# ----- chains, state, config -----
def test_chain_trains_with_the_paper_optimizer_and_checkpoints_the_bases(resume_runs) -> None:
    # The resume of this chain (same matrix, weights, bases) is in test_resume_all_methods.py.
    runs = resume_runs("gpm")
    spec = runs.case.spec
    assert spec == gpm_chain_spec()
    assert (spec.train.optimizer, spec.train.momentum) == ("sgd", 0.0)  # train_defaults
    full = runs.full
    rows = full.matrix[:2]
    assert not np.isnan(rows[np.tril_indices(2)]).any()  # CIL: seen tasks only
    assert not np.array_equal(rows[1, :2], full.zeroshot[:2])  # training changed something
    state = load_checkpoint(RunDir(runs.full_dir).checkpoint_path(1), None)["method"]
    assert len(state["bases"]) == 12


def test_state_dict_round_trip_and_mismatches() -> None:
    method = _gpm(_model(), layers=["mlp.c_fc"], blocks=[1])
    _run_task(method, _ctx(0), _train(iterations=1, lr=0.01))
    state = method.state_dict()
    other = _gpm(_model(), layers=["mlp.c_fc"], blocks=[1])
    other.load_state_dict(state)
    assert all(torch.equal(other.bases[n], b) for n, b in method.bases.items())
    with pytest.raises(ValueError, match="not protected"):
        _gpm(_model(), layers=["mlp.c_proj"], blocks=[1]).load_state_dict(state)


def test_train_defaults_are_plain_sgd_and_the_sweep_wins() -> None:
    spec = tiny_spec("gpm")
    assert spec.train.optimizer == "sgd" and spec.train.momentum == 0.0
    assert spec.train.weight_decay == 0.0 and spec.train.lr == 0.01
    assert spec.train.label_smoothing == 0.0  # plain cross-entropy, as GPM trains
    custom = ChainSpec.build(
        {
            "model": {"arch": "tiny"},
            "benchmark": "smoke",
            "method": "gpm",
            "train": {"optimizer": "adamw", "lr": 1e-4},
        }
    )
    assert custom.train.optimizer == "adamw" and custom.train.lr == 1e-4


def test_bad_configs_are_clear_errors() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        create_method("gpm", {"treshold": 0.9})
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        create_method("gpm", {"threshold": 1.5})
    with pytest.raises(ValidationError, match="greater than 0"):
        create_method("gpm", {"threshold": 0})
    with pytest.raises(ValidationError, match="'attn.in_proj', 'attn.out_proj', 'mlp.c_fc'"):
        create_method("gpm", {"layers": ["attn.qkv"]})
    with pytest.raises(ValidationError, match="layers listed twice"):
        create_method("gpm", {"layers": ["mlp.c_fc", "mlp.c_fc"]})
    with pytest.raises(ValidationError, match="distinct indices"):
        create_method("gpm", {"blocks": [0, -1]})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        create_method("gpm", {"samples": 0})
    with pytest.raises(ClipclError, match="out of range"):
        _gpm(_model(), blocks=[3])
    with pytest.raises(ClipclError, match=r"method\.threshold"):
        tiny_spec("gpm", threshold=2.0)
