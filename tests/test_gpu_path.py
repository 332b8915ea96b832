"""Issue 19's changes to the training and evaluation loops, checked on the CPU: the step's loss
read back to the host in batches (as on CUDA) with the NaN check still naming its step, curve
points kept as tensors until flushed, ``train.compile`` through every hook and its fallback, the
fused scaled-dot-product attention kernel in every method's training forward, and the auto
values of ``train.num_workers`` and ``eval.batch_size`` (which keep chain ids)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from clipcl.data import get_benchmark
from clipcl.methods import Method, TaskContext, create_method
from clipcl.models.kernels import OpCounter
from clipcl.results.curves import TrainLog, read_points
from clipcl.workers import train as train_mod
from clipcl.workers.spec import ChainSpec, EvalConfig, TrainConfig
from clipcl.workers.train import make_loader, train_task
from tests.helpers import tiny_model, tiny_spec


def _run(
    name: str = "finetune",
    steps: int = 6,
    *,
    on_step=None,
    after_step=None,
    method: Method | None = None,
    device: str = "cpu",
    **train,
) -> float:
    """``steps`` steps of task 0 of test-cil with ``name`` (or ``method``) on a fresh tiny CLIP."""
    model = tiny_model().to(device)
    if method is None:
        method = create_method(name, {})
    method.setup(model)
    bench = get_benchmark("test-cil")
    ctx = TaskContext(0, bench.tasks[0], bench, seed=0, steps=steps)
    method.before_task(ctx)
    loader = make_loader(
        bench.tasks[0].train, 8, shuffle=True, seed=0, num_workers=0, pin_memory=device != "cpu"
    )
    cfg = TrainConfig(iterations=steps, batch_size=8, warmup_steps=0, lr=1e-4, **train)
    return train_task(model, method, ctx, cfg, loader, on_step=on_step, after_step=after_step)


def test_losses_read_in_batches_give_the_same_training(monkeypatch) -> None:
    every_step: list[tuple[int, float]] = []
    mean = _run(steps=10, on_step=lambda s, n, loss: every_step.append((s, loss)))
    assert [s for s, _ in every_step] == list(range(1, 11))  # the CPU reads every step
    monkeypatch.setattr(train_mod, "SYNC_EVERY_CPU", 4)  # as CUDA does, every 4 steps here
    batched: list[tuple[int, float]] = []
    batched_mean = _run(steps=10, on_step=lambda s, n, loss: batched.append((s, loss)))
    assert [s for s, _ in batched] == [4, 8, 10]  # every 4th step and the last
    assert batched == [every_step[3], every_step[7], every_step[9]]  # the same losses
    assert batched_mean == mean


class _NaNAt(Method):
    """Adds a NaN loss term at one step (0-based)."""

    name = "test-nan-at"

    def __init__(self, at: int) -> None:
        super().__init__(self.Config())
        self.at, self.calls = at, 0

    def extra_loss(self, batch, outputs):
        self.calls += 1
        bad = self.calls - 1 == self.at
        return outputs.logits.sum() * (float("nan") if bad else 0.0)


def test_a_nan_loss_read_later_still_names_its_step(monkeypatch) -> None:
    monkeypatch.setattr(train_mod, "SYNC_EVERY_CPU", 4)
    seen: list[int] = []
    with pytest.raises(FloatingPointError, match="loss became nan at step 1 of task"):
        _run(method=_NaNAt(1), on_step=lambda s, n, loss: seen.append(s))
    assert seen == []  # the first read (after step 4) raised: no progress with a NaN in it

    # A snapshot reads the last losses: it never holds a NaN step (raises at that step).
    recents: list[int] = []

    def snapshot(state) -> None:
        if state.step == 2:
            recents.append(len(state.recent))

    with pytest.raises(FloatingPointError, match="at step 1 of"):
        _run(method=_NaNAt(1), after_step=snapshot)
    assert recents == []


def test_curve_points_keep_tensors_until_flushed(tmp_path) -> None:
    path = tmp_path / "train.jsonl"
    log = TrainLog(path, 0, 10)
    log.record(5, torch.tensor(1.25), 0.01, {"ce": torch.tensor(1.0), "extra": 0.25})
    log.record(10, 0.5, 0.02, {"ce": torch.tensor(0.5, dtype=torch.bfloat16)})
    assert len(path.read_text().splitlines()) == 1  # the attempt's start line only
    log.flush()
    points = read_points(path)
    assert [(p.step, p.loss, p.lr) for p in points] == [(5, 1.25, 0.01), (10, 0.5, 0.02)]
    assert points[0].terms == {"ce": 1.0, "extra": 0.25}
    assert points[1].terms == {"ce": 0.5}
    assert json.loads(path.read_text().splitlines()[1])["loss"] == 1.25  # plain JSON numbers


@pytest.mark.parametrize("name", ["finetune", "nsp2", "lora"])
def test_compile_traces_every_hook_and_trains_the_same(monkeypatch, name: str) -> None:
    """nsp2: deep-prompt pre-hooks on the attention; lora: parametrized weights."""
    monkeypatch.setattr(train_mod, "COMPILE_BACKEND", "aot_eager")  # dynamo + AOT autograd
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    eager = _run(name, steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would fail the test
        compiled = _run(name, steps=3, compile=True)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did capture the image tower
    assert compiled == pytest.approx(eager, rel=1e-5)


def test_compile_falls_back_with_a_warning(monkeypatch) -> None:
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler found\nmore detail")

        return call

    monkeypatch.setattr(train_mod.torch, "compile", broken)
    eager = _run(steps=3)
    with pytest.warns(
        RuntimeWarning,
        match=r"train.compile: torch.compile failed "
        r"\(RuntimeError: no C\+\+ compiler found\); training on without it",
    ):
        fallback = _run(steps=3, compile=True)
    assert fallback == eager


@pytest.mark.parametrize(
    ("name", "knobs"),
    [
        ("finetune", {"train_mode": "whole"}),
        ("nsp2", {}),  # deep prompts: keys/values extended by a pre-hook
        ("lora", {}),  # parametrized in/out projections
        ("dmnsp", {}),  # adapters
        ("pgp", {}),  # prompt tokens before ln_pre
    ],
)
def test_training_attention_runs_the_fused_kernel(name: str, knobs: dict) -> None:
    """Every attention of both towers runs PyTorch's fused scaled-dot-product kernel in a
    training forward and backward (open_clip calls nn.MultiheadAttention with
    need_weights=False); no hook forces the explicit softmax path."""
    model = tiny_model()
    method = create_method(name, knobs)
    method.setup(model)
    model.train()
    images = torch.randint(0, 256, (4, 3, model.image_size, model.image_size), dtype=torch.uint8)
    with OpCounter() as rec:
        feats = model.encode_image(model.preprocess(images))
        text = model.encode_text(model.tokenize(["a photo of a cat.", "a photo of a dog."]))
        loss = feats.sum() + text.sum()
        if loss.requires_grad:
            loss.backward()
    blocks = len(model.clip.visual.transformer.resblocks) + len(model.clip.transformer.resblocks)
    fused = [op for op in rec.ops if "scaled_dot_product" in op and "backward" not in op]
    assert fused and sum(rec.ops[op] for op in fused) == blocks, rec.ops
    assert not [op for op in rec.ops if "softmax" in op], rec.ops
    if name != "pgp":  # pgp trains prompts only before task 1: text tower untouched here
        assert any("scaled_dot_product" in op and "backward" in op for op in rec.ops)


def test_auto_workers_and_eval_batch_keep_chain_ids() -> None:
    auto = TrainConfig()
    assert auto.num_workers is None
    assert auto.workers_on("cpu", 16) == 0  # the CPU's cores train
    assert auto.workers_on("cuda", 8) == 7
    assert auto.workers_on("cuda", 32) == 8
    assert auto.workers_on("cuda", 1) == 0
    assert TrainConfig(num_workers=3).workers_on("cuda", 16) == 3
    assert EvalConfig().batch_on("cuda") == 1024
    assert EvalConfig().batch_on("cpu") == 256
    assert EvalConfig(batch_size=64).batch_on("cuda") == 64

    spec = tiny_spec()
    data = spec.model_dump(mode="json")
    assert data["train"]["num_workers"] is None and data["eval"]["batch_size"] is None
    # auto hashes as the former fixed defaults: the ids of earlier specs stay
    legacy = ChainSpec.build(
        {**data, "train": {**data["train"], "num_workers": 0}, "eval": {"batch_size": 256}}
    )
    assert legacy.chain_id == spec.chain_id
    for section, key, value in [
        ("train", "num_workers", 2),
        ("eval", "batch_size", 64),
        ("train", "compile", True),
    ]:
        changed = ChainSpec.build({**data, section: {**data[section], key: value}})
        assert changed.chain_id != spec.chain_id, key
