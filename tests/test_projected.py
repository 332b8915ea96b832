"""The projection methods' shared plumbing: ``ProjectedParameters`` (gradient or update mode),
``statistics_pass`` and ``train_only``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clipcl.methods.projected import ProjectedParameters, statistics_pass, train_only


def _zero_first_column(_: str, t: torch.Tensor) -> torch.Tensor:
    out = t.clone()
    out[:, 0] = 0
    return out


def _layer() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def test_gradient_mode_edits_grad_and_leaves_the_step_alone() -> None:
    layer = _layer()
    seen: list[str] = []

    def fn(name: str, t: torch.Tensor) -> torch.Tensor:
        seen.append(name)
        return _zero_first_column(name, t)

    proj = ProjectedParameters([("w", layer.weight), ("b", layer.bias)], fn, "gradient")
    layer.weight.grad = torch.ones(2, 3)
    layer.bias.grad = None  # parameters without a gradient are skipped
    proj.after_backward()
    assert seen == ["w"]
    assert torch.equal(layer.weight.grad, torch.tensor([[0.0, 1, 1], [0, 1, 1]]))
    before = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)  # an optimizer step
    proj.after_step()
    assert torch.equal(layer.weight, before + 1.0)  # the update is not touched


def test_update_mode_replaces_the_delta_and_leaves_the_gradient() -> None:
    layer = _layer()
    proj = ProjectedParameters([("w", layer.weight)], _zero_first_column, "update")
    grad = torch.ones(2, 3)
    layer.weight.grad = grad.clone()
    before = layer.weight.detach().clone()
    proj.after_backward()  # snapshot
    assert torch.equal(layer.weight.grad, grad)
    with torch.no_grad():
        layer.weight.add_(torch.full((2, 3), 0.5))  # Adam's step, say
    proj.after_step()
    delta = layer.weight.detach() - before
    assert torch.equal(delta, torch.tensor([[0.0, 0.5, 0.5], [0, 0.5, 0.5]]))


def test_update_mode_needs_the_snapshot_and_modes_are_checked() -> None:
    layer = _layer()
    proj = ProjectedParameters([("w", layer.weight)], _zero_first_column, "update")
    with pytest.raises(RuntimeError, match="snapshot"):
        proj.after_step()
    with pytest.raises(ValueError, match="mode"):
        ProjectedParameters([("w", layer.weight)], _zero_first_column, "both")  # type: ignore[arg-type]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.drop = nn.Dropout(0.5)


def test_statistics_pass_is_eval_and_no_grad_and_restores_the_flags() -> None:
    net = _Net()
    net.train()
    net.drop.eval()  # a mixed state comes back as it was
    with statistics_pass(net):
        assert not net.training and not net.a.training and not net.drop.training
        assert not torch.is_grad_enabled()
        assert not net.a(torch.ones(1, 2)).requires_grad
    assert net.training and net.a.training and not net.drop.training
    assert torch.is_grad_enabled()


def test_statistics_pass_restores_train_mode_on_error() -> None:
    net = _Net().train()
    with pytest.raises(KeyError), statistics_pass(net):
        raise KeyError("boom")
    assert net.training and net.a.training and net.drop.training
    assert torch.is_grad_enabled()


def test_train_only_freezes_everything_else() -> None:
    net = _Net()
    train_only(net, [net.a.bias])
    assert not net.a.weight.requires_grad and net.a.bias.requires_grad
    train_only(net, [])
    assert not any(p.requires_grad for p in net.parameters())
