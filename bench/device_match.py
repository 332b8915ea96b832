"""The same chain on CUDA and on the CPU: the ``mini-mtil`` finetune chain (seed 0, fp32, the
benchmark's defaults) run by ``run_chain`` on each device, matrices printed side by side with the
largest difference per cell and in the metrics.

The two runs differ only by floating-point rounding (kernels, reduction order), which after 800
AdamW steps moves a few test predictions: the stated tolerance is 2.0 accuracy points per cell and
1.0 point per metric (Transfer, Avg, Last); the script prints whether both hold. Without CUDA it
says so and exits 0 (nothing to compare). No asserts beyond that line.

    python bench/device_match.py [--benchmark mini-mtil] [--iterations N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clipcl.workers import ChainSpec, run_chain

CELL_TOLERANCE = 2.0
METRIC_TOLERANCE = 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--benchmark", default="mini-mtil")
    ap.add_argument("--iterations", type=int, default=None, help="default: the benchmark's")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("device match: no CUDA device here, nothing to compare (run it on a GPU machine)")
        return
    spec_data = {"model": {"arch": "tiny"}, "benchmark": args.benchmark, "method": "finetune"}
    if args.iterations:
        spec_data["train"] = {"iterations": args.iterations}
    spec = ChainSpec.build(spec_data)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for device in ("cuda", "cpu"):
            t0 = time.perf_counter()
            results[device] = run_chain(spec, Path(tmp) / device, device=device)
            print(f"{device}: {time.perf_counter() - t0:.1f} s")
    a, b = results["cuda"], results["cpu"]
    np.set_printoptions(precision=1, suppress=True, linewidth=140)
    print("CUDA matrix:\n", a.matrix, "\nCPU matrix:\n", b.matrix)
    cell = float(np.nanmax(np.abs(a.matrix - b.matrix)))
    metric = max(abs(a.metrics[k] - b.metrics[k]) for k in ("transfer", "avg", "last"))
    print(f"largest difference: {cell:.2f} points per cell, {metric:.2f} per metric")
    ok = cell <= CELL_TOLERANCE and metric <= METRIC_TOLERANCE
    print(
        f"within the tolerance ({CELL_TOLERANCE} per cell, {METRIC_TOLERANCE} per metric): "
        f"{'yes' if ok else 'NO'}"
    )


if __name__ == "__main__":
    main()
