"""Every registered method: a chain stopped after task k and resumed gives the identical matrix,
the identical final weights and the identical method state (bit for bit, on the CPU).

Iterates the method registry, so a newly registered method is covered automatically (with
``tests.helpers.default_resume_case`` unless it has an entry in ``special_resume_cases``). The
runs are shared per session (``resume_runs``) with the methods' own checks on the same chains.
"""

from __future__ import annotations

import numpy as np
import pytest

from clipcl.methods import method_class, method_names
from clipcl.models import load_checkpoint
from clipcl.results.records import RunDir
from tests.helpers import assert_same, resume_cases

CASES = [
    pytest.param(name, case.label, id=name if case.label == "default" else f"{name}-{case.label}")
    for name in method_names()
    for case in resume_cases(name)
]


@pytest.mark.parametrize(("method", "label"), CASES)
def test_chain_resumed_after_task_k_gives_the_identical_matrix(
    resume_runs, method: str, label: str
) -> None:
    runs = resume_runs(method, label)
    case = runs.case
    assert runs.first.trained_now == list(range(case.resume_after))
    assert runs.resumed.trained_now == list(range(case.resume_after, case.tasks))
    np.testing.assert_array_equal(runs.resumed.matrix[: case.tasks], runs.full.matrix[: case.tasks])
    if not method_class(method).trains:
        return
    last = case.tasks - 1
    full, resumed = (
        load_checkpoint(RunDir(d).checkpoint_path(last), None)
        for d in (runs.full_dir, runs.resumed_dir)
    )
    assert_same(full["model"], resumed["model"], "model")
    assert_same(full["method"], resumed["method"], "method")
