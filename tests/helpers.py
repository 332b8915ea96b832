"""Helper functions the tests share (specs, the tiny model, method and context builders, the
in-process CLI) and the resume cases every registered method is checked with. Fixtures and the
``test-cil`` benchmark's registration live in ``conftest.py`` (pytest loads it first)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipcl.data import Task, get_benchmark
from clipcl.methods import Method, TaskContext, create_method
from clipcl.models import ClipModel, build_model
from clipcl.workers import ChainResult, ChainSpec


def tiny_spec(
    method: str = "finetune",
    benchmark: str = "smoke",
    iterations: int = 8,
    seed: int = 0,
    **method_kw,
) -> ChainSpec:
    return ChainSpec.build(
        {
            "model": {"arch": "tiny"},
            "benchmark": benchmark,
            "method": {"name": method, **method_kw},
            "train": {"iterations": iterations, "batch_size": 32, "warmup_steps": 2},
            "seed": seed,
        }
    )


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> ClipModel:
    """The packaged tiny CLIP on the CPU in eval mode (random parts seeded by ``seed``)."""
    torch.manual_seed(seed)
    model = build_model(tiny_spec().model, torch.device("cpu")).to(dtype)
    model.eval()
    return model


def method_on(model: ClipModel, name: str, cls: type, **cfg) -> Method:
    """``create_method(name, cfg)`` checked to be a ``cls``, set up on ``model``."""
    method = create_method(name, cfg)
    assert isinstance(method, cls)
    method.setup(model)
    return method


def cil_context(index: int, task: Task | None = None) -> TaskContext:
    """The hook context of task ``index`` of ``test-cil`` (or of ``task`` at that index)."""
    bench = get_benchmark("test-cil")
    return TaskContext(index=index, task=task or bench.tasks[index], benchmark=bench, seed=0)


def run_task(method: Method, ctx: TaskContext, cfg: Any) -> None:
    """before_task → ``train_task`` → after_task of one task, as the chain does (a loader of
    the task's training set shuffled by the task's index; ``cfg``: a ``TrainConfig``)."""
    from clipcl.workers.train import make_loader, train_task

    assert method.model is not None
    loader = make_loader(
        ctx.task.train,
        cfg.batch_size,
        shuffle=True,
        seed=ctx.index,
        num_workers=0,
        pin_memory=False,
    )
    method.before_task(ctx)
    train_task(method.model, method, ctx, cfg, loader)
    method.after_task(ctx, loader)


def smoke_spec(seed: int = 0, iterations: int = 10) -> ChainSpec:
    """A finetune chain of the tiny CLIP on ``smoke`` with the benchmark's other defaults."""
    return ChainSpec.build(
        {
            "model": {"arch": "tiny"},
            "benchmark": "smoke",
            "method": "finetune",
            "train": {"iterations": iterations},
            "seed": seed,
        }
    )


