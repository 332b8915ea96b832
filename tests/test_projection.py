"""The projection engine (``methods/projection.py``, ``methods/capture.py``): hand-computed
covariances, spectra, GPM basis counts, knees, null spaces, projectors, and the METHODS.md claim
that with AdamW only a projected *update* stays out of the protected subspace."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from clipcl.methods.capture import attention_internals, capture
from clipcl.methods.projection import (
    ComplementProjection,
    UpdateProjection,
    accumulate_covariance,
    eigh_desc,
    gpm_basis,
    knee_index,
    null_space_knee,
    null_space_threshold,
    orthonormalize,
    projector,
    relative_component,
    remove_component,
)


def _rotation(d: int, seed: int = 0) -> torch.Tensor:
    """A random (d, d) orthogonal matrix in float64."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


def _with_spectrum(values: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A covariance ``Q diag(values) Qᵀ`` and its eigenvectors Q (columns, in ``values`` order)."""
    q = _rotation(len(values), seed)
    return q @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ q.t(), q


def _same_span(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape[1] == b.shape[1] and torch.allclose(projector(a), projector(b), atol=1e-9)


def _orthonormal(u: torch.Tensor) -> bool:
    return torch.allclose(u.t() @ u, torch.eye(u.shape[1], dtype=u.dtype), atol=1e-10)


# ----- statistics -----
def test_accumulate_covariance_sums_xtx_over_batches_and_tokens() -> None:
    x1 = torch.tensor([[[1.0, 2.0], [0.0, 1.0]]])  # (1, 2, 2): one sample, two tokens
    x2 = torch.tensor([[3.0, -1.0]])  # (1, 2)
    cov = accumulate_covariance(None, x1)
    cov = accumulate_covariance(cov, x2)
    # rows (1,2), (0,1), (3,-1): Σ x xᵀ = [[1+0+9, 2+0-3], [2+0-3, 4+1+1]]
    expected = torch.tensor([[10.0, -1.0], [-1.0, 6.0]], dtype=torch.float64)
    assert cov.dtype == torch.float64
    torch.testing.assert_close(cov, expected, rtol=0, atol=0)


def test_accumulate_covariance_mean_divides_each_batch_by_its_rows() -> None:
    x1 = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # XᵀX = [[1, 2], [2, 5]], 2 rows
    x2 = torch.tensor([[3.0, -1.0]])  # [[9, -3], [-3, 1]], 1 row
    cov = accumulate_covariance(accumulate_covariance(None, x1, mean=True), x2, mean=True)
    expected = torch.tensor([[0.5 + 9, 1 - 3], [1 - 3, 2.5 + 1]], dtype=torch.float64)
    torch.testing.assert_close(cov, expected, rtol=0, atol=1e-15)


def test_eigh_desc_is_descending_and_reconstructs() -> None:
    cov, q = _with_spectrum([1.0, 7.0, 0.0, 3.0])
    sv, u = eigh_desc(cov)
    torch.testing.assert_close(sv, torch.tensor([7.0, 3.0, 1.0, 0.0], dtype=torch.float64))
    assert (sv >= 0).all()  # the zero eigenvalue's round-off is clamped
    torch.testing.assert_close(u @ torch.diag(sv) @ u.t(), cov, atol=1e-12, rtol=0)
    assert abs(float(u[:, 0] @ q[:, 1])) == pytest.approx(1.0)  # top vector = the 7's


# ----- GPM basis -----
SPECTRUM = [50.0, 25.0, 15.0, 6.0, 3.0, 1.0]  # total 100: cumsum ratios .50 .75 .90 .96 .99 1.0


@pytest.mark.parametrize(("eps", "k"), [(0.97, 4), (0.95, 3), (0.49, 0), (0.51, 1), (0.999, 5)])
def test_gpm_first_task_keeps_the_count_of_cumsum_below_eps(eps: float, k: int) -> None:
    """GPM code, task 0: ``r = Σ [cumsum < ε]`` (no +1): ε 0.97 keeps .50 .75 .90 .96 → 4."""
    cov, q = _with_spectrum(SPECTRUM)
    basis = gpm_basis(cov, None, eps)
    assert basis.shape == (6, k)
    assert _orthonormal(basis)
    assert _same_span(basis, q[:, :k])


def test_gpm_empty_basis_counts_like_a_later_task() -> None:
    """A (d, 0) basis (tasks seen, nothing kept) adds the direction that crosses ε (+1)."""
    cov, q = _with_spectrum(SPECTRUM)
    assert gpm_basis(cov, None, 0.97).shape[1] == 4
    basis = gpm_basis(cov, torch.zeros(6, 0, dtype=torch.float64), 0.97)
    assert _same_span(basis, q[:, :5])  # .50 .75 .90 .96 < .97 → add, then .99: stop


def test_gpm_later_task_adds_until_the_crossing_direction() -> None:
    """Old basis e1, e2; new task's energy 30 inside it, 40 / 15 / 10 / 5 along e4 / e5 / e3 /
    e6 (total 100). GPM code: accumulated .30 → +e4 .70 → +e5 .85 → +e3 .95 ≥ .90 → stop."""
    eye = torch.eye(6, dtype=torch.float64)
    old = eye[:, :2].clone()
    cov = torch.diag(torch.tensor([20.0, 10.0, 10.0, 40.0, 15.0, 5.0], dtype=torch.float64))
    new = gpm_basis(cov, old, 0.90)
    assert new.shape == (6, 5)
    assert torch.equal(new[:, :2], old)  # old columns unchanged and first
    assert _orthonormal(new)
    assert _same_span(new, eye[:, [0, 1, 3, 4, 2]])
    assert _same_span(gpm_basis(cov, old, 0.71), eye[:, [0, 1, 3, 4]])  # .70 < .71 → +e5
    assert _same_span(gpm_basis(cov, old, 0.69), eye[:, [0, 1, 3]])  # .70 ≥ .69 → stop
    assert torch.equal(gpm_basis(cov, old, 0.30), old)  # captured ≥ ε: nothing added
    assert _same_span(gpm_basis(cov, old, 0.90, max_new=1), eye[:, [0, 1, 3]])


def test_gpm_later_task_adds_only_directions_outside_the_old_span() -> None:
    g = torch.Generator().manual_seed(3)
    old = gpm_basis(accumulate_covariance(None, torch.randn(40, 10, generator=g)), None, 0.6)
    assert 0 < old.shape[1] < 10
    # New inputs mix the old span with fresh directions.
    x = torch.randn(30, 10, generator=g, dtype=torch.float64)
    new = gpm_basis(accumulate_covariance(None, x), old, 0.95)
    assert new.shape[1] > old.shape[1]
    assert torch.equal(new[:, : old.shape[1]], old)
    assert _orthonormal(new)
    added = new[:, old.shape[1] :]
    assert float((old.t() @ added).abs().max()) < 1e-12


def _gpm_reference(r: np.ndarray, basis: np.ndarray | None, eps: float) -> np.ndarray:
    """GPM's ``update_GPM`` written from its description on the representation R (d, m)."""
    if basis is None:
        u, s, _ = np.linalg.svd(r, full_matrices=False)
        ratio = np.cumsum(s**2) / (s**2).sum()
        return u[:, : int(np.sum(ratio < eps))]
    total = float((np.linalg.svd(r, compute_uv=False) ** 2).sum())
    r_hat = r - basis @ (basis.T @ r)
    u, s, _ = np.linalg.svd(r_hat, full_matrices=False)
    acc, count = (total - float((s**2).sum())) / total, 0
    for value in s**2 / total:
        if acc >= eps:
            break
        acc, count = acc + value, count + 1
    return np.hstack([basis, u[:, :count]])[:, : r.shape[0]]


def test_gpm_basis_matches_the_reference_over_a_task_sequence() -> None:
    g = torch.Generator().manual_seed(7)
    mix = torch.randn(12, 12, generator=g, dtype=torch.float64) * torch.logspace(0, -2, 12)
    basis, ref = None, None
    for t in range(4):
        x = torch.randn(25, 12, generator=g, dtype=torch.float64) @ mix.t()  # (m, d) rows
        eps = 0.97 + 0.003 * t
        basis = gpm_basis(accumulate_covariance(None, x), basis, eps)
        ref = _gpm_reference(x.numpy().T, ref, eps)
        assert basis.shape[1] == ref.shape[1], f"task {t}"
        assert _same_span(basis, torch.from_numpy(ref))
    assert basis is not None and basis.shape[1] < 12


def test_gpm_basis_rejects_a_bad_threshold() -> None:
    with pytest.raises(ValueError, match="threshold"):
        gpm_basis(torch.eye(3), None, 1.5)


# ----- knees and null spaces -----
def test_knee_index_without_smoothing_is_the_largest_second_difference() -> None:
    sv = torch.tensor([10.0, 9, 8, 7, 1, 0.9, 0.8, 0.7])
    # second differences at 1..6: 0, 0, −5, 5.9, 0, 0 → knee at index 4 (the value 1)
    assert knee_index(sv, smooth_std=0) == 4


def _two_slopes(n: int = 200, knee: int = 100) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64)
    steep = 100 - 0.9 * i  # slope −0.9 down to the knee
    flat = 100 - 0.9 * knee - 0.01 * (i - knee)  # then −0.01: second difference 0.89 there
    return torch.where(i <= knee, steep, flat)


