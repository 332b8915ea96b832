"""The projection engine shared by GPM, NSP², PGP and DMNSP: pure linear algebra, no model code.

Every method of the family summarises what a layer saw on a finished task, keeps a subspace and
constrains later changes of that layer's parameters (METHODS.md §3):

- statistics: the uncentred covariance ``C = Σ XᵀX`` of a layer's inputs (or outputs), summed
  over samples, tokens and tasks (``accumulate_covariance``);
- subspaces: GPM's energy-threshold basis of the inputs seen so far (``gpm_basis``, Saha et al.
  2021, Alg. 1), and the null space of ``C`` chosen by the knee of its singular-value curve
  (``null_space_knee``, NSP²) or by Adam-NSCL's ``σ ≤ γ·σ_min`` rule (``null_space_threshold``);
- constraints: ``remove_component`` (``G − G U Uᵀ``: gradient projection), ``projector``
  (``U Uᵀ``) and ``UpdateProjection``, which replaces the optimizer's update ``Δ = θ_new − θ_old``
  by a function of it after the step. With Adam(W) only the update form keeps the guarantee:
  Adam rescales each coordinate of a projected gradient and weight decay adds ``−λθ``, so the
  step leaves the allowed subspace (property tested in ``tests/test_projection.py``).

Conventions: a basis ``U`` is a (d, k) matrix whose columns span the protected (or allowed)
subspace; for a weight ``W (out, d)`` acting on inputs ``x ∈ R^d`` the protected side is the
right one (``side="right"``: ``G U``); ``side="left"`` acts on rows (``Uᵀ G``). Linear algebra
runs in float64; results come back in float64 (callers cast to their parameter's dtype).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

Side = Literal["right", "left"]


def accumulate_covariance(
    cov: torch.Tensor | None,
    x: torch.Tensor,
    *,
    mean: bool = False,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``cov + XᵀX`` for the rows of ``x`` (..., d) flattened to (n, d), in ``dtype``.

    Args:
        cov: the running (d, d) sum, or None to start one.
        x: samples (any leading shape; the last axis is the feature axis).
        mean: add ``XᵀX / n`` instead (NSP² divides each batch's term by its row count).
        dtype: precision of the product (NSP²'s authors: float32).
    """
    rows = x.detach().reshape(-1, x.shape[-1]).to(dtype)  # (n, d)
    term = rows.t() @ rows  # (d, d)
    if mean:
        term = term / max(1, rows.shape[0])
    return term if cov is None else cov + term.to(cov.device)


