"""``dmnsp``: DMNSP (Kang et al., ICCV 2025) — adapters in both towers, multi-layer null-space
projection of the visual adapters' gradients with a dynamic coefficient λ (METHODS.md §3).

Owns the method: adapters (``clipcl.models.adapters``) are the only trainable parameters; after
each task a per-visual-layer basis ``V_i`` is built from the adapter outputs of one batch; from
task 1 on, the visual adapters' weight gradients are projected; text adapters never are.
The linear algebra (covariance, eigendecomposition, projectors) is ``methods.projection``;
the hook plumbing (gradient or update projection, statistics pass) is ``methods.projected``.

What the authors' code does (``RL-VIG/DMNSP@4c1c2f1``, ``continual_clip/models.py``), and here:

- **Basis** (after every task, the last one included): ONE shuffled batch of 128 training images;
  per visual layer ``i`` the uncentred covariance ``C_i = Σ AᵀA`` of the adapter output ``A``
  (the 0.1-scaled ``adapt_x``, summed over images and tokens); its singular vectors except the
  top ``TOP_SELECT = 1`` are appended to ``V_i`` with no re-orthogonalisation, so after t tasks
  ``V_i`` has ``t·(D−1)`` columns and ``V_i V_iᵀ ≈ t·I − Σ_s u_s u_sᵀ`` is not a projector. The
  original forwards that batch in training mode with the random-crop training transform; here it
  is eval mode (no dropout), unaugmented, as every clipcl statistic is.
- **λ table** (tasks t ≥ 1): from the first training batch's forward (training mode, before any
  update of the task): ``û_j`` = top singular vector of layer j's ``C``; for each stored basis
  ``V_k``, ``d_jk`` = mean of the ``int(m_k · TOP_K_RATIO)`` largest **signed** cosines (not
  absolute values; ``m_k`` = number of columns of ``V_k``, so 76 of 767 for ViT-B-16 after task
  0) between ``û_j`` and the columns of ``V_k``; ``λ_jk = LAMBDA_SCALE · exp(−d_jk)``. Signs of
  singular vectors are arbitrary, in the original as here. An empty selection (``m_k·ratio <
  1``, NaN in the original) counts the single largest cosine.
- **Projection** (every step of tasks t ≥ 1, visual adapter *weights* only; their biases and all
  text adapters train unprojected): for the layer-ℓ adapter, ``i = 0..L−1`` in turn,
  ``G_down ← λ_ℓi · G_down V_i V_iᵀ`` and ``G_up ← λ_ℓi · V_i V_iᵀ G_up``, i.e.
  ``G_down ← (Π_i λ_ℓi) G_down P_0⋯P_{L−1}``, ``G_up ← (Π_i λ_ℓi) P_{L−1}⋯P_0 G_up``. The
  product ``Q = P_0⋯P_{L−1}`` is the same for every layer: computed once per task.
- Optimisation: one AdamW (lr 1e-3, wd 0) over all adapters, CE over the current task's classes
  with label smoothing 0 (``ls: 0.0`` in every shipped config), 4 epochs, batch 128, 30 warm-up
  steps then cosine; prompt "a bad photo of a {}.".

Consequences worth knowing: AdamW is invariant to the constant factor ``Π λ`` (≈ 30^L), so λ
has ≈ no effect; the faithful product also scales gradients by ≈ ``t^L`` (a scale AdamW absorbs
too, until its fp32 second moment ``g²`` overflows: then the step of that weight is 0). With
``TOP_SELECT = 1`` only ~one direction per layer and task is attenuated, and that top direction
is mostly the adapter's own ``b_up`` (a constant offset of every token), which trains unprojected.

Named corrected variants:

- ``orthonormal: true``: per layer keep the orthonormalised union ``T_i`` of every task's
  discarded top directions; ``V_i`` is its orthogonal complement, so ``V_i V_iᵀ`` is the
  projector onto the intersection of the tasks' retained spaces (an orthonormalised union of the
  retained ``V``'s themselves would span all of R^D after two tasks). The multi-layer product is
  replaced by its limit (alternating projections, von Neumann) — the paper's "common subspace of
  multiple null spaces": the projector ``I − T Tᵀ``,
  ``T`` = orthonormalised union of all layers' ``T_i`` — a product of different projectors is no
  projector and only honours the last factor's directions.
- ``project_update: true``: constrain AdamW's update after the step instead of the gradient
  (``Δ ← c_ℓ Δ Q``, ``Δ ← c_ℓ Qᵀ Δ``) with ``c_ℓ = Π_i (λ_ℓi / LAMBDA_SCALE) = exp(−Σ_i d_ℓi)``:
  the dynamic part of λ. Multiplying an update by the raw ``Π λ ≈ 30^L`` would diverge.

``project: false`` is Adapter-Seq: the same adapters trained sequentially, no statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence, Sized
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate

from clipcl.errors import ClipclError
from clipcl.methods.base import Method, TaskContext
from clipcl.methods.capture import capture
from clipcl.methods.configs import (  # noqa: F401  (re-exported)
    DMNSP_TRAIN_DEFAULTS,
    DMNSPConfig,
)
from clipcl.methods.projected import ProjectedParameters, statistics_pass, train_only
from clipcl.methods.projection import accumulate_covariance, eigh_desc, orthonormalize, projector
from clipcl.methods.registry import register_method
from clipcl.models import ClipModel
from clipcl.models.adapters import (
    Adapter,
    adapter_parameters,
    adapters_of,
    add_adapters,
    transformer_blocks,
)


def top_cosine_distances(
    tops: torch.Tensor, bases: Sequence[torch.Tensor], top_k_ratio: float
) -> torch.Tensor:
    """``d[j, k]``: mean of the ``int(m_k · ratio)`` (≥ 1) largest signed cosines between
    ``tops[j]`` and the columns of ``bases[k]`` (D, m_k). ``tops`` (L, D) → (L, K) float64.
    An empty basis (``orthonormal`` once a layer's protected directions fill R^D) gives 0."""
    u = F.normalize(tops.to(torch.float64), dim=1)  # (L, D)
    out = torch.zeros(u.shape[0], len(bases), dtype=torch.float64)
    for k, basis in enumerate(bases):
        if basis.shape[1] == 0:
            continue
        cols = F.normalize(basis.to(torch.float64), dim=0)  # (D, m_k) unit columns
        count = max(1, int(cols.shape[1] * top_k_ratio))
        cosines = u @ cols  # (L, m_k)
        out[:, k] = cosines.topk(count, dim=1).values.mean(dim=1)
    return out


def lambda_table(
    tops: torch.Tensor, bases: Sequence[torch.Tensor], top_k_ratio: float, scale: float
) -> torch.Tensor:
    """DMNSP's dynamic coefficients ``λ[j, k] = scale · exp(−d[j, k])`` (L, K) float64."""
    return scale * torch.exp(-top_cosine_distances(tops, bases, top_k_ratio))


def basis_product(bases: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Q = V_0V_0ᵀ · V_1V_1ᵀ ⋯ V_{L−1}V_{L−1}ᵀ`` (D, D) float64 — DMNSP's multi-layer product."""
    q = torch.eye(bases[0].shape[0], dtype=torch.float64)
    for basis in bases:
        q = q @ projector(basis)  # (D, D)
    return q


def complement(protected: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (D, D − r) of the complement of span ``protected`` (D, r), orthonormal."""
    _, vecs = eigh_desc(projector(protected))  # eigenvalues 1 (r of them), then 0
    return vecs[:, protected.shape[1] :].contiguous()


#: Largest |g| whose square is finite in float32 (√3.4e38): beyond it Adam's step becomes 0.
FP32_SQRT_MAX = 1.8e19


@register_method
class DMNSP(Method):
    """Adapters in both towers; visual adapter gradients projected by the multi-layer product."""

    name = "dmnsp"
    Config = DMNSPConfig
    config: DMNSPConfig
    train_defaults: ClassVar[dict[str, Any]] = DMNSP_TRAIN_DEFAULTS

    def check_model(self, model: ClipModel) -> None:
        for tower in ("image", "text"):
            transformer_blocks(model.clip, tower)

    def setup(self, model: ClipModel) -> None:
        super().setup(model)
        cfg = self.config
        if not any(adapters_of(model.clip).values()):
            add_adapters(
                model.clip, bottleneck=cfg.bottleneck, scale=cfg.scale, dropout=cfg.dropout
            )
        found = adapters_of(model.clip)
        self.visual: tuple[Adapter, ...] = found["image"]
        self.text: tuple[Adapter, ...] = found["text"]
        width = self.visual[0].width
        if cfg.top_select >= width:
            raise ClipclError(f"dmnsp: top_select {cfg.top_select} must be < width {width}")
        self.tasks_seen = 0
        self.bases: list[torch.Tensor] = []  # per visual layer: V_i (D, m_i)
        self.protected: list[torch.Tensor] = []  # orthonormal mode: T_i (D, r_i)
        self.lambdas: torch.Tensor | None = None  # (L, L) λ of the current task
        self._q: torch.Tensor | None = None  # (D, D) projection of the current task
        self._factors: list[float] = []  # per visual layer: the multiplier c_ℓ
        self._first: dict[int, torch.Tensor] = {}  # first-batch covariances by layer
        self._arming = contextlib.ExitStack()
        self._projection: ProjectedParameters | None = None  # armed at the task's first step
        # Our own names for the visual adapters and their projected weights (capture and
        # UpdateProjection take names): looked up, never parsed.
        self._layer_of = {f"image.{i}": i for i in range(len(self.visual))}
        self._targets = {
            f"image.{i}.{kind}": (i, kind)
            for i in range(len(self.visual))
            for kind in ("down", "up")
        }
        self._freeze()

    def _freeze(self) -> None:
        assert self.model is not None
        train_only(self.model, adapter_parameters(adapters_of(self.model.clip)))

    def _projecting(self) -> bool:
        return self.config.project and bool(self.bases)

    # ----- task loop -----
    def before_task(self, ctx: TaskContext) -> None:
        self._freeze()
        self._q, self.lambdas, self._factors, self._projection = None, None, [], None
        if not self._projecting():
            return
        if self.config.orthonormal:
            keep = complement(orthonormalize(torch.cat(self.protected, dim=1)))
            q = projector(keep)  # (D, D) onto the intersection of every retained space
        else:
            q = basis_product(self.bases)  # (D, D) P_0 ⋯ P_{L−1}
        self._q = q.to(self.visual[0].up.weight)
        self._first = {}
        self._arming.enter_context(capture(self._named_visual(), self._record_first, kind="output"))

    def _named_visual(self) -> dict[str, Adapter]:
        return {name: self.visual[i] for name, i in self._layer_of.items()}

    def _record_first(self, name: str, output: torch.Tensor) -> None:
        layer = self._layer_of[name]
        if layer not in self._first:
            self._first[layer] = accumulate_covariance(None, output).cpu()  # (D, D)

    def _start_task_projection(self) -> None:
        """At the first step: the λ table from the first batch, then the layer multipliers."""
        self._arming.close()
        if len(self._first) != len(self.visual):
            raise RuntimeError("dmnsp: the first training batch did not reach every adapter")
        tops = torch.stack([eigh_desc(self._first[j])[1][:, 0] for j in range(len(self.visual))])
        self.lambdas = lambda_table(
            tops, self.bases, self.config.top_k_ratio, self.config.lambda_scale
        )
        self._first = {}
        self._arm_projection()

    def _arm_projection(self) -> None:
        """The layer multipliers from ``lambdas``, and the projection that uses them."""
        assert self.lambdas is not None
        rel = (
            self.lambdas / self.config.lambda_scale if self.config.project_update else self.lambdas
        )
        self._factors = [float(f) for f in rel.prod(dim=1)]  # c_ℓ = Π_i λ_ℓi (or its dynamic part)
        if self.config.project_update:
            self._projection = ProjectedParameters(
                self._projected_weights(),
                lambda name, delta: self._project(*self._targets[name], delta),
                "update",
            )
        else:
            self._projection = ProjectedParameters(
                self._projected_weights(), self._project_gradient, "gradient"
            )

    def _projected_weights(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The visual adapters' weights (biases train unprojected), by our own names."""
        return [(name, self._weight(*target)) for name, target in self._targets.items()]

    def _weight(self, layer: int, kind: str) -> torch.nn.Parameter:
        a = self.visual[layer]
        return cast(torch.nn.Parameter, a.down.weight if kind == "down" else a.up.weight)

    def _project(self, layer: int, kind: str, g: torch.Tensor) -> torch.Tensor:
        """``c_ℓ · G Q`` for W_down (out, D), ``c_ℓ · Qᵀ G`` for W_up (D, bottleneck)."""
        assert self._q is not None
        q = self._q.to(g.dtype)
        return self._factors[layer] * (g @ q if kind == "down" else q.t() @ g)

    def _project_gradient(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        projected = self._project(*self._targets[name], grad)
        self._check_scale(name, projected)
        return projected

    def after_backward(self) -> None:
        if self._q is None:
            return
        if self.lambdas is None:
            self._start_task_projection()
        assert self._projection is not None
        self._projection.after_backward()

    def _check_scale(self, name: str, grad: torch.Tensor) -> None:
        """Refuse a faithful gradient whose square overflows AdamW's fp32 second moment.

        The original silently stops updating such a weight (``m / √inf = 0``); a benchmark run
        should not, so the chain stops with the cause and the corrected options instead.
        """
        peak = float(grad.detach().abs().max()) if grad.numel() else 0.0
        if not peak < FP32_SQRT_MAX:
            raise ClipclError(
                f"dmnsp: the projected gradient of {name} reached {peak:.3g} at task "
                f"{self.tasks_seen} (the faithful scale Π λ · P_0⋯P_{{L−1}} grows with the "
                "number of tasks and layers); its square overflows AdamW's float32 second "
                "moment, which would freeze the weight. Use project_update: true (and "
                "orthonormal: true) for long task sequences."
            )

    def after_step(self) -> None:
        if self._q is not None and self._projection is not None:
            self._projection.after_step()

    def task_state_dict(self) -> dict[str, Any]:
        """The λ table of this task, once its first step has made it."""
        return {} if self.lambdas is None else {"lambdas": self.lambdas.clone()}

    def load_task_state_dict(self, state: dict[str, Any]) -> None:
        lambdas = state.get("lambdas")
        if lambdas is None:
            return  # stopped before the first step: that step still makes the table
        if self._q is None:
            raise ValueError("dmnsp task state: a λ table for a task that projects nothing")
        if lambdas.shape[0] != len(self.visual):
            raise ValueError(f"dmnsp task state: λ table of shape {tuple(lambdas.shape)}")
        self._arming.close()
        self._first = {}
        self.lambdas = lambdas.cpu()  # as lambda_table makes it (from CPU covariances)
        self._arm_projection()

    def after_task(self, ctx: TaskContext, loader: DataLoader) -> None:
        self._arming.close()
        self._projection = None
        if self.config.project:
            self._add_task_bases(self._stats_covariances(ctx))
        self.tasks_seen += 1

    def _stats_covariances(self, ctx: TaskContext) -> list[torch.Tensor]:
        """Per visual layer ``Σ AᵀA`` of the adapter outputs on ONE random training batch."""
        assert self.model is not None
        data = ctx.task.train
        count = len(cast(Sized, data))
        idx = torch.randperm(count, generator=ctx.generator("stats"))[
            : self.config.stats_batch_size
        ]
        images, _ = default_collate([data[int(i)] for i in idx])
        covs: dict[int, torch.Tensor] = {}

        def record(name: str, output: torch.Tensor) -> None:
            covs[self._layer_of[name]] = accumulate_covariance(None, output).cpu()  # (D, D)

        with statistics_pass(self.model), capture(self._named_visual(), record, kind="output"):
            self.model.encode_image(self.model.preprocess(images))  # (B, D')
        return [covs[i] for i in range(len(self.visual))]

    def _add_task_bases(self, covs: list[torch.Tensor]) -> None:
        k = self.config.top_select
        for i, cov in enumerate(covs):
            _, vecs = eigh_desc(cov)  # (D, D) descending
            if self.config.orthonormal:
                old = self.protected[i] if i < len(self.protected) else vecs[:, :0]
                union = orthonormalize(torch.cat([old, vecs[:, :k]], dim=1))  # (D, r)
                self._set(self.protected, i, union)
                self._set(self.bases, i, complement(union).float())
            else:
                new = vecs[:, k:].float()  # (D, D − k) all but the top directions
                old = self.bases[i] if i < len(self.bases) else new[:, :0]
                self._set(self.bases, i, torch.cat([old, new], dim=1))

    @staticmethod
    def _set(store: list[torch.Tensor], i: int, value: torch.Tensor) -> None:
        if i < len(store):
            store[i] = value
        else:
            store.append(value)

    # ----- resume -----
    def state_dict(self) -> dict[str, Any]:
        return {
            "tasks_seen": self.tasks_seen,
            "bases": [b.clone() for b in self.bases],
            "protected": [t.clone() for t in self.protected],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tasks_seen = int(state["tasks_seen"])
        self.bases = [torch.as_tensor(b).cpu() for b in state["bases"]]
        self.protected = [torch.as_tensor(t).cpu() for t in state["protected"]]
        if self.bases and len(self.bases) != len(self.visual):
            raise ValueError(
                f"dmnsp state: {len(self.bases)} bases for {len(self.visual)} visual layers"
            )