def test_knee_index_with_smoothing_finds_the_slope_change() -> None:
    sv = _two_slopes()
    assert knee_index(sv, smooth_std=0) == 100
    assert abs(knee_index(sv, smooth_std=10.0) - 100) <= 1
    u0 = null_space_knee(torch.diag(sv), smooth_std=10.0)
    assert 99 <= u0.shape[1] <= 101


@pytest.mark.parametrize(("kink", "found"), [(3, 100), (4, 4), (195, 195), (196, 100)])
def test_knee_index_trims_1_5_percent_of_each_end_from_128_values(kink: int, found: int) -> None:
    """n = 200: int(200 · 0.015) = 3, so second differences centred at 4..195 are searched."""
    sv = _two_slopes()
    sv[kink:] -= 5.0  # a step down (still descending): second difference +5 at `kink`
    assert knee_index(sv, smooth_std=0) == found


def test_knee_index_does_not_trim_below_128_values() -> None:
    sv = _two_slopes(n=100, knee=50)
    sv[1:] -= 5.0
    assert knee_index(sv, smooth_std=0) == 1
    # ... nor smooth them: a smoothed curve would move the knee off the step.
    assert knee_index(sv, smooth_std=10.0) == 1


def test_knee_ties_stay_outside_the_null_space() -> None:
    """The null space starts at the last value ≥ the knee's (NSP²'s ``points >= thres_val``)."""
    sv = torch.tensor([10.0, 9.0, 8.0, 2.0, 2.0, 1.0])
    # second differences at values 1..4: 0, 5, -1, 1 → knee value 2.0 (index 3), tied at 4
    assert knee_index(sv) == 4


