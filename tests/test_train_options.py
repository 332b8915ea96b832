"""The training loop's per-method options: optimizers, schedules, the first task's learning rate,
method train defaults, the ``classifier`` hook (training and evaluation) and stable chain ids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipcl.data import benchmark_info, get_benchmark
from clipcl.errors import ClipclError
from clipcl.methods import Method, TaskContext
from clipcl.models import build_model
from clipcl.results.records import ZEROSHOT
from clipcl.schedules import constant, multistep
from clipcl.workers.evaluate import evaluate
from clipcl.workers.spec import ChainSpec, TrainConfig
from clipcl.workers.train import lr_at, make_loader, make_optimizer, train_task
from tests.helpers import tiny_spec


def test_multistep_and_constant_schedules() -> None:
    lrs = [multistep(s, 1.0, 0, 10, (0.5, 0.8), 0.1) for s in range(10)]
    assert lrs[:5] == [1.0] * 5
    assert lrs[5:8] == pytest.approx([0.1] * 3)
    assert lrs[8:] == pytest.approx([0.01] * 2)
    assert [multistep(s, 1.0, 2, 10, (0.5,), 0.1) for s in range(2)] == [0.5, 1.0]
    assert [constant(s, 2.0, 2) for s in range(4)] == [1.0, 2.0, 2.0, 2.0]
    cfg = TrainConfig(schedule="multistep", lr_milestones=(0.5,), warmup_steps=0)
    assert lr_at(cfg, 7, 1.0, 10) == pytest.approx(0.1)


def test_optimizers_follow_the_config() -> None:
    p = [torch.nn.Parameter(torch.zeros(3))]
    sgd = make_optimizer(p, TrainConfig(optimizer="sgd", momentum=0.9, weight_decay=1e-4), 0.1)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.9
    assert sgd.param_groups[0]["weight_decay"] == 1e-4
    adam = make_optimizer(p, TrainConfig(optimizer="adam", weight_decay=5e-5), 1e-3)
    assert type(adam) is torch.optim.Adam
    assert isinstance(make_optimizer(p, TrainConfig(), 1e-3), torch.optim.AdamW)


def test_learning_rate_of_each_task() -> None:
    cfg = TrainConfig(lr=1e-2, lr_first_task=1e-3, lr_per_task={"b": 5e-4})
    assert cfg.lr_for(0, "a") == 1e-3
    assert cfg.lr_for(1, "c") == 1e-2
    assert cfg.lr_for(0, "b") == 5e-4  # a named task wins
    with pytest.raises(ValueError, match="lr_milestones"):
        TrainConfig(lr_milestones=(0.5, 1.5))


def test_new_knobs_at_defaults_keep_chain_ids() -> None:
    spec = tiny_spec()
    assert "optimizer" not in spec.canonical_json()
    sgd = tiny_spec().model_copy(update={"train": TrainConfig(iterations=8, optimizer="sgd")})
    assert '"optimizer":"sgd"' in sgd.canonical_json()
    assert sgd.chain_id != spec.chain_id


# tiny_spec(method).chain_id before issue 14 added NSP²'s stats_dtype and the first task's
# weight decay (PGP's init_weight_decay).
_IDS_BEFORE_ISSUE_14 = {
    "dmnsp": "7788462fea49",
    "finetune": "f77453f6add3",
    "gpm": "221b3604d435",
    "icarl": "b49e6b3ebdd0",
    "joint": "e6f73e22d132",
    "l2": "a32d8670bfc2",
    "lora": "216a0fa86703",
    "lwf": "7904dbe481eb",
    "nsp2": "265fc4b7105d",
    "pgp": "fb3ba47e4409",
    "we": "14011dc62283",
    "wise-ft": "8f787593cfc7",
    "zeroshot": "a8a506cc29b9",
    "zscl": "55dc7e05355f",
}


def test_issue_14_knobs_keep_existing_chain_ids() -> None:
    for method, chain_id in _IDS_BEFORE_ISSUE_14.items():
        if method not in ("nsp2", "pgp"):
            assert tiny_spec(method).chain_id == chain_id, method
    # Every earlier nsp2 chain computed its statistics in fp64: that setting keeps their id,
    # the fp32 default (the authors') is a different computation with its own id.
    assert tiny_spec("nsp2", stats_dtype="float64").chain_id == _IDS_BEFORE_ISSUE_14["nsp2"]
    assert tiny_spec("nsp2").chain_id != _IDS_BEFORE_ISSUE_14["nsp2"]
    # PGP's task-0 weight decay 5e-4 is new; without it (None = weight_decay) the old id.
    train = {"iterations": 8, "batch_size": 32, "warmup_steps": 2}
    data = {"model": {"arch": "tiny"}, "benchmark": "smoke", "method": {"name": "pgp"}}
    pgp = ChainSpec.build({**data, "train": train})
    assert pgp.train.weight_decay_first_task == 5e-4 and pgp.train.weight_decay == 2e-4
    assert pgp.chain_id != _IDS_BEFORE_ISSUE_14["pgp"]
    old = ChainSpec.build({**data, "train": {**train, "weight_decay_first_task": None}})
    assert old.chain_id == _IDS_BEFORE_ISSUE_14["pgp"]


def test_first_task_weight_decay() -> None:
    cfg = TrainConfig(weight_decay=2e-4, weight_decay_first_task=5e-4)
    assert cfg.weight_decay_for(0) == 5e-4 and cfg.weight_decay_for(1) == 2e-4
    assert TrainConfig(weight_decay=1e-3).weight_decay_for(0) == 1e-3  # None = weight_decay
    p = [torch.nn.Parameter(torch.zeros(3))]
    sgd = make_optimizer(p, TrainConfig(optimizer="sgd", weight_decay=2e-4), 0.1, 5e-4)
    assert sgd.param_groups[0]["weight_decay"] == 5e-4


class _ConstantClassifier(Method):
    """A method whose classifier is a fixed, learnable-free matrix (records its calls)."""

    name = "test-constant-classifier"
    train_defaults = {"optimizer": "sgd", "momentum": 0.5}

    def __init__(self, config=None) -> None:
        super().__init__(self.Config())
        self.calls: list[bool] = []

    def classifier(self, task, *, training: bool):
        self.calls.append(training)
        torch.manual_seed(len(task.class_names))
        return torch.nn.functional.normalize(torch.randn(len(task.class_names), 64), dim=-1)


def test_method_train_defaults_sit_between_benchmark_and_sweep(monkeypatch) -> None:
    from clipcl.methods import registry

    monkeypatch.setitem(registry._METHODS, _ConstantClassifier.name, _ConstantClassifier)
    data = {"model": {"arch": "tiny"}, "benchmark": "smoke", "method": _ConstantClassifier.name}
    spec = ChainSpec.build(data)
    assert spec.train.optimizer == "sgd" and spec.train.momentum == 0.5
    defaults = benchmark_info("smoke").train_defaults
    assert spec.train.lr == defaults["lr"]  # the benchmark's defaults still apply
    spec = ChainSpec.build({**data, "train": {"optimizer": "adam"}})
    assert spec.train.optimizer == "adam" and spec.train.momentum == 0.5
    with pytest.raises(ClipclError, match="optimizer"):
        ChainSpec.build({**data, "train": {"optimizer": "lion"}})


def test_classifier_hook_drives_training_and_evaluation() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec().model, torch.device("cpu"))
    bench = get_benchmark("test-cil")
    method = _ConstantClassifier()
    method.setup(model)
    model.requires_grad_(False)
    model.clip.visual.proj.requires_grad_(True)
    ctx = TaskContext(0, bench.tasks[0], bench, seed=0)
    cfg = TrainConfig(iterations=3, batch_size=16, warmup_steps=0, optimizer="sgd", lr=1e-12)

    def loader():
        return make_loader(
            bench.tasks[0].train, 16, shuffle=True, seed=0, num_workers=0, pin_memory=False
        )

    loss = train_task(model, method, ctx, cfg, loader())
    assert method.calls == [True, True, True]
    # lr ~0 leaves the model as it is: the loop's loss is CE under the hook's classifier.
    clf = method.classifier(bench.tasks[0], training=True)
    expected = []
    with torch.no_grad():
        for (images, labels), _ in zip(loader(), range(3), strict=False):
            logits = model.logit_scale() * model.encode_image(model.preprocess(images)) @ clf.t()
            expected.append(float(F.cross_entropy(logits, labels, label_smoothing=0.2)))
    assert loss == pytest.approx(sum(expected) / 3, rel=1e-5)
    plain = train_task(model, Method(Method.Config()), ctx, cfg, loader())
    assert abs(plain - loss) > 0.1
    method.calls.clear()
    rows = evaluate(model, bench, 1, "c", batch_size=64, method=method)
    assert method.calls == [False, False]  # one call per seen task (CIL)
    plain = evaluate(model, bench, 1, "c", batch_size=64)
    assert [r.correct for r in rows] != [r.correct for r in plain]
    method.calls.clear()
    evaluate(model, bench, ZEROSHOT, "c", batch_size=64)
    assert method.calls == []


class _AutocastProbe(Method):
    """Records whether ``extra_loss`` ran under the step's autocast, and adds a zero term."""

    name = "test-autocast-probe"

    def __init__(self, config=None) -> None:
        super().__init__(self.Config())
        self.autocast: list[bool] = []

    def extra_loss(self, batch, outputs):
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return outputs.logits.sum() * 0.0


