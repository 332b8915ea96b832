"""``lora``: identity at init, only adapters train, parameter count, out_proj and the q/k/v
in-projection really adapted, merging, shared LoRA (masters, counts, merging), a chain on
``smoke`` with resume, strict config."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from clipcl.data import get_benchmark
from clipcl.errors import ClipclError
from clipcl.methods import TaskContext, create_method
from clipcl.methods.lora import LoRAMethod
from clipcl.models import ClipModel, build_model, load_checkpoint
from clipcl.results.records import RunDir
from clipcl.workers.chain import seed_everything
from clipcl.workers.train import make_loader, train_task
from tests.helpers import tiny_model, tiny_spec

# The tiny CLIP (models/configs/clipcl-tiny.json): blocks × width per tower, MLP ratio 4.
TOWERS = {"image": (3, 96), "text": (2, 64)}


_model = tiny_model


def _lora(model: ClipModel, **cfg) -> LoRAMethod:
    method = create_method("lora", cfg)
    assert isinstance(method, LoRAMethod)
    method.setup(model)
    return method


def _features(model: ClipModel) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        img = model.encode_image(model.preprocess(images))  # (6, D)
        txt = model.encode_text(model.tokenize(["a red square", "a photo of a blue circle"]))
    return img, txt


def _ctx(index: int = 0) -> TaskContext:
    bench = get_benchmark("smoke")
    return TaskContext(index=index, task=bench.tasks[index], benchmark=bench, seed=0)


def _perturb(method: LoRAMethod) -> None:
    """Give every adapter a non-zero B, as training would."""
    from clipcl.models.lora import adapter_pairs

    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, adapter in method.adapters.items():
            for _, lora in adapter_pairs(name, adapter):
                lora.lora_B.copy_(0.05 * torch.randn(lora.lora_B.shape, generator=g))


def test_adapted_model_is_bit_identical_at_init() -> None:
    plain = _model()
    adapted = copy.deepcopy(plain)
    method = _lora(adapted, dropout=0.1)
    # LoRA freezes the base weights. Freezing alone moves the masked (text) attention by ~1 ulp
    # on CPU (torch picks another kernel when in_proj_weight needs no grad), so compare with the
    # plain model frozen the same way.
    plain.requires_grad_(False)
    assert len(method.adapters) == 3 * 3 + 2 * 3
    for a, b in zip(_features(plain), _features(adapted), strict=True):
        assert torch.equal(a, b)


def test_training_changes_only_lora_parameters_and_the_features() -> None:
    model = _model()
    method = _lora(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    feats = _features(model)
    spec = tiny_spec("lora", iterations=4)
    ctx = _ctx()
    method.before_task(ctx)
    loader = make_loader(ctx.task.train, 32, shuffle=True, seed=0, num_workers=0, pin_memory=False)
    train_task(model, method, ctx, spec.train, loader)
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    lora_keys = {k for k in before if ".lora_" in k}
    assert changed and changed <= lora_keys
    # Every B moved off zero (A may or may not have, depending on its gradient through B = 0).
    assert {k for k in lora_keys if k.endswith("lora_B")} <= changed
    for a, b in zip(feats, _features(model), strict=True):
        assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    ("towers", "targets", "rank"),
    [
        ("both", ("attn.out_proj", "mlp.c_fc", "mlp.c_proj"), 8),
        ("image", ("attn.out_proj",), 4),
        ("text", ("mlp.c_fc", "mlp.c_proj"), 2),
    ],
)
def test_trainable_parameter_count_matches_formula(towers, targets, rank) -> None:
    model = _model()
    method = _lora(model, rank=rank, targets=list(targets), towers=towers)
    method.before_task(_ctx())
    # r · (in + out) per adapted layer: out_proj w×w, c_fc w→4w, c_proj 4w→w.
    per_width = {"attn.out_proj": 2, "mlp.c_fc": 5, "mlp.c_proj": 5}
    expected = sum(
        blocks * rank * per_width[t] * width
        for tower, (blocks, width) in TOWERS.items()
        if towers in (tower, "both")
        for t in targets
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected == method.num_trainable()


@pytest.mark.parametrize("target", ["attn.out_proj", "mlp.c_fc", "mlp.c_proj"])
def test_each_target_delta_changes_the_output(target: str) -> None:
    model = _model()
    feats = _features(model)
    method = _lora(model, targets=[target])
    _perturb(method)
    image, text = _features(model)
    assert not torch.allclose(image, feats[0]) and not torch.allclose(text, feats[1])
    if target == "attn.out_proj":  # the effective weight MHA reads is W + (alpha/r)·B A
        name, lora = next(iter(method.adapters.items()))
        layer = model.clip.get_submodule(name)
        base = layer.parametrizations.weight.original
        torch.testing.assert_close(layer.weight, base + 2.0 * lora.lora_B @ lora.lora_A)


def test_out_proj_delta_alone_matches_editing_the_weight() -> None:
    """The parametrization computes exactly what a model with ``W + ΔW`` written in computes."""
    model = _model()
    edited = copy.deepcopy(model)
    method = _lora(model, targets=["attn.out_proj"], towers="image")
    _perturb(method)
    with torch.no_grad():
        for name, lora in method.adapters.items():
            edited.clip.get_submodule(name).weight.add_(lora.delta_weight())
    assert torch.equal(_features(model)[0], _features(edited)[0])


def test_merge_after_task_keeps_outputs_and_starts_fresh_adapters() -> None:
    model = _model()
    method = _lora(model, merge_after_task=True)
    _perturb(method)
    feats = _features(model)
    old_a = {n: lora.lora_A.clone() for n, lora in method.adapters.items()}
    method.after_task(_ctx(), loader=None)  # type: ignore[arg-type]
    for lora in method.adapters.values():
        assert not lora.lora_B.any()  # fresh: ΔW = 0 again
    assert all(not torch.equal(old_a[n], lora.lora_A) for n, lora in method.adapters.items())
    for a, b in zip(feats, _features(model), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_merge_is_bit_exact_for_parametrized_layers() -> None:
    model = _model()
    method = _lora(model, targets=["attn.out_proj"], merge_after_task=True)
    _perturb(method)
    feats = _features(model)
    method.after_task(_ctx(), loader=None)  # type: ignore[arg-type]
    for a, b in zip(feats, _features(model), strict=True):
        assert torch.equal(a, b)


def test_without_merge_after_task_changes_nothing() -> None:
    model = _model()
    method = _lora(model)
    _perturb(method)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method.after_task(_ctx(), loader=None)  # type: ignore[arg-type]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("merge", [False, True])
def test_chain_learns_and_checkpoints_the_adapters(resume_runs, merge: bool) -> None:
    # The resume of these chains (same matrix, weights) is in test_resume_all_methods.py.
    runs = resume_runs("lora", "merged" if merge else "unmerged")
    spec, full = runs.case.spec, runs.full
    assert spec.method["merge_after_task"] is merge
    rows = full.matrix[:2]
    assert not np.isnan(rows).any()
    assert not np.allclose(rows, full.zeroshot[None, :])  # the adapters learned something
    ckpt = RunDir(runs.full_dir).checkpoint_path(1)
    state = load_checkpoint(ckpt, None)["model"]
    assert any(k.endswith("lora_A") for k in state) and any(k.endswith("lora_B") for k in state)
    seed_everything(spec.seed, -1)  # as run_chain builds the model
    pretrained = build_model(spec.model, torch.device("cpu")).state_dict()
    key = "clip.visual.transformer.resblocks.0.mlp.c_fc.weight"
    assert torch.equal(state[key], pretrained[key]) != merge  # merged adapters live in W


def test_bad_configs_are_clear_errors() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        create_method("lora", {"rank": 0})
    with pytest.raises(
        ValidationError, match="'attn.out_proj', 'mlp.c_fc', 'mlp.c_proj' or 'attn.in_proj'"
    ):
        create_method("lora", {"targets": ["attn.qkv"]})
    with pytest.raises(ValidationError, match="split_qkvo: true needs shared: true"):
        create_method("lora", {"split_qkvo": True})
    with pytest.raises(ValidationError, match="targets listed twice"):
        create_method("lora", {"targets": ["mlp.c_fc", "mlp.c_fc"]})
    with pytest.raises(ValidationError, match="at least 1"):
        create_method("lora", {"targets": []})
    with pytest.raises(ValidationError, match="image', 'text' or 'both'"):
        create_method("lora", {"towers": "vision"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        create_method("lora", {"ranks": 4})
    with pytest.raises(ClipclError, match=r"method\.rank"):
        tiny_spec("lora", rank=0)


def test_dropout_acts_on_the_mlp_lora_path_in_training_only() -> None:
    model = _model()
    method = _lora(model, dropout=0.5, targets=["mlp.c_fc"], towers="image")
    _perturb(method)
    model.train()
    assert not torch.equal(_features(model)[0], _features(model)[0])
    model.eval()
    assert torch.equal(_features(model)[0], _features(model)[0])


# ----- the q/k/v in-projection and shared LoRA -----
ALL = ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")


def test_in_proj_adapter_is_identity_at_init_then_adds_the_qkv_deltas() -> None:
    model = _model()
    feats = _features(model)
    method = _lora(model, targets=["attn.in_proj"])
    mha = model.clip.get_submodule("transformer.resblocks.0.attn")
    assert torch.equal(mha.in_proj_weight, mha.parametrizations.in_proj_weight.original)
    for a, b in zip(feats, _features(model), strict=True):  # ΔW = 0 exactly; the attention
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # kernel may differ (fast path)
    _perturb(method)
    assert not torch.allclose(_features(model)[0], feats[0])
    name, qkv = next(iter(method.adapters.items()))
    assert name == "transformer.resblocks.0.attn.in_proj"
    base = mha.parametrizations.in_proj_weight.original
    delta = torch.cat([2.0 * p.lora_B @ p.lora_A for p in (qkv.q, qkv.k, qkv.v)])
    torch.testing.assert_close(mha.in_proj_weight, base + delta)


def _expected_shared(rank: int, targets: tuple[str, ...], split: bool) -> int:
    """r · (in + out) once per key and tower (the towers' widths differ: no key spans both)."""
    attn_types: set[str] = set()
    if "attn.in_proj" in targets:
        attn_types |= {"q", "k", "v"}
    if "attn.out_proj" in targets:
        attn_types.add("o")
    total = 0
    for _blocks, width in TOWERS.values():
        masters = len(attn_types) if split else min(1, len(attn_types))
        total += masters * rank * 2 * width  # attention pairs are w × w
        total += sum(rank * 5 * width for t in ("mlp.c_fc", "mlp.c_proj") if t in targets)
    return total


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("targets", [ALL, ("attn.out_proj", "mlp.c_fc"), ("attn.in_proj",)])
def test_shared_parameter_count_matches_formula(targets, split: bool) -> None:
    model = _model()
    method = _lora(model, rank=4, targets=list(targets), shared=True, split_qkvo=split)
    method.before_task(_ctx())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == method.num_trainable() == _expected_shared(4, targets, split)
    plain = _lora(_model(), rank=4, targets=list(targets))
    assert plain.num_trainable() > method.num_trainable()


@pytest.mark.parametrize("split", [False, True])
def test_shared_layers_hold_their_masters_parameter_objects(split: bool) -> None:
    from clipcl.models.lora import adapter_pairs

    model = _model()
    method = _lora(model, targets=list(ALL), shared=True, split_qkvo=split)
    pairs = {
        (name, proj): pair
        for name, adapter in method.adapters.items()
        for proj, pair in adapter_pairs(name, adapter)
    }
    img = "visual.transformer.resblocks"
    q0, q2 = pairs[(f"{img}.0.attn.in_proj", "q")], pairs[(f"{img}.2.attn.in_proj", "q")]
    o1 = pairs[(f"{img}.1.attn.out_proj", "o")]
    fc0, fc2 = pairs[(f"{img}.0.mlp.c_fc", None)], pairs[(f"{img}.2.mlp.c_fc", None)]
    proj1 = pairs[(f"{img}.1.mlp.c_proj", None)]
    text_q = pairs[("transformer.resblocks.0.attn.in_proj", "q")]
    assert q0.lora_A is q2.lora_A and q0.lora_B is q2.lora_B  # across blocks
    assert fc0.lora_A is fc2.lora_A and fc0.lora_A is not proj1.lora_A  # MLP: by shape
    assert q0.lora_A is not fc0.lora_A and q0.lora_A is not text_q.lora_A
    assert (q0.lora_A is o1.lora_A) is (not split)  # one attention master, or one per type
    k0 = pairs[(f"{img}.0.attn.in_proj", "k")]
    assert (q0.lora_A is k0.lora_A) is (not split)
    state = model.state_dict()  # every layer keeps its key; the tensors are the masters'
    key = f"clip.{img}.2.attn.parametrizations.in_proj_weight.0.q.lora_A"
    assert state[key].data_ptr() == q0.lora_A.data_ptr()


def test_shared_training_moves_one_master_for_every_layer_of_its_key() -> None:
    model = _model()
    method = _lora(model, targets=["attn.out_proj"], towers="image", shared=True)
    assert len(method.adapters) == 3 and len({id(a.lora_B) for a in method.adapters.values()}) == 1
    spec = tiny_spec("lora", iterations=3, targets=["attn.out_proj"], shared=True)
    ctx = _ctx()
    method.before_task(ctx)
    loader = make_loader(ctx.task.train, 32, shuffle=True, seed=0, num_workers=0, pin_memory=False)
    train_task(model, method, ctx, spec.train, loader)
    (master,) = {id(a.lora_B) for a in method.adapters.values()}  # still one tensor
    b = next(iter(method.adapters.values())).lora_B
    assert id(b) == master and b.abs().sum() > 0  # learned from every block's gradient


def test_merge_after_task_with_shared_masters_folds_every_layer() -> None:
    model = _model()
    method = _lora(model, targets=list(ALL), shared=True, merge_after_task=True)
    _perturb(method)  # B of the masters (the other layers' B are the same tensors)
    feats = _features(model)
    method.after_task(_ctx(), loader=None)  # type: ignore[arg-type]
    assert all(not a.delta_weight().any() for a in method.adapters.values())
    for a, b in zip(feats, _features(model), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
