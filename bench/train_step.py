"""Training throughput (images/s) of CLIP fine-tuning steps, per model and compute precision.

What it measures: the project's real training loop, ``clipcl.workers.train.train_task``, as a
chain runs it — ``finetune`` with ``train_mode=whole`` (image and text towers trainable, so the
class embeddings of the task's 10 classes are re-encoded with gradients every step), AdamW,
label-smoothed cross-entropy, autocast at the chosen precision (fp32 master weights) and, for fp16
on CUDA, the gradient scaler. Each step includes fetching a batch of uint8 images from a
``make_loader`` DataLoader (``num_workers=0``), the host→device copy and on-device preprocessing.

Models are built with ``clipcl.models.build_model`` and random initialisation (``pretrained=None``,
nothing is downloaded); the images are random uint8 tensors already at the model's input size.
Per (model, precision): one ``train_task`` call of ``--warmup`` + ``--steps`` iterations; the
clock (``time.perf_counter``, CUDA synchronised) is read in ``train_task``'s ``after_step`` hook
after the last warm-up step and after the last step, so the timed window holds only steady-state
steps. The untimed warm-up absorbs the per-call set-up (AdamW creation, its lazily allocated state
on the first step) and first-use kernel/allocator costs; with ``--warmup 0`` they are timed too.
images/s = steps * batch / seconds; "vs fp32" is the ratio to the fp32 images/s of the same model
measured in the same run. One model instance is reused across precisions (its weights drift by a
few tiny steps; that does not change the cost of a step). Every timed step is also clocked on its
own: the table's "median img/s" is batch / median step time, robust to a few slow steps on a shared
machine. ``--json`` records also carry ``median_step_s``, ``min_step_s`` and ``call_seconds`` (the
whole ``train_task`` call including set-up and warm-up).

The device is CUDA when present, else CPU. Precisions the device cannot run are skipped with the
reason printed. No result is asserted: the numbers are for reading and comparing.

    python bench/train_step.py [--models tiny,ViT-B-16] [--precisions fp32,bf16,fp16]
                               [--batch-size N] [--steps N] [--warmup N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

from clipcl.data import Benchmark, Task, TensorImageDataset
from clipcl.errors import ClipclError
from clipcl.methods import TaskContext, create_method
from clipcl.models import ModelConfig, build_model, pick_device, resolve_arch
from clipcl.workers.spec import TrainConfig
from clipcl.workers.train import make_loader, train_task

PRECISIONS = ("fp32", "bf16", "fp16")
NUM_CLASSES = 10
TEMPLATES = ("a photo of a {}.",)

# (batch, timed steps, warm-up steps) per device type and model; ``None`` = any other model.
DEFAULTS: dict[str, dict[str | None, tuple[int, int, int]]] = {
    "cpu": {"tiny": (64, 10, 2), "ViT-B-16": (8, 3, 1), None: (16, 5, 2)},
    "cuda": {"tiny": (256, 50, 5), "ViT-B-16": (128, 20, 3), None: (64, 20, 3)},
}


@dataclass
class Record:
    model: str
    arch: str
    precision: str
    device: str
    device_name: str
    batch: int
    steps: int
    warmup_steps: int
    status: str  # "ok", "skipped" or "error"
    reason: str | None = None
    seconds: float | None = None
    images_per_s: float | None = None
    vs_fp32: float | None = None
    peak_mem_gib: float | None = None
    call_seconds: float | None = None
    median_step_s: float | None = None
    min_step_s: float | None = None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def other_cpu_busy(interval: float = 0.5) -> float | None:
    """Fraction of all CPUs busy over ``interval`` seconds while this process sleeps (Linux)."""

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    try:
        total0, idle0 = read()
        time.sleep(interval)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return None
    span = total1 - total0
    return None if span <= 0 else 1.0 - (idle1 - idle0) / span


def precision_unavailable(device: torch.device, precision: str) -> str | None:
    """Why ``precision`` cannot run on ``device``, or None when it can."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return "torch.cuda.is_bf16_supported() is False on this GPU"
        return None
    if device.type != "cpu":
        return f"no availability check for device type '{device.type}'"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    a = torch.randn(8, 8, requires_grad=precision == "fp16")
    b = torch.randn(8, 8)
    try:
        with torch.autocast("cpu", dtype=dtype):
            out = a @ b
        if precision == "fp16":
            out.float().sum().backward()
    except Exception as exc:  # any failure means: not usable here
        what = "matmul" if precision == "bf16" else "matmul+backward"
        return f"CPU autocast {precision} {what} failed: {type(exc).__name__}: {exc}"
    return None


