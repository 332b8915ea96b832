"""CUDA tests (issue 19; marker ``gpu``, skipped without a CUDA device): every registered
method trains two tasks on CUDA in fp32 and bf16 with finite losses and resumes to the same
matrix; Adam(W) is fused there; projected updates keep ~0 component along the protected bases
under bf16 autocast. Written for the lent GPU machine: no session has had one yet, so these have
never run (they are skipped on the CPU-only machines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clipcl.methods import method_class, method_names
from clipcl.workers import ChainSpec, run_chain
from tests.helpers import resume_cases

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def _on_precision(spec: ChainSpec, precision: str) -> ChainSpec:
    data = spec.model_dump(mode="json")
    return ChainSpec.build({**data, "train": {**data["train"], "precision": precision}})


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("method", method_names())
def test_every_method_trains_and_resumes_on_cuda(tmp_path: Path, method: str, precision: str):
    case = resume_cases(method)[0]
    spec = _on_precision(case.spec, precision)
    full = run_chain(spec, tmp_path / "full", device="cuda", until_task=2)  # raises if not finite
    run_chain(spec, tmp_path / "resumed", device="cuda", until_task=1)
    resumed = run_chain(spec, tmp_path / "resumed", device="cuda", until_task=2)
    rows = full.matrix[:2]
    assert np.isfinite(rows[np.tril_indices(2)]).all()
    if method_class(method).trains:
        # same seeds on the same GPU; a kernel's atomics may move a prediction: 1 point
        np.testing.assert_allclose(resumed.matrix[:2], rows, atol=1.0)


def test_adam_is_fused_on_cuda() -> None:
    from clipcl.workers.spec import TrainConfig
    from clipcl.workers.train import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(3, device="cuda"))]
    assert make_optimizer(params, TrainConfig(), 1e-3).defaults["fused"] is True
    plain = make_optimizer(params, TrainConfig(fused_optimizer=False), 1e-3)
    assert not plain.defaults.get("fused")


@pytest.mark.parametrize("method", ["gpm", "ogd"])
def test_projected_updates_stay_off_the_bases_under_bf16(method: str, device: str = "cuda") -> None:
    from clipcl.methods import TaskContext, create_method
    from clipcl.methods.projection import relative_component
    from clipcl.models import build_model
    from clipcl.workers.spec import TrainConfig
    from clipcl.workers.train import make_loader, train_task
    from tests.helpers import cil_context, tiny_spec

    torch.manual_seed(0)
    model = build_model(tiny_spec().model, torch.device(device)).eval()
    knobs = {"project_update": True} if method == "gpm" else {"train_mode": "image"}
    m = create_method(method, knobs)
    m.setup(model)
    train = TrainConfig(
        iterations=3, batch_size=32, warmup_steps=0, optimizer="adamw", lr=1e-2,
        weight_decay=0.1, precision="bf16",
    )  # fmt: skip
    for k in range(2):
        base = cil_context(k)
        ctx = TaskContext(base.index, base.task, base.benchmark, base.seed, steps=3)
        loader = make_loader(
            ctx.task.train, 32, shuffle=True, seed=k, num_workers=0, pin_memory=device == "cuda"
        )
        m.before_task(ctx)
        if k == 1:
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            bases = {n: b.clone() for n, b in m.bases.items()}
        train_task(model, m, ctx, train, loader)
        if k == 0:
            m.after_task(ctx, loader)
    worst = 0.0
    params = dict(model.named_parameters())
    for name, basis in bases.items():
        key = name if name in params else "clip." + name  # GPM names weights within model.clip
        delta = (params[key].detach() - before[key]).float().cpu()
        if method == "ogd":
            delta = delta.reshape(1, -1)
        if float(delta.norm()) > 0:
            worst = max(worst, relative_component(delta, basis.double()))
    assert bases and worst <= 1e-5


def test_cuda_reads_the_loss_back_in_batches_and_compiles() -> None:
    """On CUDA the loss is read back every SYNC_EVERY_CUDA steps (and after the last), and
    ``train.compile`` (inductor) trains without falling back, to the eager losses."""
    import warnings

    from clipcl.workers import train as train_mod
    from tests.test_gpu_path import _run

    every = train_mod.SYNC_EVERY_CUDA
    seen: list[int] = []
    eager = _run(steps=every + 3, device="cuda", on_step=lambda s, n, loss: seen.append(s))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a compile fallback fails the test
        compiled = _run(steps=every + 3, device="cuda", compile=True)
    assert seen == [every, every + 3]
    assert compiled == pytest.approx(eager, rel=1e-2)
