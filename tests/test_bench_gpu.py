"""``bench/gpu.sh --cpu`` (issue 19): the prepared device check runs end to end on the CPU at
small sizes and prints every figure it exists for; the numbers themselves are not checked (no
timing asserts in tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_the_cpu_and_prints_each_section() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--cpu"],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for heading in ("== 1.", "== 2.", "== 3.", "== 4."):
        assert heading in out, out
    lines = out.splitlines()
    fp32 = next(ln for ln in lines if ln.strip().startswith("fp32"))
    ips, gflop = (float(v) for v in fp32.split()[1:3])
    assert ips > 0 and gflop > 0  # FLOPs were counted from the model
    assert "evaluation:" in out and "images/s" in out
    kernel = next(ln for ln in lines if ln.startswith("attention kernel (fp32)"))
    assert "scaled_dot_product" in kernel and "softmax" not in kernel, kernel
    for method in ("gpm", "nsp2", "pgp", "dmnsp"):
        assert any(ln.startswith(method) for ln in lines), method
    assert "ratio recomputed / cached" in out
    assert "no CUDA device here" in out