def eigh_desc(
    cov: torch.Tensor, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (descending, clamped ≥ 0) and vectors (columns) of a symmetric PSD matrix,
    computed in ``dtype``.

    For ``C = R Rᵀ`` these are ``σ²`` of ``R`` and its left singular vectors.
    """
    c = cov.to(dtype)
    c = 0.5 * (c + c.t())  # (d, d) exact symmetry for eigh
    vals, vecs = torch.linalg.eigh(c)  # ascending
    return vals.flip(0).clamp_min(0.0), vecs.flip(1)


def gpm_basis(
    cov: torch.Tensor,
    basis: torch.Tensor | None,
    threshold: float,
    max_new: int | None = None,
) -> torch.Tensor:
    """GPM's basis update (Saha et al. 2021, Alg. 1) from the covariance ``C = R Rᵀ`` of a task.

    Counting follows the authors' code (``sahagobinda/GPM@1a238ec``, ``update_GPM``):

    - first call (``basis`` None): keep the ``r = Σ [cumsum(σ²)/total < ε]`` leading eigenvectors
      of ``C`` (Eq. 5; no ``+1``: the direction whose energy crosses ε is left out);
    - later calls: with ``R̂ = R − M Mᵀ R`` (Eq. 8, so ``Ĉ = (I − MMᵀ) C (I − MMᵀ)``), start from
      the energy of ``R`` already inside span M, ``captured / ‖R‖²``, and add the leading
      eigenvectors of ``Ĉ`` one at a time while the accumulated ratio is still below ε before
      adding (Eq. 9). That is ``Σ [(captured + cumsum(σ̂²))/‖R‖² < ε] + 1`` directions: the one
      that crosses ε is included. Nothing is added when ``captured / ‖R‖² ≥ ε``.

    A (d, 0) ``basis`` (tasks summarised, nothing kept) follows the later-call rule, as the
    authors' code does for a layer whose first basis came out empty.

    Args:
        cov: (d, d) uncentred covariance of the task's layer inputs.
        basis: (d, k) orthonormal basis so far, or None before the first task.
        threshold: ε ∈ (0, 1].
        max_new: cap on the number of columns added (PGP: 5 per task).

    Returns:
        (d, k') orthonormal basis in float64: the old columns unchanged and first, then an
        orthonormal basis of the added directions (k ≤ k' ≤ d).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    c = cov.to(torch.float64)
    total = float(torch.trace(c))
    d = c.shape[0]
    if total <= 0:
        return basis.to(torch.float64) if basis is not None else c.new_zeros(d, 0)
    if basis is None:
        sv, u = eigh_desc(c)
        ratio = torch.cumsum(sv, 0) / total
        k = int((ratio < threshold).sum())
        k = min(k, d) if max_new is None else min(k, d, max_new)
        return u[:, :k].contiguous()
    m = basis.to(device=c.device, dtype=torch.float64)
    residual = c - m @ (m.t() @ c)  # (I − MMᵀ) C
    residual = residual - (residual @ m) @ m.t()  # (I − MMᵀ) C (I − MMᵀ)
    sv, u = eigh_desc(residual)
    captured = total - float(torch.trace(residual))  # energy of R inside span M
    if captured / total >= threshold:
        return m
    ratio = (captured + torch.cumsum(sv, 0)) / total
    k = int((ratio < threshold).sum()) + 1
    k = min(k, d - m.shape[1])
    if max_new is not None:
        k = min(k, max_new)
    new = u[:, :k]  # (d, k) unit columns
    new = new - m @ (m.t() @ new)  # drop round-off along span M
    # Eigenvectors of a ~zero eigenvalue may lie (almost) inside span M: nothing new there.
    new = new[:, new.norm(dim=0) > 1e-6]
    return torch.cat([m, orthonormalize(new)], dim=1).contiguous()


def _gaussian_smooth(s: torch.Tensor, std: float) -> torch.Tensor:
    """1-D Gaussian filter as ``scipy.ndimage.gaussian_filter1d`` computes it by default:
    kernel radius ``int(4·std + 0.5)``, boundary mode "reflect" (the edge value repeated)."""
    n = s.numel()
    radius = int(4 * std + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / std) ** 2)
    kernel = kernel / kernel.sum()  # (2r + 1,)
    idx = torch.arange(-radius, n + radius) % (2 * n)  # symmetric reflection, period 2n
    idx = torch.where(idx >= n, 2 * n - 1 - idx, idx)
    padded = s[idx]  # (n + 2r,)
    return torch.nn.functional.conv1d(padded.view(1, 1, -1), kernel.view(1, 1, -1)).flatten()


def knee_index(sv: torch.Tensor, smooth_std: float = 10.0, trim: float = 0.015) -> int:
    """Start of the null space of a descending singular-value curve: its knee (NSP², Lu et al.
    2024, as their code computes it).

    With ≥ 128 values the curve is smoothed by a Gaussian of std ``smooth_std`` (index units,
    scipy's ``gaussian_filter1d``; ``0`` = none) and ``int(n · trim)`` second differences are
    dropped at each end; shorter curves are used raw and whole. The knee is the value after the
    largest second difference ``s[i] − 2 s[i+1] + s[i+2]``, read off the raw curve; the null space
    starts at the last index whose value is ≥ the knee's (ties stay outside it). Returns that
    index (the nullity is ``len(sv) − index``).
    """
    raw = sv.to(torch.float64).flatten()
    n = raw.numel()
    if n < 3:
        return n - 1 if n else 0
    s = raw
    drop = 0
    if n >= 128:
        if smooth_std > 0:
            s = _gaussian_smooth(raw, smooth_std)  # (n,)
        drop = int(n * trim)
    second = s[:-2] - 2 * s[1:-1] + s[2:]  # (n − 2,): entry j belongs to value j + 1
    valid = second[drop : second.numel() - drop] if drop else second
    knee_value = raw[int(torch.argmax(valid)) + drop + 1]
    return int(torch.nonzero(raw >= knee_value).max())


def null_space_knee(
    cov: torch.Tensor,
    smooth_std: float = 10.0,
    trim: float = 0.015,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """(d, k0) eigenvectors of ``cov`` from the knee of its spectrum on (``knee_index``); the
    decomposition runs in ``dtype`` (the knee search itself in float64)."""
    sv, u = eigh_desc(cov, dtype)
    return u[:, knee_index(sv, smooth_std, trim) :].contiguous()


def null_space_threshold(cov: torch.Tensor, gamma: float) -> torch.Tensor:
    """(d, k0) eigenvectors whose eigenvalue is ≤ ``gamma · λ_min`` (Adam-NSCL's rule, γ ≥ 1).

    ``λ_min`` is the smallest eigenvalue; with an exactly singular covariance it is 0 and only
    the exact null space (eigenvalues ≤ 1e-12 · λ_max) is kept.
    """
    if gamma < 1:
        raise ValueError(f"gamma must be >= 1, got {gamma}")
    sv, u = eigh_desc(cov)
    floor = max(float(sv[-1]) * gamma, 1e-12 * float(sv[0]))
    return u[:, sv <= floor].contiguous()


def projector(basis: torch.Tensor) -> torch.Tensor:
    """``U Uᵀ`` (d, d): the orthogonal projector onto span U when U is orthonormal."""
    u = basis.to(torch.float64)
    return u @ u.t()


def orthonormalize(basis: torch.Tensor, tol: float = 1e-10) -> torch.Tensor:
    """An orthonormal basis of span(basis) (SVD; directions below ``tol · σ_max`` dropped)."""
    u, s, _ = torch.linalg.svd(basis.to(torch.float64), full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return basis.new_zeros(basis.shape[0], 0, dtype=torch.float64)
    return u[:, s > tol * s[0]].contiguous()


def gradient_basis(samples: torch.Tensor, energy: float) -> torch.Tensor:
    """OGD's basis of one task's sampled gradients: the leading right singular vectors of
    ``G`` (N, n) (one flattened gradient per row) whose cumulative ``σ²`` first reaches
    ``energy`` of ``‖G‖²``, as the seed-002 framework's ``svd_basis`` counts them (the vector
    that crosses the fraction is included; a 1e-12 slack keeps ``energy = 1`` from missing the
    last direction to rounding). Directions with ``σ ≤ 1e-10 · σ_max`` are never kept.

    Returns:
        (n, k) orthonormal columns in float64 (k = 0 for an all-zero ``G``).
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    g = samples.detach().to(torch.float64).reshape(samples.shape[0], -1)  # (N, n)
    n = g.shape[1]
    if g.shape[0] == 0 or float(g.abs().max()) == 0.0:
        return g.new_zeros(n, 0)
    _, sv, vh = torch.linalg.svd(g, full_matrices=False)  # sv (r,), vh (r, n)
    sq = sv.pow(2)
    ratio = torch.cumsum(sq, 0) / sq.sum()
    k = min(int((ratio < energy - 1e-12).sum()) + 1, int((sv > 1e-10 * sv[0]).sum()))
    return vh[:k].t().contiguous()


def extend_basis(
    basis: torch.Tensor | None, new: torch.Tensor, max_columns: int | None = None
) -> torch.Tensor:
    """An orthonormal basis of ``span(basis) + span(new)``: ``basis``'s columns unchanged and
    first, then the part of ``new`` outside span(basis), orthonormalised (columns of
    ``new − U Uᵀ new`` shorter than 1e-6 — directions already covered — are dropped).

    Args:
        basis: (n, k) orthonormal, or None.
        new: (n, j) directions (unit columns).
        max_columns: at most this many columns in the result (the first new ones are kept:
            ``orthonormalize`` orders them by their residual's singular values).

    Returns:
        (n, k') float64 with k ≤ k' ≤ min(n, k + j, max_columns).
    """
    add = new.to(torch.float64)
    if basis is None:
        u = add.new_zeros(add.shape[0], 0)
    else:
        u = basis.to(device=add.device, dtype=torch.float64)
    room = add.shape[0] - u.shape[1]
    if max_columns is not None:
        room = min(room, max_columns - u.shape[1])
    if room <= 0 or add.shape[1] == 0:
        return u.contiguous()
    add = add - u @ (u.t() @ add)
    add = add - u @ (u.t() @ add)  # twice: one pass leaves ~ε·‖add‖ along U in float64
    add = add[:, add.norm(dim=0) > 1e-6]
    if add.shape[1] == 0:
        return u.contiguous()
    return torch.cat([u, orthonormalize(add)[:, :room]], dim=1).contiguous()


def remove_component(g: torch.Tensor, basis: torch.Tensor, side: Side = "right") -> torch.Tensor:
    """``g − g U Uᵀ`` (``side="right"``, g (out, d)) or ``g − U Uᵀ g`` (``"left"``, g (d, n)).

    The result has no component along span U on that side (U orthonormal). Same dtype as g;
    computed in float32 (float64 for float64 input): this runs every step, and float32 leaves a
    residual along U of ~1e-7 relative.
    """
    work = torch.float64 if g.dtype == torch.float64 else torch.float32
    u = basis.to(device=g.device, dtype=work)
    gw = g.to(work)
    out = gw - (gw @ u) @ u.t() if side == "right" else gw - u @ (u.t() @ gw)
    return out.to(g.dtype)


class ComplementProjection:
    """``g ↦ g − g U Uᵀ`` (or ``g − U Uᵀ g``) for one fixed basis, in the cheaper of two forms.

    Per step this costs ``4·n·d·k`` multiply-adds through the low-rank factors, or ``2·n·d²``
    through the dense complement ``I − U Uᵀ`` (d, d); the dense form is built when ``2k > d``
    (GPM's bases cover most of a layer's input space after a few tasks). Both are kept in the
    working dtype on the parameter's device, so a step converts nothing.
    """

    def __init__(
        self, basis: torch.Tensor, *, dtype: torch.dtype = torch.float32, device=None
    ) -> None:
        u = basis.to(device=device, dtype=torch.float64)
        d, k = u.shape
        self.dense: torch.Tensor | None = None
        self.factor: torch.Tensor | None = None
        if 2 * k > d:
            eye = torch.eye(d, dtype=torch.float64, device=u.device)
            self.dense = (eye - u @ u.t()).to(dtype)  # (d, d)
        else:
            self.factor = u.to(dtype)  # (d, k)

    def __call__(self, g: torch.Tensor, side: Side = "right") -> torch.Tensor:
        """The projected ``g`` (same dtype)."""
        work = self.dense if self.dense is not None else self.factor
        assert work is not None
        gw = g.to(work.dtype)
        if self.dense is not None:
            out = gw @ self.dense if side == "right" else self.dense @ gw
        else:
            u = self.factor
            assert u is not None
            out = gw - (gw @ u) @ u.t() if side == "right" else gw - u @ (u.t() @ gw)
        return out.to(g.dtype)


def relative_component(delta: torch.Tensor, basis: torch.Tensor, side: Side = "right") -> float:
    """``‖component of delta along span U‖ / ‖delta‖`` (0 for a zero delta; U orthonormal)."""
    d = delta.detach().to(torch.float64)
    u = orthonormalize(basis).to(d.device)
    along = d @ u if side == "right" else u.t() @ d
    norm = float(d.norm())
    return 0.0 if norm == 0.0 else float(along.norm()) / norm


class UpdateProjection:
    """Constrain an optimizer's update instead of its gradient.

    Call ``snapshot()`` before ``optimizer.step()`` (a method's ``after_backward``) and
    ``apply()`` after it (``after_step``): each parameter becomes ``θ_old + f(name, Δ)`` with
    ``Δ = θ_new − θ_old`` (Adam's scaled, decayed step), so the constraint holds exactly for the
    step actually taken.
    """

    def __init__(self, params: Iterable[tuple[str, nn.Parameter]]) -> None:
        self.params = list(params)
        self._before: dict[str, torch.Tensor] = {}

    def snapshot(self) -> None:
        self._before = {name: p.detach().clone() for name, p in self.params}

    @torch.no_grad()
    def apply(self, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
        """Replace each parameter's update Δ by ``fn(name, Δ)`` (same shape)."""
        if not self._before:
            raise RuntimeError("UpdateProjection.apply() called without a snapshot()")
        for name, p in self.params:
            before = self._before[name]
            delta = p.detach() - before
            p.copy_(before + fn(name, delta).to(p.dtype))
        self._before = {}
