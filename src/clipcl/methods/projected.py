"""The model-side plumbing the projection methods (GPM, NSP², PGP, DMNSP) share; the arithmetic
of each paper stays in its own file and the linear algebra in ``methods.projection``.

- ``ProjectedParameters``: applies a per-parameter projection ``fn(name, tensor)`` either to the
  gradients (``mode="gradient"``: ``.grad ← fn(name, .grad)`` in ``after_backward``) or to the
  optimizer's update (``mode="update"``: snapshot in ``after_backward``, before the step, and
  ``θ ← θ_old + fn(name, Δ)`` in ``after_step`` via ``UpdateProjection``). A method forwards its
  two hooks to it.
- ``statistics_pass(model)``: the context of an after-task statistics pass — eval mode (no
  dropout) and ``no_grad``; the model's training flags are restored on exit, also on error.
- ``train_only(model, params)``: freeze the whole model, then let exactly ``params`` train.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import torch
from torch import nn

from clipcl.methods.projection import UpdateProjection

ProjectFn = Callable[[str, torch.Tensor], torch.Tensor]
Mode = Literal["gradient", "update"]


class ProjectedParameters:
    """Constrain the change of named parameters by ``fn``, on their gradients or their updates.

    Args:
        params: (name, parameter) pairs; ``fn`` receives the name (the method's own key).
        fn: maps a gradient or an update (same shape as the parameter) to its projection.
        mode: ``"gradient"`` edits ``.grad`` in ``after_backward``; ``"update"`` replaces the
            optimizer's step ``Δ = θ_new − θ_old`` after it (exact with Adam(W), whose per-
            coordinate scaling and weight decay move a projected gradient off the subspace).
    """

    def __init__(self, params: Iterable[tuple[str, nn.Parameter]], fn: ProjectFn, mode: Mode):
        if mode not in ("gradient", "update"):
            raise ValueError(f"mode must be 'gradient' or 'update', got {mode!r}")
        self.params = list(params)
        self.fn = fn
        self.mode: Mode = mode
        self._update = UpdateProjection(self.params) if mode == "update" else None

    @torch.no_grad()
    def after_backward(self) -> None:
        """Gradient mode: project each ``.grad`` in place (parameters without one are skipped).
        Update mode: remember the parameters before the optimizer step."""
        if self._update is not None:
            self._update.snapshot()
            return
        for name, p in self.params:
            if p.grad is not None:
                p.grad.copy_(self.fn(name, p.grad))

    def after_step(self) -> None:
        """Update mode: replace each parameter's update Δ by ``fn(name, Δ)``; else nothing."""
        if self._update is not None:
            self._update.apply(self.fn)


@contextlib.contextmanager
def statistics_pass(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``no_grad`` for the block; every module's training flag is restored after."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in flags.items():
            module.training = training


def train_only(model: nn.Module, params: Iterable[nn.Parameter]) -> None:
    """``requires_grad`` False for every parameter of ``model``, then True for ``params``."""
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
