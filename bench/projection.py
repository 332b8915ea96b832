"""Per-step overhead of each projection method, and the time to build its projectors after a task.

For each method (``gpm``, ``nsp2``, ``pgp``, ``dmnsp``) two copies of the same model train the
same second task of a synthetic class-incremental benchmark through the worker's real training
loop (``train_task``): one with the method as configured (its projectors built by ``after_task``
on the first task), one with ``project: false`` (the same trainable parameters, no projection).
The step time is the median of the per-step wall times after the first step; the ratio
projected / plain is the overhead (goal ≤ 1.10× at ViT-B-16 shapes). "after_task" is the wall
time of that hook on the first task, with projection (statistics over the task's training images
+ bases) and with ``project: false`` (what the method does anyway, e.g. NSP²'s head refinement).
Random-init weights (the cost does not depend on them); the image count per task is small, so
"after_task" grows with the images a real task uses. Prints the measurements of this run; no
asserts.

The overhead is a fixed cost per step (e.g. GPM: ``G (I − M Mᵀ)`` for every protected weight, the
FLOPs of passing ~d_in tokens through that layer), so the ratio falls as the batch grows; on a CPU
a ViT-B-16 step at batch 32 takes ~10 s (``--batch 4 --steps 4`` for a quick look).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clipcl.data import Benchmark, Task, TensorImageDataset
from clipcl.methods import TaskContext, create_method
from clipcl.models import ModelConfig, build_model, pick_device
from clipcl.workers.spec import TrainConfig
from clipcl.workers.train import make_loader, train_task

METHODS = ("gpm", "nsp2", "pgp", "dmnsp")
PEAK: dict[tuple[str, bool], float] = {}  # (method, project) → peak GiB on CUDA


def synthetic_benchmark(size: int, images: int, classes: int, tasks: int = 2) -> Benchmark:
    """``tasks`` class-incremental tasks of random uint8 images at the model's input size."""
    g = torch.Generator().manual_seed(0)
    out = []
    for t in range(tasks):
        x = torch.randint(0, 256, (images, 3, size, size), dtype=torch.uint8, generator=g)
        y = torch.arange(images) % classes
        names = tuple(f"object {t * classes + c}" for c in range(classes))
        data = TensorImageDataset(x, y)
        out.append(Task(f"t{t}", names, ("a bad photo of a {}.",), data, data))
    return Benchmark(name="bench-projection", protocol="cil", tasks=tuple(out))


def measure(
    name: str, project: bool, args: argparse.Namespace, bench: Benchmark, device: torch.device
) -> tuple[float, float]:
    """(median step seconds on task 1, seconds of after_task on task 0) for one configuration;
    on CUDA its peak memory is kept in ``PEAK`` (GiB)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=args.arch, pretrained="none"), device)
    method = create_method(name, {} if project else {"project": False})
    method.setup(model)
    defaults = {**method.train_defaults}
    cfg = TrainConfig(
        **{**defaults, "iterations": args.steps, "batch_size": args.batch, "warmup_steps": 0},
        precision=args.precision,
    )
    ctx0 = TaskContext(0, bench.tasks[0], bench, seed=0)
    loader0 = make_loader(
        bench.tasks[0].train, args.batch, shuffle=True, seed=0, num_workers=0, pin_memory=False
    )
    method.before_task(ctx0)
    t0 = time.perf_counter()
    method.after_task(ctx0, loader0)
    build = time.perf_counter() - t0
    ctx1 = TaskContext(1, bench.tasks[1], bench, seed=1)
    loader1 = make_loader(
        bench.tasks[1].train, args.batch, shuffle=True, seed=1, num_workers=0, pin_memory=False
    )
    method.before_task(ctx1)
    stamps: list[float] = []
    start = time.perf_counter()

    def after_step(_state) -> None:  # each step synchronised, to clock it on its own
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    train_task(model, method, ctx1, cfg, loader1, after_step=after_step)
    steps = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
    if device.type == "cuda":
        PEAK[(name, project)] = torch.cuda.max_memory_allocated(device) / 2**30
    return statistics.median(steps[1:] if len(steps) > 1 else steps), build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="training steps timed per config")
    parser.add_argument("--images", type=int, default=64, help="training images per task")
    parser.add_argument("--classes", type=int, default=10, help="classes per task")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    probe = build_model(ModelConfig(arch=args.arch, pretrained="none"), torch.device("cpu"))
    bench = synthetic_benchmark(probe.image_size, args.images, args.classes)
    del probe
    print(
        f"{args.arch} on {device}, batch {args.batch}, {args.steps} steps, "
        f"{args.images} images per task, torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'method':8} {'plain s/step':>12} {'projected s/step':>16} {'ratio':>6} "
        f"{'after_task s (projected / plain)':>32}"
    )
    for name in args.methods:
        plain, build_plain = measure(name, False, args, bench, device)
        projected, build = measure(name, True, args, bench, device)
        print(
            f"{name:8} {plain:12.3f} {projected:16.3f} {projected / plain:6.3f} "
            f"{build:23.2f} / {build_plain:6.2f}",
            flush=True,
        )
        if (name, True) in PEAK:
            print(
                f"{'':8} peak memory {PEAK[(name, False)]:.2f} GiB plain, "
                f"{PEAK[(name, True)]:.2f} GiB projected",
                flush=True,
            )


if __name__ == "__main__":
    main()
