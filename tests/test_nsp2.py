"""``nsp2``: deep prompts as extra keys/values (hand-written attention), the statistics C1/C2,
the knee, the projected Adam update (η = 1 and η = 0.98), L_LN, head refinement, resume, config."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from open_clip.transformer import Transformer
from pydantic import ValidationError
from torch import nn

from clipcl.data import Benchmark, get_benchmark
from clipcl.methods import TaskContext, create_method
from clipcl.methods.capture import attention_internals
from clipcl.methods.nsp2 import (
    NSP2,
    dataset_templates,
    ln_loss,
    prompt_statistics,
    update_projector,
)
from clipcl.methods.projection import relative_component
from clipcl.models import ClipModel
from clipcl.models.deep_prompts import add_deep_prompts
from clipcl.workers.train import make_loader, train_task
from tests.helpers import cil_context, method_on, tiny_model, tiny_spec

_model = tiny_model


def _nsp2(model: ClipModel, **cfg) -> NSP2:
    return method_on(model, "nsp2", NSP2, **cfg)  # type: ignore[return-value]


_ctx = cil_context


def _images(n: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


class _Tower(nn.Module):
    """A stand-in image tower: just ``transformer.resblocks`` (what deep prompts need)."""

    def __init__(self, width: int, heads: int, layers: int, batch_first: bool) -> None:
        super().__init__()
        self.transformer = Transformer(width, layers, heads, batch_first=batch_first)


def _hand_block(block: nn.Module, x: torch.Tensor, p: torch.Tensor, mask=None) -> torch.Tensor:
    """One residual block written out: keys/values = [LN1(X); LN1(P)], queries = LN1(X)."""
    attn = block.attn
    d, h = attn.embed_dim, attn.num_heads
    dh = d // h
    xn, pn = block.ln_1(x), block.ln_1(p)  # (B, N, D), (M, D)
    kv = torch.cat([xn, pn.expand(x.shape[0], -1, -1)], dim=1)  # (B, N + M, D)
    w_q, w_k, w_v = attn.in_proj_weight.split(d)
    b_q, b_k, b_v = attn.in_proj_bias.split(d)
    out = []
    for head in range(h):
        s = slice(head * dh, (head + 1) * dh)
        q = xn @ w_q[s].t() + b_q[s]  # (B, N, dh)
        k = kv @ w_k[s].t() + b_k[s]  # (B, N + M, dh)
        v = kv @ w_v[s].t() + b_v[s]
        scores = q @ k.transpose(1, 2) / math.sqrt(dh)  # (B, N, N + M)
        if mask is not None:  # image keys masked as given, prompt keys never
            scores[..., : x.shape[1]] += mask
        out.append(scores.softmax(-1) @ v)  # (B, N, dh)
    y = x + attn.out_proj(torch.cat(out, dim=-1))  # (B, N, D)
    return y + block.mlp(block.ln_2(y))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_prompted_block_equals_hand_written_attention(batch_first: bool, masked: bool) -> None:
    torch.manual_seed(0)
    tower = _Tower(width=8, heads=2, layers=2, batch_first=batch_first).double().eval()
    prompts = add_deep_prompts(tower, [0], length=3)
    x = torch.randn(2, 5, 8, dtype=torch.float64)  # (B, N, D)
    mask = torch.randn(5, 5, dtype=torch.float64) if masked else None
    block0, block1 = tower.transformer.resblocks

    def run(block: nn.Module, t: torch.Tensor) -> torch.Tensor:  # blocks take the tower's layout
        if batch_first:
            return block(t, attn_mask=mask)
        return block(t.transpose(0, 1), attn_mask=mask).transpose(0, 1)

    y = tower.transformer(x, attn_mask=mask)  # the tower takes (B, N, D) either way
    assert y.shape == x.shape  # the prompt rows never exist
    first = _hand_block(block0, x, prompts[0].tokens, mask)
    torch.testing.assert_close(run(block0, x), first)
    torch.testing.assert_close(y, run(block1, first))  # block 1 is not prompted


def test_prompt_rows_are_dropped_as_in_nsp2() -> None:
    """NSP²'s form: self-attention over [X; P] after LN1, output rows of P dropped."""
    torch.manual_seed(0)
    tower = _Tower(width=8, heads=2, layers=1, batch_first=True).double().eval()
    plain = copy.deepcopy(tower)
    prompt = add_deep_prompts(tower, [0], length=4)[0]
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    block, ref = tower.transformer.resblocks[0], plain.transformer.resblocks[0]
    joint = ref.ln_1(torch.cat([x, prompt.tokens.expand(3, -1, -1)], dim=1))  # (B, N + M, D)
    attn = ref.attn(joint, joint, joint, need_weights=False)[0][:, :6]  # drop the prompt rows
    expected = x + attn
    expected = expected + ref.mlp(ref.ln_2(expected))
    torch.testing.assert_close(block(x), expected)
    # Gradients reach the prompts through the keys and values.
    block(x).sum().backward()
    assert prompt.tokens.grad is not None and prompt.tokens.grad.abs().sum() > 0


