"""``dmnsp``: adapters (identity at init on tiny and ViT-B-16, parameter count, sub-modules),
only adapters train, the λ table on a hand-computed case, the multi-layer product against the
authors' sequential loop, faithful vs orthonormal bases, the update projection after a full
AdamW step, Adapter-Seq (``project: false``), resume, strict config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from clipcl.errors import ClipclError
from clipcl.methods import create_method
from clipcl.methods.capture import capture
from clipcl.methods.dmnsp import DMNSP, lambda_table, top_cosine_distances
from clipcl.methods.projection import orthonormalize, relative_component
from clipcl.models import ClipModel, build_model, load_checkpoint
from clipcl.models.adapters import Adapter, adapter_parameters, adapters_of, add_adapters
from clipcl.models.factory import ModelConfig
from clipcl.results.records import RunDir
from clipcl.workers.train import make_loader, train_task
from tests.helpers import cil_context, method_on, tiny_model, tiny_spec

# The tiny CLIP: image tower 3 blocks × width 96, text tower 2 blocks × width 64.
TINY = {"image": (3, 96), "text": (2, 64)}


_model = tiny_model


def _dmnsp(model: ClipModel, **cfg) -> DMNSP:
    return method_on(model, "dmnsp", DMNSP, **cfg)  # type: ignore[return-value]


def _features(model: ClipModel, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        img = model.encode_image(model.preprocess(images))  # (2, D)
        txt = model.encode_text(model.tokenize(["a red square", "a photo of a blue circle"]))
    return img, txt


def _perturb(model: ClipModel, seed: int = 2) -> None:
    """Non-zero W_up / biases in every adapter, as training would leave them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(adapters_of(model.clip)):
            p.add_(0.05 * torch.randn(p.shape, generator=g))


_ctx = cil_context


def _visual_weights(method: DMNSP) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(a.down.weight.detach().clone(), a.up.weight.detach().clone()) for a in method.visual]


# ----- adapters -----
def test_tiny_adapters_are_exactly_zero_shot_at_init_and_act_once_trained() -> None:
    model = _model()
    model.requires_grad_(False)  # frozen base: the kernels the adapted model will use
    plain = _features(model)
    found = add_adapters(model.clip)
    assert [len(found["image"]), len(found["text"])] == [3, 2]
    assert [a.width for a in found["image"]] == [96] * 3 and found["text"][0].width == 64
    for a, b in zip(plain, _features(model), strict=True):
        assert torch.equal(a, b)
    _perturb(model)
    for a, b in zip(plain, _features(model), strict=True):
        assert not torch.allclose(a, b)
    model.train()  # dropout (0.1) inside the adapter acts in training only
    assert not torch.equal(_features(model)[0], _features(model)[0])
    model.eval()
    assert torch.equal(_features(model)[0], _features(model)[0])


def test_adapters_are_sub_modules_listed_by_tower_and_layer() -> None:
    model = _model()
    found = add_adapters(model.clip, bottleneck=8)
    assert adapters_of(model.clip) == found
    blocks = model.clip.visual.transformer.resblocks
    assert all(blocks[i].adapter is found["image"][i] for i in range(3))
    keys = [k for k in model.state_dict() if ".adapter." in k]
    assert len(keys) == 4 * (3 + 2)  # down/up weight and bias per block
    assert "clip.visual.transformer.resblocks.2.adapter.up.weight" in keys
    model.to(torch.float64)  # .to() reaches them (as it would a device)
    assert found["text"][1].down.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="already has an adapter"):
        add_adapters(model.clip)


