"""Shared fixtures: tiny specs on the smoke benchmark and a small class-incremental benchmark."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import pytest
import torch

from clipcl.data import Benchmark, Task, get_benchmark, register_benchmark
from clipcl.methods import Method, TaskContext, create_method
from clipcl.models import ClipModel, build_model
from clipcl.workers import ChainSpec

# Tests run beside worker subprocesses (and other jobs) on few cores: one torch thread in the
# test process avoids oversubscription, which made tiny chains ~10x slower on a loaded machine.
torch.set_num_threads(1)


@register_benchmark(
    "test-cil",
    protocol="cil",
    task_names=["part0", "part1", "part2"],
    train_defaults={"iterations": 8, "batch_size": 32, "lr": 1e-3, "warmup_steps": 2},
)
def _test_cil(data_root: str | None = None) -> Benchmark:
    """The smoke tasks' 12 classes split class-incrementally into 3 tasks of 4 classes."""
    smoke = get_benchmark("smoke")
    tasks = tuple(
        Task(f"part{i}", t.class_names, t.templates, t.train, t.test)
        for i, t in enumerate(smoke.tasks)
    )
    return Benchmark(name="test-cil", protocol="cil", tasks=tasks)


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


@pytest.fixture
def spec_factory():
    return tiny_spec