def test_knee_smoothing_matches_scipy_gaussian_filter1d() -> None:
    """scipy's default: radius int(4σ + 0.5) and symmetric ("reflect") boundaries."""
    from clipcl.methods.projection import _gaussian_smooth

    s = torch.linspace(1.0, 0.0, 20, dtype=torch.float64) ** 2
    got = _gaussian_smooth(s, 1.0)
    # scipy.ndimage.gaussian_filter1d(s, 1.0) written out: weights w_k ∝ exp(−k²/2), |k| ≤ 4.
    k = torch.arange(-4, 5, dtype=torch.float64)
    w = torch.exp(-0.5 * k**2)
    w = w / w.sum()
    ext = torch.cat([s[:4].flip(0), s, s[-4:].flip(0)])  # d c b a | a b c d | ...
    want = torch.stack([(ext[i : i + 9] * w).sum() for i in range(20)])
    assert torch.allclose(got, want, atol=1e-15)


def test_null_space_threshold_keeps_eigenvalues_up_to_gamma_lambda_min() -> None:
    cov, q = _with_spectrum([10.0, 5.0, 1.0, 0.5, 0.2])
    assert _same_span(null_space_threshold(cov, 3.0), q[:, [3, 4]])  # ≤ 0.6
    assert _same_span(null_space_threshold(cov, 1.0), q[:, [4]])
    assert _same_span(null_space_threshold(cov, 100.0), q)
    singular, q2 = _with_spectrum([4.0, 1.0, 0.0, 0.0], seed=1)
    assert _same_span(null_space_threshold(singular, 1e6), q2[:, [2, 3]])  # exact null space
    with pytest.raises(ValueError, match="gamma"):
        null_space_threshold(cov, 0.5)