def synthetic_task(image_size: int, n_images: int, seed: int = 0) -> tuple[Task, Benchmark]:
    """A 10-class task of random uint8 images (N, 3, S, S) at the model's input size."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_images, 3, image_size, image_size), generator=g)
    labels = torch.arange(n_images) % NUM_CLASSES  # (N,)
    data = TensorImageDataset(images.to(torch.uint8), labels)
    task = Task(
        name="synthetic",
        class_names=tuple(f"class {i}" for i in range(NUM_CLASSES)),
        templates=TEMPLATES,
        train=data,
        test=data,
    )
    return task, Benchmark(name="bench-synthetic", protocol="til", tasks=(task,))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(
    model_name: str,
    precisions: list[str],
    device: torch.device,
    batch_override: int | None,
    steps_override: int | None,
    warmup_override: int | None,
) -> list[Record]:
    table = DEFAULTS.get(device.type, DEFAULTS["cpu"])
    arch = resolve_arch(model_name)
    alias = "tiny" if arch == "clipcl-tiny" else arch
    batch, steps, warmup = table.get(alias, table[None])
    batch = batch_override or batch
    steps = steps_override or steps
    warmup = warmup if warmup_override is None else warmup_override
    dev_name = device_name(device)

    def record(precision: str, status: str, **kw) -> Record:
        return Record(
            model=model_name,
            arch=arch,
            precision=precision,
            device=device.type,
            device_name=dev_name,
            batch=batch,
            steps=steps,
            warmup_steps=warmup,
            status=status,
            **kw,
        )

    runnable: list[str] = []
    records: dict[str, Record] = {}
    for p in precisions:
        reason = precision_unavailable(device, p)
        if reason is None:
            runnable.append(p)
        else:
            log(f"[{model_name}] skipping {p}: {reason}")
            records[p] = record(p, "skipped", reason=reason)
    if not runnable:
        return [records[p] for p in precisions]

    log(f"[{model_name}] building {arch} (random init) on {device}")
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=model_name, pretrained=None), device)
    task, benchmark = synthetic_task(model.image_size, batch * max(1, min(steps, 8)))
    ctx = TaskContext(index=0, task=task, benchmark=benchmark, seed=0)
    method = create_method("finetune", {"train_mode": "whole"})
    method.setup(model)
    method.before_task(ctx)
    loader = make_loader(
        task.train,
        batch,
        shuffle=True,
        seed=0,
        num_workers=0,
        pin_memory=device.type == "cuda",
    )

    for p in runnable:
        log(f"[{model_name}] {p}: warm-up {warmup} step(s), then {steps} timed step(s) x {batch}")
        marks: dict[int, float] = {}

        def after_step(state, marks=marks) -> None:
            # Synchronised after every step (train_task reads the loss back only every
            # SYNC_EVERY_CUDA steps on CUDA), so each step is clocked on its own.
            sync(device)
            marks[state.step] = time.perf_counter()

        cfg = TrainConfig(iterations=warmup + steps, batch_size=batch, warmup_steps=0, precision=p)
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            marks[0] = time.perf_counter()
            train_task(model, method, ctx, cfg, loader, after_step=after_step)
            sync(device)
            call_seconds = time.perf_counter() - marks[0]
            seconds = marks[warmup + steps] - marks[warmup]
            step_s = sorted(marks[k + 1] - marks[k] for k in range(warmup, warmup + steps))
        except Exception as exc:  # OOM, non-finite loss, unsupported kernel: report, go on
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log(f"[{model_name}] {p} failed: {reason}")
            records[p] = record(p, "error", reason=reason)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        records[p] = record(
            p,
            "ok",
            seconds=round(seconds, 4),
            images_per_s=round(steps * batch / seconds, 2),
            peak_mem_gib=None if peak is None else round(peak, 2),
            call_seconds=round(call_seconds, 4),
            median_step_s=round(statistics.median(step_s), 4),
            min_step_s=round(step_s[0], 4),
        )

    base = records.get("fp32")
    if base is not None and base.images_per_s:
        for r in records.values():
            if r.images_per_s is not None:
                r.vs_fp32 = round(r.images_per_s / base.images_per_s, 3)

    del model, method, loader
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return [records[p] for p in precisions]


def print_table(records: list[Record]) -> None:
    cols = ["model", "precision", "device", "batch", "steps", "seconds", "images/s", "vs fp32"]
    cols.append("median img/s")
    has_mem = any(r.peak_mem_gib is not None for r in records)
    if has_mem:
        cols.append("peak GiB")
    rows = []
    for r in records:
        if r.status != "ok":
            tail = [r.status, "-", "-", "-"] + (["-"] if has_mem else [])
            rows.append([r.model, r.precision, r.device, str(r.batch), str(r.steps), *tail])
            continue
        row = [
            r.model,
            r.precision,
            r.device,
            str(r.batch),
            str(r.steps),
            f"{r.seconds:.2f}",
            f"{r.images_per_s:.1f}",
            "-" if r.vs_fp32 is None else f"{r.vs_fp32:.2f}x",
            f"{r.batch / r.median_step_s:.1f}" if r.median_step_s else "-",
        ]
        if has_mem:
            row.append("-" if r.peak_mem_gib is None else f"{r.peak_mem_gib:.2f}")
        rows.append(row)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    left = {"model", "precision", "device"}

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if name in left else c.rjust(w)
            for c, w, name in zip(cells, widths, cols, strict=True)
        )

    print(fmt(cols))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(fmt(row))
    for r in records:
        if r.status != "ok":
            print(f"{r.model} {r.precision}: {r.status}: {r.reason}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Training throughput (images/s) of clipcl's train_task per model and precision."
    )
    ap.add_argument("--models", default="tiny,ViT-B-16", help="comma-separated architectures")
    ap.add_argument(
        "--precisions", default=",".join(PRECISIONS), help="comma-separated: fp32,bf16,fp16"
    )
    ap.add_argument("--batch-size", type=int, default=None, help="override per-model default")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (per-model default)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps")
    ap.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    ap.add_argument("--json", action="store_true", help="print a JSON list of records")
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in args.precisions if p not in PRECISIONS]
    if bad:
        ap.error(f"unknown precision(s) {bad}; choose from {', '.join(PRECISIONS)}")
    for name in ("batch_size", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup is not None and args.warmup < 0:
        ap.error("--warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    try:
        for m in args.models:
            resolve_arch(m)  # fail fast on a typo, before any model is built
    except ClipclError as exc:
        log(f"error: {exc}")
        return 2
    t_start = time.perf_counter()
    busy = other_cpu_busy()
    log(
        f"torch {torch.__version__} on {device} ({device_name(device)}), "
        f"cpu count {os.cpu_count()}, tf32 matmul {torch.backends.cuda.matmul.allow_tf32}"
        + ("" if busy is None else f", CPU busy before start {busy:.0%}")
    )
    if device.type == "cpu" and busy is not None and busy > 0.2:
        log(
            "note: other processes are using the CPU; with oversubscribed cores the timings (and"
            " the precision ratios) can be several times off: compare median img/s, or rerun"
        )
    records: list[Record] = []
    for m in args.models:
        records += bench_model(m, args.precisions, device, args.batch_size, args.steps, args.warmup)
    if args.json:
        print(json.dumps([asdict(r) for r in records], indent=2))
    else:
        print_table(records)
    log(f"total wall time {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
