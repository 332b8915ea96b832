"""``pgp``: CoOp contexts reproduce the template embeddings at init, the image prompt's placement,
PCA / basis arithmetic on hand-computed cases, the projected full SGD step, only the current
context trains, resume on ``test-cil``, strict config."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from clipcl.errors import ClipclError
from clipcl.methods import TaskContext, create_method
from clipcl.methods.capture import capture
from clipcl.methods.pgp import PGP, grow_basis, pca_scores
from clipcl.methods.projection import projector, relative_component
from clipcl.models import ClipModel, load_checkpoint
from clipcl.models.prompt_tuning import add_image_prompt
from clipcl.results.records import RunDir
from clipcl.workers.train import make_loader, train_task
from tests.helpers import cil_context, method_on, tiny_model, tiny_spec

WIDTH = 96  # the tiny image tower's width W


_model = tiny_model


def _pgp(model: ClipModel, **cfg) -> PGP:
    return method_on(model, "pgp", PGP, **cfg)  # type: ignore[return-value]


_ctx = cil_context


def _loader(ctx: TaskContext):
    return make_loader(
        ctx.task.train, 32, shuffle=True, seed=ctx.index, num_workers=0, pin_memory=False
    )


def _images(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def _image_features(model: ClipModel) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_image(model.preprocess(_images()))  # (6, D)


def _train(model: ClipModel, method: PGP, index: int, iterations: int, **train) -> None:
    spec = tiny_spec("pgp", benchmark="test-cil", iterations=iterations)
    cfg = spec.train.model_copy(update=train)
    ctx = _ctx(index)
    method.before_task(ctx)
    train_task(model, method, ctx, cfg, _loader(ctx))


# ----- modules -----
@pytest.mark.parametrize("index", [1, 2])  # templates "a {}." and "a pattern of {}."
def test_coop_from_the_template_phrase_reproduces_the_class_embeddings(index: int) -> None:
    model = _model()
    method = _pgp(model, ctx_init="template")
    ctx = _ctx(index)
    method.before_task(ctx)
    task = ctx.task
    template = task.templates[0]
    phrase = template.split("{}")[0].strip()
    context = method.contexts.get(task.name)
    assert context is not None and context.shape[0] == len(phrase.split())  # one token a word
    with torch.no_grad():
        coop = method.classifier(task, training=False)  # (C, D)
        texts = model.encode_text(model.tokenize([template.format(c) for c in task.class_names]))
        ensemble = model.class_embeddings(task.class_names, [template])
    assert coop is not None
    assert torch.equal(coop, texts)  # bit-identical to encoding the template text
    # class_embeddings renormalises the one-template mean: equal up to that rounding.
    torch.testing.assert_close(coop, ensemble, rtol=0, atol=1e-7)


def test_classifier_trains_through_the_context_and_skips_tasks_without_one() -> None:
    model = _model()
    method = _pgp(model)
    ctx = _ctx(0)
    method.before_task(ctx)
    clf = method.classifier(ctx.task, training=True)
    assert clf is not None and clf.shape == (4, 64) and clf.requires_grad
    torch.testing.assert_close(clf.norm(dim=-1), torch.ones(4))
    clf.sum().backward()
    context = method.contexts.get(ctx.task.name)
    assert context is not None and context.shape == (16, 64) and context.grad is not None
    assert method.classifier(_ctx(1).task, training=False) is None  # not started: default text


def test_empty_or_disabled_prompt_leaves_image_features_unchanged() -> None:
    plain = _model()
    feats = _image_features(plain)
    empty = copy.deepcopy(plain)
    add_image_prompt(empty.clip, 0)
    assert torch.equal(_image_features(empty), feats)
    prompted = copy.deepcopy(plain)
    prompt = add_image_prompt(prompted.clip, 4)
    prompt.enabled = False
    assert torch.equal(_image_features(prompted), feats)
    prompt.enabled = True
    assert not torch.allclose(_image_features(prompted), feats)


def test_prompt_tokens_land_right_after_cls() -> None:
    plain = _model()
    prompted = copy.deepcopy(plain)
    prompt = add_image_prompt(prompted.clip, 5)
    seqs: dict[str, torch.Tensor] = {}
    for key, model in (("plain", plain), ("prompted", prompted)):
        with capture({key: model.clip.visual.ln_pre}, seqs.__setitem__, kind="input"):
            _image_features(model)
    x, y = seqs["plain"], seqs["prompted"]  # (6, 65, W), (6, 70, W)
    assert x.shape == (6, 65, WIDTH) and y.shape == (6, 70, WIDTH)
    assert torch.equal(y[:, :1], x[:, :1])  # CLS (+ its positional embedding) at index 0
    assert torch.equal(y[:, 1:6], prompt.prompt.detach().expand(6, -1, -1))  # positions 1..L_p
    assert torch.equal(y[:, 6:], x[:, 1:])  # then the patches, unchanged


# ----- PCA and basis arithmetic -----
def test_pca_scores_on_hand_computed_cases() -> None:
    # Features as columns: centred already; variances 2 (x) and 8 (y) → the y axis comes first.
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    expected = torch.tensor([[0.0, 1.0], [0.0, -1.0], [2.0, 0.0], [-2.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(pca_scores(x, 2), expected)
    torch.testing.assert_close(pca_scores(x + 3.0, 2), expected)  # centred over the rows
    torch.testing.assert_close(pca_scores(x, 3)[:, 2], torch.zeros(4, dtype=torch.float64))
    # Wide input (the images' Gram path): U Σ of the centred rows, largest |entry| positive.
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(5, 40, generator=g, dtype=torch.float64)
    u, s, _ = torch.linalg.svd(wide - wide.mean(0), full_matrices=False)
    ref = u[:, :3] * s[:3]
    ref = ref * torch.sign(ref[ref.abs().argmax(0), torch.arange(3)])
    torch.testing.assert_close(pca_scores(wide, 3), ref)


def test_basis_counts_energy_as_sigma_to_the_fourth() -> None:
    r = torch.zeros(4, 2, dtype=torch.float64)
    r[0, 0], r[1, 1] = 2.0, 1.0  # σ_R = (2, 1): σ⁴ shares 16/17 ≈ 0.94, σ² shares 0.8
    first = grow_basis(r, None, 0.90, 5)
    assert first.shape == (4, 0)  # Σ[cumsum < 0.9] = 0 on σ⁴ (σ² would have kept one)
    second = grow_basis(r, first, 0.90, 5)  # GPM's update branch: at least one column
    assert second.shape == (4, 1)
    torch.testing.assert_close(
        second.abs()[:, 0], torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    )
    r[1, 1] = 2.0  # σ_R = (2, 2): cumulative shares 0.5, 1.0 → one column on task 0
    assert grow_basis(r, None, 0.90, 5).shape == (4, 1)
    third = grow_basis(r, second, 0.90, 5)  # e1 is protected already: adds e2
    torch.testing.assert_close(third.abs()[:, 1], torch.tensor([0, 1.0, 0, 0], dtype=torch.float64))


def test_basis_after_tasks_is_orthonormal_and_projector_idempotent() -> None:
    model = _model()
    method = _pgp(model)
    for k in range(2):
        _train(model, method, k, iterations=2)
        method.after_task(_ctx(k), _loader(_ctx(k)))
    basis = method.basis
    assert basis is not None and 1 <= basis.shape[1] <= 10 and basis.shape[0] == WIDTH
    torch.testing.assert_close(basis.t() @ basis, torch.eye(basis.shape[1], dtype=torch.float64))
    p = torch.eye(WIDTH, dtype=torch.float64) - projector(basis)
    torch.testing.assert_close(p @ p, p)


# ----- training -----
def _after_task0(**cfg) -> tuple[ClipModel, PGP]:
    model = _model()
    method = _pgp(model, **cfg)
    _train(model, method, 0, iterations=3)
    method.after_task(_ctx(0), _loader(_ctx(0)))
    assert method.basis is not None and method.basis.shape[1] >= 1
    return model, method


def _relative_change(model: ClipModel, method: PGP, **train) -> float:
    method.before_task(_ctx(1))  # creates task 1's context
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, method, 1, iterations=3, **train)  # SGD momentum 0.9, real CE
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"clip.visual.image_prompt.prompt", "clip.text_contexts.contexts.part1"}
    assert method.basis is not None
    delta = after["clip.visual.image_prompt.prompt"] - before["clip.visual.image_prompt.prompt"]
    return relative_component(delta, method.basis, side="right")


def test_full_sgd_steps_leave_span_f_and_only_the_current_context_moves() -> None:
    model, method = _after_task0()
    assert _relative_change(model, method, weight_decay=0.0) <= 1e-5


def test_weight_decay_leaks_into_span_f_unless_the_update_is_projected() -> None:
    model, method = _after_task0()
    assert _relative_change(model, method, weight_decay=0.05) > 1e-3  # the original's leak
    model, method = _after_task0(project_update=True)
    assert _relative_change(model, method, weight_decay=0.05) <= 1e-5


def test_project_false_keeps_no_basis_and_leaves_gradients_alone() -> None:
    model = _model()
    method = _pgp(model, project=False)
    _train(model, method, 0, iterations=2)
    method.after_task(_ctx(0), _loader(_ctx(0)))
    assert method.basis is None and method.state_dict() == {"basis": None}
    method.before_task(_ctx(1))
    grad = torch.randn_like(method.prompt.prompt)
    method.prompt.prompt.grad = grad.clone()
    method.after_backward()
    assert torch.equal(method.prompt.prompt.grad, grad)


def test_chain_checkpoint_holds_every_context_and_the_basis(resume_runs) -> None:
    # The resume itself (same matrix, weights, state) is in test_resume_all_methods.py.
    runs = resume_runs("pgp")
    rows = runs.full.matrix[:2]
    assert not np.isnan(rows[1, :2]).any()
    ckpt = load_checkpoint(RunDir(runs.full_dir).checkpoint_path(1), None)
    assert {"clip.text_contexts.contexts.part0", "clip.text_contexts.contexts.part1"} <= set(
        ckpt["model"]
    )
    assert ckpt["method"]["basis"].shape[0] == WIDTH


# ----- config -----
def test_defaults_and_bad_configs() -> None:
    spec = tiny_spec("pgp", benchmark="test-cil")
    assert spec.method == {
        "name": "pgp",
        "project": True,
        "prompt_length": 10,
        "n_ctx": 16,
        "ctx_init": "random",
        "n_components": 5,
        "threshold": 0.9,
        "project_update": False,
    }
    train = spec.train
    assert (train.optimizer, train.momentum, train.lr, train.lr_first_task) == (
        "sgd",
        0.9,
        1e-2,
        1e-3,
    )
    assert train.label_smoothing == 0.0 and train.weight_decay == 2e-4
    with pytest.raises(ValidationError, match="Extra inputs"):
        create_method("pgp", {"prompt_len": 5})
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        create_method("pgp", {"threshold": 1.5})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        create_method("pgp", {"prompt_length": 0})
    with pytest.raises(ValidationError, match="non-empty phrase"):
        create_method("pgp", {"ctx_init": "  "})
    with pytest.raises(ClipclError, match=r"method\.n_ctx"):
        tiny_spec("pgp", n_ctx=0)