@pytest.mark.parametrize(("blocks", "length"), [([0, 1], 0), ([], 4)])
def test_no_prompts_leave_the_model_unchanged(blocks: list[int], length: int) -> None:
    plain, model = _model(), _model()
    keys = set(model.state_dict())
    assert add_deep_prompts(model.clip.visual, blocks, length) == {}
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        a = plain.encode_image(plain.preprocess(_images()))
        b = model.encode_image(model.preprocess(_images()))
    assert torch.equal(a, b)


def test_method_prompts_live_in_the_state_dict_and_train_with_logit_scale() -> None:
    model = _model()
    method = _nsp2(model)
    assert sorted(method.prompts) == [0, 1, 2]  # blocks 0–3 clamped to tiny's 3 blocks
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"clip.logit_scale"} | {
        f"clip.visual.transformer.resblocks.{i}.prompt.tokens" for i in range(3)
    }
    tokens = model.state_dict()["clip.visual.transformer.resblocks.0.prompt.tokens"]
    assert tokens.shape == (4, 96) and tokens.abs().max() <= 1 and tokens.std() > 0.4  # U(-1, 1)
    with pytest.raises(ValueError, match=r"prompt blocks \[3\] do not exist.*3 blocks"):
        add_deep_prompts(_model().clip.visual, [3], 4)
    with pytest.raises(ValueError, match="prompt_start_block 3 does not exist"):
        _nsp2(_model(), prompt_start_block=3, prompt_end_block=5)


def test_statistics_match_explicit_j1_and_j2() -> None:
    model = _model(dtype=torch.float64)
    method = _nsp2(model)
    block = model.clip.visual.transformer.resblocks[1]
    x = torch.randn(2, 65, 96, dtype=torch.float64)  # (B, N, D) the attention's query input
    c1, c2 = prompt_statistics(block.attn, method.prompts[1], x)
    attn, h, d = block.attn, 3, 96
    q = (x @ attn.in_proj_weight[:d].t() + attn.in_proj_bias[:d]).view(2, 65, h, 32)  # (B,N,H,dh)
    w_k = attn.in_proj_weight[d : 2 * d].view(h, 32, d)  # (H, dh, D)
    j1 = torch.einsum("bnhd,hdD->bhnD", q, w_k).reshape(-1, d)  # rows q_{h,n} W_{k,h}
    torch.testing.assert_close(c1, j1.t() @ j1 / j1.shape[0])
    kv = torch.cat([x, block.ln_1(method.prompts[1].tokens).expand(2, -1, -1)], dim=1)
    probs = attention_internals(attn, x, kv).probs  # (B, H, N, N + M)
    j2 = probs[..., 65:].reshape(-1, 4)
    torch.testing.assert_close(c2, j2.t() @ j2 / j2.shape[0])
    assert torch.allclose(probs.sum(-1), torch.ones(()).double())


def _designed_cov(spectrum: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(spectrum), len(spectrum), generator=g).double())
    return q @ torch.diag(torch.tensor(spectrum).double()) @ q.t(), q


def test_knee_nullity_matches_a_hand_computed_curve() -> None:
    # Second differences s[i] − 2 s[i+1] + s[i+2]: 0, −5, 5.5, 0 → knee at index 3 (value 2):
    # the null space holds the last three directions (2, 1.5, 1).
    cov, q = _designed_cov([10.0, 9.0, 8.0, 2.0, 1.5, 1.0])
    u0 = q[:, 3:]
    expected = u0 @ u0.t() / math.sqrt(3)  # B = U0U0ᵀ / ‖U0U0ᵀ‖_F
    torch.testing.assert_close(update_projector(cov, 1.0, 10.0, 0.015), expected)
    mixed = update_projector(cov, 0.98, 10.0, 0.015)
    torch.testing.assert_close(mixed, 0.98 * expected + 0.02 * torch.eye(6).double())