def clipcl_inprocess(*args) -> subprocess.CompletedProcess:
    """Run ``clipcl ARGS`` in-process through ``clipcl.cli.main`` (the console script's code);
    capture exit code, stdout and stderr."""
    from clipcl.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["clipcl", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def assert_same(a: Any, b: Any, where: str) -> None:
    """Equal tensors (bit for bit), mappings, sequences and plain values, recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def direct_matrix(spec: ChainSpec, run_dir) -> list:
    """The reference for backend tests: ``run_chain`` in this process with the one thread a
    job gets."""
    import torch

    from clipcl.workers import run_chain

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_chain(spec, run_dir).to_json()["matrix"]
    finally:
        torch.set_num_threads(before)


# ----- the resume check every registered method gets (tests/test_resume_all_methods.py) -----
def gpm_chain_spec() -> ChainSpec:
    """GPM on ``test-cil`` with its paper's SGD, enough steps and lr to change the model."""
    return ChainSpec.build(
        {
            "model": {"arch": "tiny"},
            "benchmark": "test-cil",
            "method": {"name": "gpm", "samples": 32},
            "train": {"iterations": 6, "batch_size": 32, "warmup_steps": 0, "lr": 0.05},
        }
    )


def icarl_chain_spec(distill_weight: float = 1.0) -> ChainSpec:
    """iCaRL on ``smoke`` with a 24-exemplar memory (2 per class) and every checkpoint kept."""
    return ChainSpec.build(
        {
            "model": {"arch": "tiny"},
            "benchmark": "smoke",
            "method": {
                "name": "icarl",
                "memory_size": 24,
                "batch_size": 8,
                "distill_weight": distill_weight,
            },
            "train": {"iterations": 3, "batch_size": 16, "warmup_steps": 1},
            "seed": 3,
            "keep_checkpoints": 0,
        }
    )


@dataclass(frozen=True)
class ResumeCase:
    """A chain run twice in fresh directories: straight through ``tasks`` tasks, and stopped
    after ``resume_after`` tasks then resumed up to ``tasks``."""

    spec: ChainSpec
    resume_after: int = 1
    tasks: int = 2
    label: str = "default"


@dataclass(frozen=True)
class ResumeRuns:
    """The two runs of a ``ResumeCase``."""

    case: ResumeCase
    full_dir: Path
    full: ChainResult
    resumed_dir: Path
    first: ChainResult  # the interrupted run (tasks 0..resume_after-1)
    resumed: ChainResult  # the run that resumed it


_ZSCL_KNOBS: dict[str, Any] = {"reference_size": 64, "reference_batch_size": 8, "avg_freq": 3}


def special_resume_cases() -> dict[str, list[ResumeCase]]:
    """Methods whose resume check needs particular knobs (or checks more than one variant); any
    other registered method gets ``default_resume_case``. (A function: the specs name
    ``test-cil``, which conftest registers after importing this module.)"""
    return {
        "dmnsp": [ResumeCase(tiny_spec("dmnsp", "test-cil", iterations=4), 2, 3)],
        "finetune": [
            default_resume_case("finetune"),
            ResumeCase(
                tiny_spec("finetune", iterations=3, train_mode="image-fc-fixed"),
                label="image-fc-fixed",
            ),
        ],
        "gpm": [ResumeCase(gpm_chain_spec())],
        "icarl": [ResumeCase(icarl_chain_spec(), 2, 3)],
        "joint": [ResumeCase(tiny_spec("joint", "test-cil", iterations=3, batch_size=16))],
        "lora": [
            ResumeCase(tiny_spec("lora", merge_after_task=False), label="unmerged"),
            ResumeCase(tiny_spec("lora", merge_after_task=True), label="merged"),
            ResumeCase(
                tiny_spec(
                    "lora",
                    targets=["attn.in_proj", "attn.out_proj", "mlp.c_fc"],
                    shared=True,
                    split_qkvo=True,
                    merge_after_task=True,
                ),
                label="shared",
            ),
        ],
        "lwf": [ResumeCase(tiny_spec("lwf", iterations=6, **_ZSCL_KNOBS), 1, 3)],
        "nsp2": [ResumeCase(tiny_spec("nsp2", "test-cil", refine_epochs=5))],
        "ogd": [ResumeCase(tiny_spec("ogd", "test-cil", iterations=4, samples=3), 1, 3)],
        "pgp": [ResumeCase(tiny_spec("pgp", "test-cil"))],
        "we": [
            ResumeCase(tiny_spec("we", "test-cil", iterations=3, avg_freq=2)),
            ResumeCase(
                tiny_spec("we", "test-cil", iterations=3, avg_freq=2, we_wise=True),
                label="we-wise",
            ),
            ResumeCase(
                tiny_spec(
                    "we",
                    "test-cil",
                    iterations=3,
                    avg_freq=1,
                    we=False,
                    moving_avg=True,
                    moving_avg_model="previous",
                ),
                label="moving-avg",
            ),
        ],
        "wise-ft": [
            ResumeCase(tiny_spec("wise-ft")),
            ResumeCase(tiny_spec("wise-ft", reference="zeroshot"), 1, 3, label="zeroshot"),
        ],
        "zscl": [ResumeCase(tiny_spec("zscl", iterations=6, **_ZSCL_KNOBS), 1, 3)],
    }


def default_resume_case(method: str) -> ResumeCase:
    """Three steps a task on ``test-cil``, resumed after task 0: a few seconds per method."""
    return ResumeCase(tiny_spec(method, "test-cil", iterations=3))


def resume_cases(method: str) -> list[ResumeCase]:
    return special_resume_cases().get(method) or [default_resume_case(method)]


def run_resume_case(case: ResumeCase, root: Path) -> ResumeRuns:
    """Run ``case`` under ``root``: ``full/`` straight through, ``resumed/`` in two calls."""
    from clipcl.workers import run_chain

    full = run_chain(case.spec, root / "full", until_task=case.tasks)
    first = run_chain(case.spec, root / "resumed", until_task=case.resume_after)
    resumed = run_chain(case.spec, root / "resumed", until_task=case.tasks)
    return ResumeRuns(case, root / "full", full, root / "resumed", first, resumed)
