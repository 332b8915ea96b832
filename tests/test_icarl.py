"""``icarl``: herding order, budget re-balancing, state round trip, distillation, chain resume."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch.utils.data import DataLoader

from clipcl.data import get_benchmark
from clipcl.methods import StepOutputs, TaskContext, create_method, method_config
from clipcl.methods.icarl import Icarl, IcarlConfig, allocate, distillation, herding
from clipcl.models import ModelConfig, build_model
from clipcl.results.records import RunDir
from clipcl.workers import run_chain
from tests.helpers import icarl_chain_spec


def _icarl(**knobs) -> Icarl:
    method = create_method("icarl", knobs)
    assert isinstance(method, Icarl)
    return method


@pytest.fixture(scope="module")
def smoke():
    return get_benchmark("smoke")


def _tiny_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="tiny", pretrained="clipcl-tiny"), torch.device("cpu"))


# ----- herding and the budget -----
def test_herding_follows_the_running_mean_not_the_distance_to_the_mean() -> None:
    # 1-D values 0, 4, 5, 12 on the first axis of 3-D points; mean 5.25.
    # k=1: |5 - 5.25| is smallest → 5. k=2: running sum 5; (5+4)/2 = 4.5 is closest → 4.
    # k=3: sum 9; (9+12)/3 = 7 (off by 1.75) beats (9+0)/3 = 3 (off by 2.25) → 12, although 0
    # is nearer to the mean than 12 is. k=4: 0.
    x = torch.tensor([[0.0, 1, 1], [4, 1, 1], [5, 1, 1], [12, 1, 1]])
    assert herding(x, 4).tolist() == [2, 1, 3, 0]
    assert herding(x, 2).tolist() == [2, 1]  # a shorter budget is a prefix
    assert herding(x, 10).tolist() == [2, 1, 3, 0]  # never more than there are


def test_herding_2d_with_a_tie_takes_the_lowest_index() -> None:
    # Mean (0.75, 0.75). k=1: (1,1) is nearest. k=2: (0,0) makes the mean (0.5,0.5), off by
    # 0.125 vs 0.625 for (2,0)/(0,2). k=3: (2,0) and (0,2) tie → the lower index (1).
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert herding(x, 4).tolist() == [3, 0, 1, 2]


def test_allocate_water_fills_the_budget() -> None:
    assert allocate([48] * 4, 20) == [5, 5, 5, 5]
    assert allocate([5] * 4 + [48] * 4, 20) == [3, 3, 3, 3, 2, 2, 2, 2]
    assert allocate([3] * 4 + [2] * 4 + [48] * 4, 20) == [2] * 8 + [1] * 4
    # A class with 1 image keeps it; the rest is shared again, remainder to the earliest.
    assert allocate([1, 10, 10], 12) == [1, 6, 5]
    assert allocate([2, 3], 100) == [2, 3]  # budget larger than the data
    assert allocate([4, 4], 0) == [0, 0]


def test_rebalancing_across_tasks_truncates_herding_order(smoke) -> None:
    model = _tiny_model()
    method = _icarl(memory_size=20)
    method.setup(model)
    expected = [
        [5] * 4,  # 20 over 4 classes
        [3] * 4 + [2] * 4,  # 20 over 8 classes, remainder to the earliest
        [2] * 8 + [1] * 4,  # 20 over 12 classes
    ]
    previous: dict[tuple[int, int], list[int]] = {}
    for k, task in enumerate(smoke.tasks):
        ctx = TaskContext(index=k, task=task, benchmark=smoke, seed=0)
        method.before_task(ctx)
        method.after_task(ctx, DataLoader(task.train, batch_size=64))
        counts = method.exemplar_counts()
        assert [counts[key] for key in sorted(counts)] == expected[k]
        assert len(method.ex_index) == sum(expected[k]) <= 20
        groups = {(t, c): idx.tolist() for t, c, idx in method._groups()}
        for key, idx in previous.items():  # old classes: a prefix of their herding order
            assert idx[: len(groups[key])] == groups[key]
        for (t, c), idx in groups.items():  # each exemplar belongs to its class
            assert all(int(smoke.tasks[t].train[i][1]) == c for i in idx)
        previous = groups
    # The newest task's exemplars are herding on the model's features of each class.
    with torch.no_grad():
        imgs = smoke.tasks[2].train.images[smoke.tasks[2].train.labels == 3]  # (48, 3, 32, 32)
        feats = model.encode_image(model.preprocess(imgs))
    first = int(torch.nonzero(smoke.tasks[2].train.labels == 3)[0])
    assert groups[(2, 3)] == [first + int(herding(feats, 1)[0])]


def test_state_dict_round_trip_through_a_checkpoint(smoke) -> None:
    model = _tiny_model()
    method = _icarl(memory_size=12)
    method.setup(model)
    ctx = TaskContext(index=0, task=smoke.tasks[0], benchmark=smoke, seed=0)
    method.before_task(ctx)
    method.after_task(ctx, DataLoader(smoke.tasks[0].train, batch_size=32))
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert all(state[k].dtype == torch.long and state[k].ndim == 1 for k in ("task", "index"))
    other = _icarl(memory_size=12)
    other.load_state_dict(state)
    for name in ("ex_task", "ex_index", "ex_label"):
        assert torch.equal(getattr(other, name), getattr(method, name))
    assert other.train_batch_size == 32
    assert other.exemplar_counts() == {(0, c): 3 for c in range(4)}


def test_config_is_strict_with_published_defaults() -> None:
    cfg = method_config("icarl", {})
    assert isinstance(cfg, IcarlConfig)
    assert (cfg.memory_size, cfg.distill_weight, cfg.temperature) == (10_000, 1.0, 2.0)
    assert (cfg.train_mode, cfg.batch_size, cfg.teacher) == ("whole", None, "previous")
    with pytest.raises(ValidationError):
        method_config("icarl", {"memory": 5})
    with pytest.raises(ValidationError):
        method_config("icarl", {"train_mode": "fc"})


# ----- distillation -----
def test_distillation_matches_a_hand_computed_value() -> None:
    # Row 1 (2 classes): teacher uniform; student z/τ = (0, ln 3) → q = (1/4, 3/4);
    # CE = ½ ln 4 + ½ ln(4/3); τ² · CE = 4 ln 4 − 2 ln 3.
    tau = 2.0
    one = distillation(torch.zeros(1, 2), torch.tensor([[0.0, 2 * math.log(3)]]), tau)
    assert float(one) == pytest.approx(4 * math.log(4) - 2 * math.log(3), rel=1e-6)
    # Row 2 (3 classes): both uniform → CE = ln 3; τ² · CE = 4 ln 3. Mean of the two rows.
    two = distillation(torch.zeros(1, 3), torch.full((1, 3), 5.0), tau)
    assert float(two) == pytest.approx(4 * math.log(3), rel=1e-6)
    assert float((one + two) / 2) == pytest.approx(2 * math.log(4) + math.log(3), rel=1e-6)


def test_extra_loss_is_the_teacher_entropy_when_student_equals_teacher(smoke) -> None:
    model = _tiny_model()
    method = _icarl(memory_size=16, batch_size=10, distill_weight=0.5)
    method.setup(model)
    dummy = StepOutputs(torch.zeros(1, 4), torch.zeros(1, 64))
    batch = (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, dtype=torch.long))
    for k in range(2):
        ctx = TaskContext(index=k, task=smoke.tasks[k], benchmark=smoke, seed=0)
        torch.manual_seed(k)
        method.before_task(ctx)
        if k == 0:
            assert method.extra_loss(batch, dummy) is None  # nothing remembered yet
            method.after_task(ctx, DataLoader(smoke.tasks[0].train, batch_size=32))
    gen_state = method._gen.get_state()
    loss = method.extra_loss(batch, dummy)
    assert loss is not None and loss.requires_grad
    loss = loss.detach()
    # Recompute by hand: the same 10 exemplars, teacher == student → τ² · mean entropy.
    gen = torch.Generator()
    gen.set_state(gen_state)
    pick = torch.randperm(16, generator=gen)[:10]
    idx = method.ex_index[pick]
    imgs = torch.stack([smoke.tasks[0].train[int(i)][0] for i in idx])
    with torch.no_grad():
        task = smoke.tasks[0]
        text = model.class_embeddings(task.class_names, task.templates[:1])  # (4, D)
        z = model.logit_scale() * model.encode_image(model.preprocess(imgs)) @ text.t()
        p = torch.softmax(z / 2, dim=1)
        entropy = -(p * torch.log(p)).sum(dim=1).mean()
    assert float(loss) == pytest.approx(0.5 * 4 * float(entropy), rel=1e-4)


# ----- a whole chain -----
def test_chain_distills_its_exemplars_and_checkpoints_them(tmp_path: Path, resume_runs) -> None:
    # The resume after task 1 (same matrix, weights, exemplars) is in test_resume_all_methods.py.
    runs = resume_runs("icarl")
    full = runs.full
    assert full.matrix.shape == (3, 3) and not np.isnan(full.matrix).any()
    # Without the exemplars the resumed task would have trained like a chain without KD.
    plain = run_chain(icarl_chain_spec(distill_weight=0.0), tmp_path / "plain")
    np.testing.assert_array_equal(plain.matrix[0], full.matrix[0])
    assert not np.array_equal(plain.matrix[2], full.matrix[2])
    records = RunDir(runs.full_dir)
    ckpt = torch.load(records.checkpoint_path(2), weights_only=True)
    state = ckpt["method"]
    assert len(state["index"]) == 24  # 24 over 12 classes: 2 each
    assert {k: v.dtype for k, v in state.items() if torch.is_tensor(v)} == dict.fromkeys(
        ("task", "index", "label"), torch.long
    )