@pytest.mark.parametrize(("precision", "expected"), [("fp32", False), ("bf16", True)])
def test_extra_loss_runs_inside_the_forward_autocast(precision: str, expected: bool) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec().model, torch.device("cpu"))
    bench = get_benchmark("test-cil")
    method = _AutocastProbe()
    method.setup(model)
    model.requires_grad_(False)
    model.clip.visual.proj.requires_grad_(True)
    ctx = TaskContext(0, bench.tasks[0], bench, seed=0)
    cfg = TrainConfig(iterations=2, batch_size=8, warmup_steps=0, precision=precision)
    loader = make_loader(
        bench.tasks[0].train, 8, shuffle=True, seed=0, num_workers=0, pin_memory=False
    )
    train_task(model, method, ctx, cfg, loader)
    assert method.autocast == [expected, expected]


def test_cuda_fast_paths_are_keys_that_leave_cpu_runs_and_ids_alone() -> None:
    """Issue 19: ``train.tf32`` and ``train.fused_optimizer`` (both on by default) act on CUDA
    only: on the CPU the optimizer is torch's default loop, and old chain ids stay."""
    cfg = TrainConfig()
    assert cfg.tf32 is True and cfg.fused_optimizer is True
    params = [torch.nn.Parameter(torch.zeros(3))]
    for name in ("adamw", "adam"):
        opt = make_optimizer(params, TrainConfig(optimizer=name), 1e-3)
        assert not opt.defaults.get("fused"), name  # CPU parameters: never fused
    spec = tiny_spec()
    data = spec.model_dump(mode="json")
    same = ChainSpec.build({**data, "train": {**data["train"], "tf32": True}})
    assert same.chain_id == spec.chain_id
    for key in ("tf32", "fused_optimizer"):
        other = ChainSpec.build({**data, "train": {**data["train"], key: False}})
        assert other.chain_id != spec.chain_id, key
