"""Shared fixtures and the registration of ``test-cil``, a small class-incremental benchmark (the
helper functions are in ``tests/helpers.py``)."""

from __future__ import annotations

import pytest
import torch

from clipcl.data import Benchmark, Task, get_benchmark, register_benchmark
from tests.helpers import ResumeRuns, resume_cases, run_resume_case, tiny_spec

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


@pytest.fixture
def spec_factory():
    return tiny_spec


@pytest.fixture(scope="session")
def resume_runs(tmp_path_factory):
    """``get(method, label="default")`` → the ``ResumeRuns`` of that method's resume case, run
    once per session: the all-methods resume test and a method's own checks on the same runs
    share them."""
    cache: dict[tuple[str, str], ResumeRuns] = {}

    def get(method: str, label: str = "default") -> ResumeRuns:
        key = (method, label)
        if key not in cache:
            (case,) = [c for c in resume_cases(method) if c.label == label]
            root = tmp_path_factory.mktemp(f"resume-{method}-{label}")
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                cache[key] = run_resume_case(case, root)
            finally:
                torch.set_num_threads(before)
        return cache[key]

    return get