def _stats_after_task0(eta: float, lr: float) -> tuple[ClipModel, NSP2, TaskContext, object]:
    model = _model(dtype=torch.float64)
    method = _nsp2(model, eta1=eta, eta2=eta, refine_head=False)
    method.before_task(_ctx(0))
    method.after_task(_ctx(0), loader=None)  # type: ignore[arg-type]  (real C1/C2 of task 0)
    assert sorted(method.cov1) == [0, 1, 2] and method.cov2[0].shape == (4, 4)
    ctx = _ctx(1)
    method.before_task(ctx)
    spec = tiny_spec("nsp2", benchmark="test-cil", iterations=1, eta1=eta, eta2=eta)
    return model, method, ctx, spec.train.model_copy(update={"lr": lr, "warmup_steps": 0})


def _protected(cov: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of ``cov`` outside its knee null space (columns)."""
    n = cov.shape[0]
    b = update_projector(cov, 1.0, 10.0, 0.015)  # U0U0ᵀ / √k0
    k0 = round(float(torch.trace(b)) ** 2)
    vals, vecs = torch.linalg.eigh(cov)
    return vecs.flip(1)[:, : n - k0]


def test_full_adam_step_with_eta_one_has_no_component_in_protected_directions() -> None:
    model, method, ctx, train = _stats_after_task0(eta=1.0, lr=1.0)
    assert train.optimizer == "adam" and train.weight_decay == 5e-5  # L2 inside Adam
    before = {i: p.tokens.detach().clone() for i, p in method.prompts.items()}
    loader = make_loader(ctx.task.train, 32, shuffle=True, seed=0, num_workers=0, pin_memory=False)
    train_task(model, method, ctx, train, loader)
    for i, prompt in method.prompts.items():
        delta = prompt.tokens.detach() - before[i]  # (M, D)
        assert delta.norm() > 1e-3
        u1, u2 = _protected(method.cov1[i]), _protected(method.cov2[i])
        assert 0 < u1.shape[1] < 96 and 0 < u2.shape[1] < 4
        assert relative_component(delta, u1, "right") <= 1e-5
        assert relative_component(delta.t(), u2, "right") <= 1e-5  # left side of Δ
    # Honest: the same step without the projection is not confined.
    model, method, ctx, train = _stats_after_task0(eta=0.0, lr=1.0)
    before = {i: p.tokens.detach().clone() for i, p in method.prompts.items()}
    train_task(model, method, ctx, train, loader)
    delta = method.prompts[0].tokens.detach() - before[0]
    assert relative_component(delta, _protected(method.cov1[0]), "right") > 0.05


def test_eta_098_update_matches_the_written_formula() -> None:
    model = _model(dtype=torch.float64)
    method = _nsp2(model, refine_head=False)
    spectrum1 = [50.0 / (1 + k) ** 2 for k in range(96)]
    for i in method.prompts:
        method.cov1[i], _ = _designed_cov(spectrum1, seed=i)
        method.cov2[i], _ = _designed_cov([5.0, 1.0, 0.2, 0.1], seed=10 + i)
    method.before_task(_ctx(1))
    g = torch.Generator().manual_seed(3)
    steps = {i: 1e-3 * torch.randn(4, 96, generator=g).double() for i in method.prompts}
    before = {i: p.tokens.detach().clone() for i, p in method.prompts.items()}
    method.after_backward()  # snapshot
    with torch.no_grad():
        for i, p in method.prompts.items():
            p.tokens.add_(steps[i])  # what the optimizer would do
    method.after_step()
    for i, p in method.prompts.items():
        b1, b2 = _hand_b(method.cov1[i]), _hand_b(method.cov2[i])
        p1 = 0.98 * b1 + 0.02 * torch.eye(96).double()
        p2 = 0.98 * b2 + 0.02 * torch.eye(4).double()
        torch.testing.assert_close(p.tokens.detach() - before[i], p2 @ steps[i] @ p1)


def _hand_b(cov: torch.Tensor) -> torch.Tensor:
    """NSP²'s rule for curves under 128 values, written out: raw second difference, knee value
    and all after it are the null space; ``B = U0U0ᵀ / ‖U0U0ᵀ‖_F``."""
    vals, vecs = np.linalg.eigh(cov.numpy())
    s, u = vals[::-1], vecs[:, ::-1]
    second = s[:-2] - 2 * s[1:-1] + s[2:]
    u0 = u[:, int(np.argmax(second)) + 1 :]
    b = u0 @ u0.T
    return torch.from_numpy(b / np.linalg.norm(b))


def test_ln_loss_on_a_hand_case() -> None:
    p = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    old = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # means (2, 0) vs (0, 1) → 1.5; biased stds (√(2/3), 0) vs (0, 0) → √(2/3) / 2
    one = 1.5 + math.sqrt(2 / 3) / 2
    assert float(ln_loss({0: p}, {0: old})) == pytest.approx(one)
    assert float(ln_loss({0: p, 3: p}, {0: old, 3: old})) == pytest.approx(2 * one)


def test_ln_loss_is_the_extra_loss_from_task_one_with_projection_only() -> None:
    model = _model()
    method = _nsp2(model, ln_loss_weight=2.0)
    method.before_task(_ctx(0))
    assert method.extra_loss(None, None) is None  # type: ignore[arg-type]
    method.before_task(_ctx(1))
    with torch.no_grad():
        method.prompts[1].tokens.add_(0.5)
    expected = 2.0 * 0.5  # one block's token means shift by 0.5, stds unchanged
    loss = method.extra_loss(None, None)  # type: ignore[arg-type]
    assert loss is not None and float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    seq = _nsp2(_model(), project=False)
    seq.before_task(_ctx(1))
    assert seq.extra_loss(None, None) is None  # type: ignore[arg-type]


def test_head_refinement_moves_only_the_visual_projection() -> None:
    model = _model()
    method = _nsp2(model, refine_epochs=3)
    ctx = _ctx(0)
    method.before_task(ctx)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method.after_task(ctx, loader=None)  # type: ignore[arg-type]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"clip.visual.proj"}
    assert method.class_mean is not None and method.class_mean.shape == (4, 96)
    assert method.class_tril is not None and method.class_tril.shape == (4, 96, 96)
    assert not any(p.requires_grad for p in [model.clip.visual.proj])


def test_chain_evaluates_every_seen_task(resume_runs) -> None:
    # The resume of this chain (same matrix, weights, state) is in test_resume_all_methods.py.
    rows = resume_runs("nsp2").full.matrix[:2]
    assert not np.isnan(rows[1, :2]).any()


def test_classifier_uses_the_dataset_template_ensemble() -> None:
    task = get_benchmark("test-cil").tasks[0]
    cifar = Benchmark(name="cifar100-b0inc10", protocol="cil", tasks=(task,))
    assert len(dataset_templates(cifar, task)) == 18  # NSP²'s CIFAR-100 list (CLIP's 18)
    assert dataset_templates(get_benchmark("test-cil"), task) == task.templates
    model = _model()
    method = _nsp2(model)
    method.before_task(_ctx(0))
    clf = method.classifier(task, training=True)
    with torch.no_grad():
        expected = model.class_embeddings(task.class_names, task.templates)
    torch.testing.assert_close(clf, expected)
    assert method.classifier(task, training=False) is clf  # cached per task


def test_bad_configs_are_clear_errors() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        create_method("nsp2", {"eta": 0.9})
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        create_method("nsp2", {"eta1": 1.5})
    with pytest.raises(ValidationError, match="prompt_start_block 4 > prompt_end_block 2"):
        create_method("nsp2", {"prompt_start_block": 4, "prompt_end_block": 2})
    with pytest.raises(ValidationError, match="'dataset' or 'task'"):
        create_method("nsp2", {"text_templates": "both"})
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        create_method("nsp2", {"prompt_length": -1})
    cfg = create_method("nsp2", {}).config
    assert (cfg.prompt_length, cfg.eta1, cfg.eta2, cfg.refine_epochs) == (4, 0.98, 0.98, 50)
    assert NSP2.train_defaults["optimizer"] == "adam"


def test_statistics_and_null_space_run_in_the_configured_dtype() -> None:
    # The authors compute the statistics and their decomposition in fp32 (issue 14); fp64 is
    # the named option. The model is fp64 here, so fp32 statistics are the config's doing.
    assert create_method("nsp2", {}).config.stats_dtype == "float32"  # type: ignore[attr-defined]
    for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        model = _model(dtype=torch.float64)
        method = _nsp2(model, refine_head=False, stats_dtype=name)
        method.before_task(_ctx(0))
        method.after_task(_ctx(0), loader=None)  # type: ignore[arg-type]
        assert {c.dtype for c in [*method.cov1.values(), *method.cov2.values()]} == {dtype}
        method.before_task(_ctx(1))
        assert method.proj1 and all(p.dtype == torch.float64 for p in method.proj1.values())
    cov, q = _designed_cov([10.0, 9.0, 8.0, 2.0, 1.5, 1.0])
    got = update_projector(cov.float(), 1.0, 10.0, 0.015, dtype=torch.float32)
    torch.testing.assert_close(got, q[:, 3:] @ q[:, 3:].t() / math.sqrt(3), atol=1e-5, rtol=0)
    with pytest.raises(ValidationError, match="stats_dtype"):
        create_method("nsp2", {"stats_dtype": "float16"})