# ----- projectors and components -----
def test_projector_and_its_complement_are_idempotent_and_symmetric() -> None:
    u = orthonormalize(torch.randn(7, 3, generator=torch.Generator().manual_seed(1)))
    p = projector(u)
    comp = torch.eye(7, dtype=torch.float64) - p
    for m in (p, comp):
        torch.testing.assert_close(m @ m, m, atol=1e-12, rtol=0)
        torch.testing.assert_close(m, m.t(), atol=1e-12, rtol=0)
    assert float(torch.trace(p)) == pytest.approx(3.0)


def test_orthonormalize_drops_dependent_columns() -> None:
    a = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    u = orthonormalize(a)
    assert u.shape == (3, 2) and _orthonormal(u)


def test_remove_component_leaves_nothing_along_u_on_either_side() -> None:
    g = torch.Generator().manual_seed(2)
    u = orthonormalize(torch.randn(6, 2, generator=g))
    right = remove_component(torch.randn(4, 6, generator=g), u, "right")  # (out, d)
    left = remove_component(torch.randn(6, 5, generator=g), u, "left")  # (d, n)
    assert right.dtype == torch.float32
    assert float((right.double() @ u).abs().max()) < 1e-6
    assert float((u.t() @ left.double()).abs().max()) < 1e-6
    # Already orthogonal: unchanged.
    assert torch.allclose(remove_component(right, u, "right"), right, atol=1e-6)


def test_relative_component_by_hand() -> None:
    delta = torch.tensor([[3.0, 4.0]])
    e1 = torch.tensor([[1.0], [0.0]])
    assert relative_component(delta, e1, "right") == pytest.approx(0.6)
    assert relative_component(delta, 5 * e1, "right") == pytest.approx(0.6)  # any spanning U
    assert relative_component(delta.t(), e1, "left") == pytest.approx(0.6)
    assert relative_component(torch.zeros(1, 2), e1, "right") == 0.0


def _adamw_step(project: str) -> tuple[float, float]:
    """One AdamW step (weight decay 0.1) of a linear layer whose inputs span U (d = 8, k = 3);
    return the relative component of ΔW along U and ‖ΔW‖."""
    torch.manual_seed(0)
    layer = nn.Linear(8, 4, bias=False)
    u = orthonormalize(torch.randn(8, 3))  # (8, 3) protected input directions
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=0.1)
    update = UpdateProjection([("w", layer.weight)])
    x = torch.randn(16, 8)  # new-task inputs, generic directions
    loss = (layer(x) - torch.randn(16, 4)).pow(2).mean()
    loss.backward()
    before = layer.weight.detach().clone()
    if project == "gradient":
        layer.weight.grad = remove_component(layer.weight.grad, u)
    update.snapshot()
    opt.step()
    if project == "update":
        update.apply(lambda name, delta: remove_component(delta, u))
    delta = layer.weight.detach() - before
    return relative_component(delta, u), float(delta.norm())


def test_adamw_breaks_gradient_projection_and_update_projection_fixes_it() -> None:
    """METHODS.md §3: Adam rescales coordinates and weight decay adds −λθ, so a projected
    gradient still moves W along the protected inputs; the projected update does not."""
    along_grad, norm_grad = _adamw_step("gradient")
    along_update, norm_update = _adamw_step("update")
    assert along_grad > 0.1  # clearly inside the protected subspace
    assert along_update <= 1e-5
    assert norm_update > 0.3 * norm_grad  # the update is not simply zeroed


def test_update_projection_needs_a_snapshot() -> None:
    layer = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="snapshot"):
        UpdateProjection(layer.named_parameters()).apply(lambda name, d: d)


