"""Speed of ``clipcl report`` over a large synthetic sweep (random accuracies, nothing trained).

The store: ``--chains`` chains (default 1 000: 2 benchmarks, one TIL and one CIL, of ``--tasks``
tasks x 10 methods x 5 learning rates x 10 seeds, so 100 groups), each with a run directory
written through the real ``RunDir`` API (zero-shot and task rows, task seconds, a
``train.jsonl`` of 50 points per task), recorded by a sweep and ingested once. Timed: one
``write_report`` of the whole sweep (reading the store, drawing every figure, writing
index.html and the PNGs), best of ``--repeats``. The ratio is to the goal (< 60 s); below 1
meets it. No asserts.

    python bench/report.py [--chains 1000] [--tasks 10] [--repeats 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from clipcl.results.curves import TrainPoint
from clipcl.results.records import ZEROSHOT, EvalRow, RunDir
from clipcl.results.report import write_report
from clipcl.results.store import ChainRecord, ResultsStore

METHODS = ("finetune", "lwf", "zscl", "l2", "we", "gpm", "nsp2", "pgp", "dmnsp", "icarl")
LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
STEPS = 500  # per task: 50 points at the default spacing


def _records(n_chains: int, n_tasks: int) -> list[ChainRecord]:
    recs = []
    for k in range(n_chains):
        bench, protocol = (("syn-til", "til"), ("syn-cil", "cil"))[k % 2]
        method, lr, seed = METHODS[(k // 2) % 10], LRS[(k // 20) % 5], k // 100
        spec = {"benchmark": bench, "method": {"name": method}, "train": {"lr": lr}, "seed": seed}
        recs.append(
            ChainRecord(f"{k:012x}", method, bench, protocol, seed, {"train.lr": lr}, spec, n_tasks)
        )
    return recs


def _write_run_dir(root: Path, rec: ChainRecord, n_tasks: int, rng: np.random.Generator) -> None:
    names = [f"task{i}" for i in range(n_tasks)]
    records = RunDir.of(root, rec.chain_id)
    records.path.mkdir(parents=True)
    records.spec_path.write_text("{}")
    acc = rng.integers(0, 101, size=(n_tasks + 1, n_tasks))
    label = ["zeroshot", *names]
    records.append_rows(
        [
            EvalRow(rec.chain_id, t, label[t + 1], i, names[i], int(acc[t + 1, i]), 100)
            for t in range(ZEROSHOT, n_tasks)
            for i in range(n_tasks)
            if rec.protocol == "til" or t < 0 or i <= t
        ]
    )
    done = {
        str(t): {"seconds": float(rng.uniform(10, 20)), "finished_at": 0.0} for t in range(n_tasks)
    }
    records.save_state({"completed": done, "zeroshot_done": True, "num_tasks": n_tasks})
    points = [
        TrainPoint(t, s, STEPS, 2.0 / (1 + s / 100), 1e-4, s * 0.02, {"ce": 1.0, "extra": 0.1})
        for t in range(n_tasks)
        for s in range(10, STEPS + 1, 10)
    ]
    records.train_path.write_text("".join(p.to_json() + "\n" for p in points))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chains", type=int, default=1_000)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        recs = _records(args.chains, args.tasks)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for rec in recs:
            _write_run_dir(root, rec, args.tasks, rng)
        with ResultsStore(root) as store:
            store.record_sweep("bench", None, {}, recs, provenance={"host": "bench"})
            store.ingest_root()
        setup_s = time.perf_counter() - t0
        best, figures = float("inf"), 0
        for n in range(args.repeats):
            t0 = time.perf_counter()
            done = write_report(root, "bench", Path(tmp) / f"out{n}")
            best = min(best, time.perf_counter() - t0)
            figures = len(done.figures)
    print(f"{args.chains:,} chains of {args.tasks} tasks ({setup_s:.1f} s to write and ingest)")
    print(
        f"write_report(): {figures} figures + index.html in {best:.2f} s"
        f"   {best / 60:.3f} x goal (< 60 s)"
    )


if __name__ == "__main__":
    main()