@pytest.fixture(scope="module")
def vit_b16() -> tuple[ClipModel, tuple[torch.Tensor, torch.Tensor]]:
    """ViT-B-16 (random weights, 224 px) and its features before adapters were attached."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="ViT-B-16", pretrained="none"), torch.device("cpu"))
    model.eval().requires_grad_(False)
    plain = _features(model, size=224)
    add_adapters(model.clip)
    return model, plain


def test_vit_b16_adapters_are_exactly_zero_shot_at_init(vit_b16) -> None:
    model, plain = vit_b16
    for a, b in zip(plain, _features(model, size=224), strict=True):
        assert torch.equal(a, b)


def test_vit_b16_adapter_parameter_count(vit_b16) -> None:
    model, _ = vit_b16
    found = adapters_of(model.clip)
    # per block 2·w·64 weights + 64 + w biases: 12 · 99 136 (w 768) + 12 · 66 112 (w 512)
    per_block = {w: 2 * w * 64 + 64 + w for w in (768, 512)}
    assert per_block == {768: 99_136, 512: 66_112}
    assert [len(found["image"]), len(found["text"])] == [12, 12]
    assert sum(p.numel() for p in adapter_parameters(found)) == 1_982_976


# ----- method -----
def test_only_adapters_train() -> None:
    model = _model()
    method = _dmnsp(model)
    method.before_task(_ctx(0))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in adapter_parameters(adapters_of(model.clip))}
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(
        blocks * (2 * w * 64 + 64 + w) for blocks, w in TINY.values()
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = tiny_spec("dmnsp", benchmark="test-cil", iterations=3)
    loader = make_loader(
        _ctx(0).task.train, 32, shuffle=True, seed=0, num_workers=0, pin_memory=False
    )
    train_task(model, method, _ctx(0), spec.train, loader)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(".adapter." in k for k in changed)
    assert {k for k in before if k.endswith("adapter.up.weight")} <= changed


def test_lambda_table_matches_a_hand_computed_case() -> None:
    tops = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 4.0]])  # û_0, û_1 (normalised inside)
    v0 = torch.tensor([[2.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, -1.0, 0.0]])
    v1 = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    # Cosines (columns normalised): û_0·V_0 = [1, 0, 0, 1/√2]; û_1·V_0 = [0, .6, −.8, .6/√2];
    # û_0·V_1 = [0, −1, 0]; û_1·V_1 = [.8, 0, −.6]. Ratio 0.5: V_0 keeps int(4·.5) = 2, V_1
    # int(3·.5) = 1 — the largest SIGNED cosines (|−1| would give 1 for û_0·V_1).
    d = top_cosine_distances(tops, [v0, v1], 0.5)
    expected_d = [[(1 + 0.5**0.5) / 2, 0.0], [(0.6 + 0.6 * 0.5**0.5) / 2, 0.8]]
    torch.testing.assert_close(d, torch.tensor(expected_d, dtype=torch.float64))
    lam = lambda_table(tops, [v0, v1], 0.5, 30.0)
    # 30·exp(−0.853553) = 12.776966, 30·exp(0) = 30, 30·exp(−0.512132) = 17.976500,
    # 30·exp(−0.8) = 13.479869
    expected = [[12.776966, 30.0], [17.976500, 13.479869]]
    torch.testing.assert_close(lam, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)
    # TOP_K_RATIO 0.1 of 3 columns rounds down to 0: one cosine is used (NaN in the original).
    assert torch.equal(top_cosine_distances(tops, [v1], 0.1), d[:, 1:])
    # An empty basis (orthonormal bases that filled R^D): d = 0, λ = LAMBDA_SCALE.
    assert top_cosine_distances(tops, [v1[:, :0]], 0.1).abs().sum() == 0


def _after_task0(method: DMNSP, model: ClipModel) -> None:
    _perturb(model)
    method.after_task(_ctx(0), loader=None)  # type: ignore[arg-type]


def _first_batch(model: ClipModel) -> None:
    images = torch.stack([_ctx(1).task.train[i][0] for i in range(8)])
    model.train()
    model.encode_image(model.preprocess(images))
    model.eval()


def test_gradient_projection_is_the_authors_sequential_loop() -> None:
    """λ[ℓ][i] and V_i applied in turn (down: G V Vᵀ, up: V Vᵀ G) for i = 0..L−1; visual
    weights only — biases and the text adapters keep their gradients."""
    model = _model()
    method = _dmnsp(model)
    _after_task0(method, model)
    method.before_task(_ctx(1))
    _first_batch(model)
    g = torch.Generator().manual_seed(3)
    params = adapter_parameters(adapters_of(model.clip))
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    grads = [p.grad.clone() for p in params]
    method.after_backward()
    lam = method.lambdas
    assert lam is not None and lam.shape == (3, 3)
    assert torch.all((lam > 30 * np.exp(-1) - 1e-9) & (lam < 30 * np.exp(1) + 1e-9))
    expected = {id(p): grad.double() for p, grad in zip(params, grads, strict=True)}
    for layer, a in enumerate(method.visual):
        down, up = expected[id(a.down.weight)], expected[id(a.up.weight)]
        for i, v in enumerate(b.double() for b in method.bases):  # in float64
            down = float(lam[layer, i]) * (down @ v @ v.t())
            up = float(lam[layer, i]) * (v @ (v.t() @ up))
        expected[id(a.down.weight)], expected[id(a.up.weight)] = down, up
    for p in params:  # float32 rounding of values ~1e4 (Π λ ≈ 30³): compare by norm
        error = (p.grad.double() - expected[id(p)]).norm() / expected[id(p)].norm()
        assert error < 1e-6, error
    projected = {id(w) for a in method.visual for w in (a.down.weight, a.up.weight)}
    for p, before in zip(params, grads, strict=True):
        assert torch.equal(p.grad, before) != (id(p) in projected)


def test_an_overflowing_faithful_gradient_stops_the_chain_with_the_cause() -> None:
    """(Π λ)·P_0⋯P_{L−1} grows with tasks and layers; once |g|² would overflow AdamW's float32
    second moment (the original then silently freezes the weight) the method refuses."""
    model = _model()
    method = _dmnsp(model)
    _after_task0(method, model)
    method.before_task(_ctx(1))
    _first_batch(model)
    for p in adapter_parameters(adapters_of(model.clip)):
        p.grad = torch.full(p.shape, 1e16)  # × Π λ ≥ 11³: beyond √(float32 max) ≈ 1.8e19
    with pytest.raises(ClipclError, match="project_update: true"):
        method.after_backward()


def test_faithful_bases_concatenate_orthonormal_ones_are_projectors() -> None:
    bases = {}
    for orthonormal in (False, True):
        model = _model()
        method = _dmnsp(model, orthonormal=orthonormal)
        _after_task0(method, model)
        first = [b.clone() for b in method.bases]
        _perturb(model, seed=5)
        method.after_task(_ctx(1), loader=None)  # type: ignore[arg-type]
        bases[orthonormal] = (first, method)
    first, faithful = bases[False]
    for v0, v in zip(first, faithful.bases, strict=True):
        assert v0.shape == (96, 95) and v.shape == (96, 190)  # all but TOP_SELECT = 1, per task
        assert torch.equal(v[:, :95], v0)  # appended, not re-orthogonalised
        p = (v @ v.t()).double()
        assert (p @ p - p).norm() > 1.0  # ≈ 2I − u₀u₀ᵀ − u₁u₁ᵀ: no projector
    _, ortho = bases[True]
    for t, v in zip(ortho.protected, ortho.bases, strict=True):
        assert t.shape == (96, 2) and v.shape == (96, 94)  # both tasks' top directions protected
        p = (v @ v.t()).double()
        torch.testing.assert_close(p @ p, p, atol=1e-6, rtol=0)
        assert float((v.t().double() @ t).abs().max()) < 1e-6


@pytest.mark.parametrize(("stats_batch_size", "seen"), [(None, 128), (16, 16), (1000, 192)])
def test_bases_come_from_one_eval_batch(stats_batch_size: int | None, seen: int) -> None:
    model = _model()
    cfg = {} if stats_batch_size is None else {"stats_batch_size": stats_batch_size}
    method = _dmnsp(model, **cfg)
    _perturb(model)
    model.train()  # after_task must switch to eval (no dropout) and back
    batches: list[tuple[int, bool]] = []
    named = {"first": method.visual[0]}
    with capture(
        named, lambda _, out: batches.append((out.shape[0], model.training)), kind="output"
    ):
        method.after_task(_ctx(0), loader=None)  # type: ignore[arg-type]
    assert batches == [(seen, False)] and model.training  # one forward of min(size, 192) images


@pytest.mark.parametrize("project_update", [True, False])
def test_update_projection_survives_a_full_adamw_step(project_update: bool) -> None:
    """orthonormal + project_update: AdamW's steps leave the visual adapter weights ~0 along
    every layer's protected directions; projecting only the gradient does not (Adam rescales
    coordinates). Text adapters train freely either way."""
    model = _model()
    cfg = {"orthonormal": True, "project_update": project_update}
    method = _dmnsp(model, **cfg)
    _after_task0(method, model)
    protected = orthonormalize(torch.cat(method.protected, dim=1))  # (96, 3)
    assert protected.shape == (96, 3)
    visual = _visual_weights(method)
    text = [a.down.weight.detach().clone() for a in method.text]
    method.before_task(_ctx(1))
    spec = tiny_spec("dmnsp", benchmark="test-cil", iterations=3, **cfg)
    loader = make_loader(
        _ctx(1).task.train, 32, shuffle=True, seed=0, num_workers=0, pin_memory=False
    )
    train_task(model, method, _ctx(1), spec.train, loader)
    worst = 0.0
    for (down0, up0), (down1, up1) in zip(visual, _visual_weights(method), strict=True):
        assert (down1 - down0).norm() > 0 and (up1 - up0).norm() > 0
        worst = max(
            worst,
            relative_component(down1 - down0, protected, "right"),
            relative_component(up1 - up0, protected, "left"),
        )
    assert (worst <= 1e-5) == project_update, worst
    assert all((a.down.weight - t0).norm() > 0 for a, t0 in zip(method.text, text, strict=True))


def test_project_false_is_adapter_seq() -> None:
    model = _model()
    method = _dmnsp(model, project=False)
    _after_task0(method, model)
    assert method.state_dict()["bases"] == [] and method.tasks_seen == 1
    method.before_task(_ctx(1))
    _first_batch(model)
    params = adapter_parameters(adapters_of(model.clip))
    for p in params:
        p.grad = torch.ones_like(p)
    method.after_backward()
    method.after_step()
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in params)
    assert method.lambdas is None


def test_chain_checkpoints_the_faithful_bases(resume_runs) -> None:
    # The resume after task 1 (same matrix, bit-identical weights and bases) is checked in
    # test_resume_all_methods.py on the same runs.
    runs = resume_runs("dmnsp")
    assert not np.isnan(np.diag(runs.full.matrix)).any()
    ckpt = RunDir(runs.full_dir).checkpoint_path(1)
    state = load_checkpoint(ckpt, None)["method"]
    assert state["tasks_seen"] == 2 and [b.shape for b in state["bases"]] == [(96, 190)] * 3


def test_bad_configs_are_clear_errors() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        create_method("dmnsp", {"top_select": 0})
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        create_method("dmnsp", {"top_k_ratio": 1.5})
    with pytest.raises(ValidationError, match="Extra inputs"):
        create_method("dmnsp", {"lamda_scale": 30})
    with pytest.raises(ClipclError, match="top_select 96 must be < width 96"):
        _dmnsp(_model(), top_select=96)
    with pytest.raises(ClipclError, match=r"method\.dropout"):
        tiny_spec("dmnsp", dropout=1.0)
    assert isinstance(adapters_of(_model().clip)["image"], tuple)
    assert Adapter(8, 2).up.weight.abs().sum() == 0