# ----- capture -----
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", [None, "float", "bool"])
def test_attention_internals_reproduce_multihead_attention(batch_first: bool, mask) -> None:
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(12, 3, batch_first=batch_first).eval()
    b, n = 2, 5
    x = torch.randn(b, n, 12) if batch_first else torch.randn(n, b, 12)
    attn_mask = None
    if mask == "float":
        attn_mask = torch.full((n, n), float("-inf")).triu(1)  # causal, additive
    elif mask == "bool":
        attn_mask = torch.ones(n, n, dtype=torch.bool).triu(1)  # True = masked
    with torch.no_grad():
        out, weights = attn(x, x, x, attn_mask=attn_mask, average_attn_weights=False)
        got = attention_internals(attn, x, batch_first=batch_first, attn_mask=attn_mask)
    out_bf = out if batch_first else out.transpose(0, 1)  # (B, N, D)
    torch.testing.assert_close(attn.out_proj(got.context), out_bf, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.probs, weights, atol=1e-6, rtol=1e-5)
    assert got.q.shape == got.k.shape == got.v.shape == (b, 3, n, 4)
    if mask is not None:
        assert float(got.probs[..., 0, 1:].abs().max()) == 0.0  # first query sees itself only


def test_attention_internals_cross_attention() -> None:
    torch.manual_seed(1)
    attn = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x, kv = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
    with torch.no_grad():
        out, _ = attn(x, kv, kv)
        got = attention_internals(attn, x, kv)
    assert got.probs.shape == (3, 2, 4, 6)
    torch.testing.assert_close(attn.out_proj(got.context), out, atol=1e-5, rtol=1e-5)


def test_capture_calls_back_per_forward_and_removes_its_hooks() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    seen: list[tuple[str, torch.Tensor]] = []
    x1, x2 = torch.randn(5, 3), torch.randn(2, 3)
    with capture({"first": net[0], "last": net[2]}, lambda n, t: seen.append((n, t))):
        net(x1)
        net(x2)
    assert [n for n, _ in seen] == ["first", "last", "first", "last"]
    assert torch.equal(seen[0][1], x1) and torch.equal(seen[2][1], x2)
    torch.testing.assert_close(seen[1][1], net[1](net[0](x1)))
    assert not seen[1][1].requires_grad  # detached
    assert all(not m._forward_hooks for m in net)
    net(x1)
    assert len(seen) == 4  # no more calls after the block

    outputs: list[torch.Tensor] = []
    with capture({"last": net[2]}, lambda n, t: outputs.append(t), kind="output"):
        y = net(x1)
    assert torch.equal(outputs[0], y.detach())


def test_capture_removes_hooks_when_the_block_raises() -> None:
    layer = nn.Linear(2, 2)
    with pytest.raises(ZeroDivisionError), capture({"l": layer}, lambda n, t: None):
        layer(torch.ones(1, 2))
        _ = 1 / 0
    assert not layer._forward_hooks


def test_capture_reads_keyword_inputs_and_tuple_outputs() -> None:
    attn = nn.MultiheadAttention(4, 1, batch_first=True).eval()
    x = torch.randn(1, 3, 4)
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    with torch.no_grad():
        with capture({"a": attn}, lambda n, t: inputs.append(t)):
            attn(query=x, key=x, value=x)
        with capture({"a": attn}, lambda n, t: outputs.append(t), kind="output"):
            out, _ = attn(x, x, x)
    assert torch.equal(inputs[0], x)
    assert torch.equal(outputs[0], out)
    assert math.isfinite(float(out.sum()))


@pytest.mark.parametrize("k", [3, 14])  # 2k ≤ d: low-rank factors; 2k > d: the dense complement
@pytest.mark.parametrize("side", ["right", "left"])
def test_complement_projection_equals_remove_component_in_either_form(k: int, side: str) -> None:
    d = 16
    u = _rotation(d)[:, :k]
    proj = ComplementProjection(u, dtype=torch.float32)
    assert (proj.dense is not None) == (2 * k > d)
    g = torch.randn(5, d) if side == "right" else torch.randn(d, 5)
    got = proj(g, side)  # type: ignore[arg-type]
    assert got.dtype == torch.float32
    assert torch.allclose(got, remove_component(g, u, side), atol=1e-6)  # type: ignore[arg-type]
    assert relative_component(got, u, side) < 1e-6  # type: ignore[arg-type]
