"""``ogd``: Orthogonal Gradient Descent (Farajtabar et al., AISTATS 2020) as the seed-002 research
framework runs it on CLIP (``--orthogonal-gradients N``), on clipcl's projection engine.

During task t the gradient of every tracked parameter is sampled at ``samples`` evenly spaced
steps (steps ``⌊i · steps / samples⌋``, i = 0..N−1; every step when N ≥ steps; the first N steps
when the task's length is not known), before any projection: the raw gradient of the loss. After
the task each parameter's samples ``G (N, n)`` (one flattened gradient per row) give the task's
directions — the leading right singular vectors of G whose cumulative ``σ²`` reaches ``energy``
(``gradient_basis``, the framework's ``svd_basis`` / ``convert_grad_to_basis``, 0.97) — and they
join that parameter's basis ``U`` of all earlier tasks, kept orthonormal (``extend_basis``: the
part outside span U, orthonormalised). From task t + 1 on every update of the parameter is
projected off span U: ``Δ ← Δ − U Uᵀ Δ`` on the flattened update.

Differences from the framework, each deliberate:

- The framework projects the *gradient* before AdamW; Adam's per-coordinate scaling and weight
  decay then move the step back into span U. clipcl projects the optimizer's *update*
  (``project_update: true``, exact: the step has no component along U, property tested);
  ``project_update: false`` projects the gradient as the framework does.
- The framework keeps one basis per earlier task and projects them one after the other, which
  is the projection off their union only when they are mutually orthogonal; clipcl keeps their
  union orthonormal, so one projection removes everything.
- Its sampling condition ``iteration % total_iterations // N == 0`` parses as
  ``(iteration % total) // N == 0`` and samples the first N iterations (and the last); clipcl
  spreads the N samples evenly over the task.
- ``tracked: block-weights`` is its ``should_track_layer`` (weights, not biases, whose name
  contains attn / mlp / ln); the default tracks every trainable parameter. Untracked trainable
  parameters train unprojected, as there.

Memory (n_p = elements of tracked parameter p, k_p its basis size, N = ``samples``):

- during a task, the samples: ``Σ n_p · N`` float32 on the CPU (also in a mid-task snapshot);
- the bases: ``Σ n_p · k_p`` float32 on the CPU, in the method state of every checkpoint, and
  once more on the device in the parameters' dtype while a task runs. ``k_p ≤ min(n_p, N · tasks,
  max_basis)``; at ``energy < 1`` a task usually adds fewer than N. For ViT-B/16's image tower
  (86 M weights, ``train_mode: image``) N = 10 is 3.4 GB of samples per task and up to 3.4 GB of
  basis per task; ``max_basis`` caps the total (directions past it are dropped and the later
  tasks' gradients are then only partly protected).

``project: false`` samples nothing and projects nothing: plain ``finetune`` on the same batches,
the OGD-Seq twin. Training is ``finetune``'s (train modes, AdamW and schedule of the worker).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from clipcl.methods.base import TaskContext
from clipcl.methods.configs import OGDConfig  # noqa: F401  (re-exported)
from clipcl.methods.finetune import Finetune
from clipcl.methods.projected import ProjectedParameters
from clipcl.methods.projection import ComplementProjection, extend_basis, gradient_basis
from clipcl.methods.registry import register_method


def sample_steps(steps: int | None, samples: int) -> frozenset[int]:
    """The 0-based steps of a ``steps``-step task whose gradients are sampled: ``⌊i·steps/n⌋``
    for i < n = min(N, steps) (distinct, evenly spaced: every step when N ≥ steps); the first
    N steps when ``steps`` is None."""
    if steps is None:
        return frozenset(range(samples))
    n = min(samples, steps)
    return frozenset(i * steps // n for i in range(n))


def block_weight(name: str) -> bool:
    """The framework's ``should_track_layer``: a weight (not a bias) of attention, MLP or a
    LayerNorm."""
    if name.endswith(".bias") or "weight" not in name:
        return False
    return "attn" in name or "mlp" in name or "ln" in name


@register_method
class OGD(Finetune):
    """Finetune whose later updates are kept orthogonal to earlier tasks' sampled gradients."""

    name = "ogd"
    Config = OGDConfig
    config: OGDConfig

    def __init__(self, config: OGDConfig) -> None:
        super().__init__(config)
        self.bases: dict[str, torch.Tensor] = {}  # parameter name → (n, k) float32 on the CPU
        self._tracked: list[tuple[str, nn.Parameter]] = []
        self._samples: dict[str, list[torch.Tensor]] = {}  # this task's (n,) float32, CPU
        self._at: frozenset[int] = frozenset()
        self._step = 0  # steps finished in this task
        self._active: dict[str, ComplementProjection] = {}
        self._projection: ProjectedParameters | None = None

    # ----- hooks -----
    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)  # the train mode's parameters (and the task's head)
        model = self.model
        assert model is not None
        cfg = self.config
        self._tracked = [
            (name, p)
            for name, p in model.named_parameters()
            if p.requires_grad and (cfg.tracked == "trainable" or block_weight(name))
        ]
        self._step = 0
        self._at = sample_steps(ctx.steps, cfg.samples) if cfg.project else frozenset()
        self._samples = {name: [] for name, _ in self._tracked} if cfg.project else {}
        self._active = {}
        if cfg.project:
            self._active = {
                name: ComplementProjection(self.bases[name], dtype=p.dtype, device=p.device)
                for name, p in self._tracked
                if name in self.bases and self.bases[name].shape[1] > 0
            }
        self._projection = None
        if self._active:
            self._projection = ProjectedParameters(
                ((name, p) for name, p in self._tracked if name in self._active),
                self._project,
                "update" if cfg.project_update else "gradient",
            )

    def _project(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """``t − U Uᵀ t`` on the flattened gradient or update of parameter ``name``."""
        return self._active[name](t.reshape(1, -1)).reshape(t.shape)

    @torch.no_grad()
    def after_backward(self) -> None:
        if self._step in self._at:  # the raw gradient, before it is projected
            for name, p in self._tracked:
                if p.grad is not None:
                    self._samples[name].append(p.grad.detach().flatten().to("cpu", torch.float32))
        if self._projection is not None:
            self._projection.after_backward()

    def after_step(self) -> None:
        if self._projection is not None:
            self._projection.after_step()
        self._step += 1

    def after_task(self, ctx: TaskContext, loader: DataLoader) -> None:
        cfg = self.config
        for name, grads in self._samples.items():
            if not grads:
                continue
            new = gradient_basis(torch.stack(grads), cfg.energy)  # (n, j)
            old = self.bases.get(name)
            basis = extend_basis(old, new, cfg.max_basis)
            self.bases[name] = basis.to("cpu", torch.float32)
        self._samples, self._active, self._projection = {}, {}, None

    # ----- state -----
    def state_dict(self) -> dict[str, Any]:
        return {"bases": {name: basis.clone() for name, basis in self.bases.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        model = self.model
        assert model is not None
        sizes = {name: p.numel() for name, p in model.named_parameters()}
        bases = dict(state.get("bases", {}))
        unknown = sorted(set(bases) - set(sizes))
        if unknown:
            raise ValueError(f"ogd state: bases for parameters the model does not have: {unknown}")
        for name, basis in bases.items():
            if basis.ndim != 2 or basis.shape[0] != sizes[name]:
                raise ValueError(f"ogd state: basis of {name} has shape {tuple(basis.shape)}")
        self.bases = {n: torch.as_tensor(b).to("cpu", torch.float32) for n, b in bases.items()}

    def task_state_dict(self) -> dict[str, Any]:
        """The steps taken and the gradients sampled so far in this task."""
        return {
            "step": self._step,
            "samples": {name: [g.clone() for g in grads] for name, grads in self._samples.items()},
        }

    def load_task_state_dict(self, state: dict[str, Any]) -> None:
        samples = dict(state["samples"])
        if set(samples) != set(self._samples):
            raise ValueError("ogd task state: the sampled parameters differ from this task's")
        sizes = {name: p.numel() for name, p in self._tracked}
        for name, grads in samples.items():
            if any(tuple(g.shape) != (sizes[name],) for g in grads):
                raise ValueError(f"ogd task state: a sampled gradient of {name} has another size")
        self._samples = {n: [g.to("cpu", torch.float32) for g in gs] for n, gs in samples.items()}
        self._step = int(state["step"])

    def basis_sizes(self) -> dict[str, tuple[int, int]]:
        """(k, n) per parameter with a basis: directions kept out of its n elements."""
        return {name: (int(b.shape[1]), int(b.shape[0])) for name, b in self.bases.items()}
