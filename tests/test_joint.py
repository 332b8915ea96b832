"""joint: each step also trains on the other tasks in scope."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clipcl.data import get_benchmark
from clipcl.methods import TaskContext, create_method
from clipcl.models import ModelConfig, build_model
from clipcl.workers import run_chain
from tests.helpers import tiny_spec


def _others(scope: str, index: int) -> list[str]:
    model = build_model(ModelConfig(arch="tiny"), torch.device("cpu"))
    method = create_method("joint", {"scope": scope, "batch_size": 8})
    method.setup(model)
    bench = get_benchmark("smoke")
    method.before_task(TaskContext(index=index, task=bench.tasks[index], benchmark=bench, seed=0))
    return [t.name for t, _ in method._others]


def test_scope_selects_the_other_tasks():
    names = get_benchmark("smoke").task_names
    assert _others("seen", 0) == []
    assert _others("seen", 2) == names[:2]
    assert _others("all", 1) == [names[0], names[2]]


def test_joint_forgets_less_than_finetune(tmp_path: Path):
    """Trained on the earlier tasks too, the last model keeps them better than finetune."""
    kw = {"iterations": 30}
    ft = run_chain(tiny_spec("finetune", **kw), tmp_path / "ft")
    joint = run_chain(tiny_spec("joint", batch_size=32, **kw), tmp_path / "joint")
    last_ft, last_joint = ft.matrix[-1, :2], joint.matrix[-1, :2]  # tasks 0 and 1 after task 2
    assert np.mean(last_joint) > np.mean(last_ft), (last_joint, last_ft)
    # in scope "seen", task 0 is trained alone: its first row equals finetune's
    np.testing.assert_array_equal(joint.matrix[0], ft.matrix[0])
