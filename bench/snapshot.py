"""Mid-task snapshots: their size, the time to write and read one, and the overhead of the
default interval as a ratio of task time.

What it measures, per model (random initialisation, ``pretrained=None``, nothing downloaded):
``finetune`` with ``train_mode=whole`` (every weight trains: the largest snapshot a method
makes), AdamW, ``--steps`` real ``train_task`` steps on random uint8 images, clocked per step.
After the last step the loop's state is snapshotted exactly as a chain does
(``TaskSnapshot``: trainable weights, AdamW state, RNGs, step) and written ``--writes`` times with
``write_snapshot`` (streamed, fsynced, renamed: the real cost, page cache included) and read
back once with ``read_snapshot`` (checksum + ``torch.load(weights_only=True)``).

Ratios printed, all measured in this run:
- ``write / step``: one snapshot's median write time over the median step time.
- ``overhead @ default``: a task of ``--task-steps`` steps (MTIL's 1000) at the measured step
  time, with a snapshot every ``checkpoint_every_min`` (10) minutes of training:
  (task time + snapshots × write time) / task time. The goal is ≤ 1.02; the bound for any task
  length is 1 + write / 600 s.
- ``overhead @ every step``: the same with a snapshot after every step (the worst case).

No result is asserted: the numbers are for reading.

    python bench/snapshot.py [--models tiny,ViT-B-16] [--steps N] [--writes N] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from clipcl.data import Benchmark, Task, TensorImageDataset, make_loader
from clipcl.methods import TaskContext, create_method
from clipcl.models import ModelConfig, build_model, pick_device
from clipcl.workers.midtask import snapshot_now
from clipcl.workers.snapshot import read_snapshot, trainable_parameters, write_snapshot
from clipcl.workers.spec import ChainSpec, TrainConfig
from clipcl.workers.train import StepState, train_task

DEFAULT_EVERY_MIN = ChainSpec.model_fields["checkpoint_every_min"].default
BATCH = {"tiny": 32, "ViT-B-16": 2}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def synthetic_task(image_size: int, n_images: int) -> tuple[Task, Benchmark]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, 3, image_size, image_size), generator=g)
    data = TensorImageDataset(images.to(torch.uint8), torch.arange(n_images) % 10)
    names = tuple(f"class {i}" for i in range(10))
    task = Task("synthetic", names, ("a photo of a {}.",), data, data)
    return task, Benchmark(name="bench-synthetic", protocol="til", tasks=(task,))


def bench_model(arch: str, steps: int, writes: int, task_steps: int) -> dict[str, Any]:
    device = pick_device(None)
    batch = BATCH.get(arch, 8)
    log(f"[{arch}] building (random init) on {device}")
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, pretrained=None), device)
    task, benchmark = synthetic_task(model.image_size, batch * 4)
    ctx = TaskContext(index=0, task=task, benchmark=benchmark, seed=0)
    method = create_method("finetune", {"train_mode": "whole"})
    method.setup(model)
    method.before_task(ctx)
    loader = make_loader(task.train, batch, shuffle=True, seed=0, num_workers=0, pin_memory=False)
    marks: list[float] = []
    last: list[StepState] = []

    def after_step(state: StepState) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        marks.append(time.perf_counter())
        last[:] = [state]

    cfg = TrainConfig(iterations=steps, batch_size=batch, warmup_steps=0)
    log(f"[{arch}] {steps} training step(s) x {batch}")
    marks.append(time.perf_counter())
    train_task(model, method, ctx, cfg, loader, after_step=after_step)
    step_s = statistics.median(b - a for a, b in zip(marks[1:-1], marks[2:], strict=True))
    if len(marks) <= 2:
        step_s = marks[1] - marks[0]
    state = last[0]
    snapshot = snapshot_now("0" * 12, 0, task.name, model, method, state)
    with tempfile.TemporaryDirectory(prefix="clipcl-bench-snapshot-") as tmp:
        path = Path(tmp) / "snapshot.pt"
        times = []
        for i in range(writes):
            t0 = time.perf_counter()
            size = write_snapshot(path, snapshot)
            times.append(time.perf_counter() - t0)
            log(f"[{arch}] write {i + 1}/{writes}: {size / 2**20:.1f} MiB in {times[-1]:.3f} s")
        t0 = time.perf_counter()
        read_snapshot(path, map_location=device)
        read_s = time.perf_counter() - t0
    write_s = statistics.median(times)
    task_s = task_steps * step_s
    every_s = DEFAULT_EVERY_MIN * 60
    n_default = math.floor(task_s / every_s)
    return {
        "model": arch,
        "device": str(device),
        "batch": batch,
        "trainable_params": sum(p.numel() for p in trainable_parameters(model).values()),
        "snapshot_mib": round(size / 2**20, 2),
        "write_s": round(write_s, 4),
        "read_s": round(read_s, 4),
        "step_s": round(step_s, 4),
        "write_per_step": round(write_s / step_s, 3),
        "task_steps": task_steps,
        "task_s": round(task_s, 1),
        "snapshots_at_default": n_default,
        "overhead_at_default": round((task_s + n_default * write_s) / task_s, 4),
        "overhead_bound_at_default": round(1 + write_s / every_s, 4),
        "overhead_every_step": round((step_s + write_s) / step_s, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,ViT-B-16", help="comma-separated architectures")
    ap.add_argument("--steps", type=int, default=4, help="training steps clocked per model")
    ap.add_argument("--writes", type=int, default=3, help="snapshot writes per model")
    ap.add_argument("--task-steps", type=int, default=1000, help="steps of the modelled task")
    ap.add_argument("--json", action="store_true", help="one JSON record per model")
    args = ap.parse_args()
    rows = [
        bench_model(m, args.steps, args.writes, args.task_steps) for m in args.models.split(",")
    ]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    head = (
        f"{'model':10} {'params':>11} {'MiB':>8} {'write s':>8} {'read s':>7} {'step s':>7} "
        f"{'write/step':>10} {'task s':>8} {'@default':>9} {'bound':>7} {'@every step':>11}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['model']:10} {r['trainable_params']:>11,} {r['snapshot_mib']:>8.1f} "
            f"{r['write_s']:>8.3f} {r['read_s']:>7.3f} {r['step_s']:>7.3f} "
            f"{r['write_per_step']:>10.3f} {r['task_s']:>8.0f} {r['overhead_at_default']:>9.4f} "
            f"{r['overhead_bound_at_default']:>7.4f} {r['overhead_every_step']:>11.3f}"
        )
    print(
        f"@default: a {args.task_steps}-step task with a snapshot every {DEFAULT_EVERY_MIN:g} "
        "min of training, as a ratio of its time without; bound: 1 + write / interval."
    )


if __name__ == "__main__":
    main()
