"""Training throughput and model FLOPs utilisation (MFU) of CLIP fine-tuning, and evaluation
throughput, per compute precision.

Training: the worker's real loop (``train_task``) with ``finetune`` (``train_mode: image``, the
image tower trains against fixed class embeddings, as most CL methods here do), AdamW, autocast at
the precision, on random uint8 images at the model's input size; timed after ``--warmup``
untimed steps, CUDA synchronised at the two marks only (the loop itself reads the loss back
every ``SYNC_EVERY_CUDA`` steps), so the timed steps queue on the GPU as in a chain. With
``--compile`` each precision is also run with ``train.compile: true`` (its warm-up steps
absorb the compile); where compiling fails the row says so.

The attention kernel: the aten operator a training forward of the image tower runs for its
attention (recorded by a ``TorchDispatchMode``): a ``_scaled_dot_product_*`` name (flash,
efficient, cudnn, or the CPU's flash) means PyTorch's fused kernel, ``_softmax`` the explicit path.

FLOPs are counted from the model, not assumed: ``torch.utils.flop_counter.FlopCounterMode``
around one real training step (forward, loss, backward; the optimizer's element-wise update is
not a matmul and is not counted; the step's one-time forward of the 10 class prompts through the
frozen text tower is included, under 1 % at batch 128), divided by the batch. MFU = images/s ×
FLOPs per image / the device's dense peak for that precision (``PEAK_TFLOPS`` by device name:
fp32 without TF32, as clipcl trains by default, and bf16 tensor cores; ``--peak-tflops``
overrides). On a CPU or an unknown GPU the peak is unknown and MFU is printed as "n/a" beside
the achieved TFLOP/s.

Evaluation: ``clipcl.workers.evaluate.evaluate`` of a synthetic 10-class task (class embeddings
once per task, as the worker does) at ``--eval-batch``; images/s over the whole call.

Random-init weights (``pretrained=None``; the cost does not depend on them). No asserts: prints
the figures of this run.

    python bench/mfu.py [--arch ViT-B-16] [--device cuda|cpu] [--batch N] [--steps N]
                        [--precisions fp32,bf16] [--eval-batch N] [--eval-images N]
                        [--compile]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from clipcl.data import Benchmark, Task, TensorImageDataset
from clipcl.methods import TaskContext, create_method
from clipcl.models import ModelConfig, build_model, pick_device
from clipcl.models.kernels import OpCounter
from clipcl.workers.evaluate import evaluate
from clipcl.workers.spec import TrainConfig
from clipcl.workers.train import make_loader, train_task

#: Dense peak TFLOP/s by a substring of the CUDA device name: (fp32 without TF32, bf16).
PEAK_TFLOPS = {
    "H200": (66.9, 989.4),
    "H100": (66.9, 989.4),
    "A100": (19.5, 312.0),
    "L40S": (91.6, 362.1),
    "A10": (31.2, 125.0),
}
CLASSES = 10


def _task(size: int, n: int) -> tuple[Task, Benchmark]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    data = TensorImageDataset(images, torch.arange(n) % CLASSES)
    names = tuple(f"class {i}" for i in range(CLASSES))
    task = Task("synthetic", names, ("a photo of a {}.",), data, data)
    return task, Benchmark("bench-mfu", "til", (task,))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device: torch.device, precision: str, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (fp32, bf16) in PEAK_TFLOPS.items():
        if key in name:
            return bf16 if precision in ("bf16", "fp16") else fp32
    return None


def flops_per_image(model, method, ctx, task, batch: int, precision: str) -> float:
    """FLOPs of one real training step at ``batch``, counted by FlopCounterMode, per image."""
    from torch.utils.flop_counter import FlopCounterMode

    loader = make_loader(task.train, batch, shuffle=True, seed=1, num_workers=0, pin_memory=False)
    cfg = TrainConfig(iterations=1, batch_size=batch, warmup_steps=0, precision=precision)
    counter = FlopCounterMode(display=False)
    with counter:
        train_task(model, method, ctx, cfg, loader)
    return counter.get_total_flops() / batch


def attention_kernels(model, batch: int, precision: str) -> str:
    """The attention operators of one training forward of the image tower."""
    from clipcl.models import autocast

    images = torch.randint(0, 256, (batch, 3, model.image_size, model.image_size))
    model.train()
    with OpCounter() as rec, autocast(model.device, precision):
        model.encode_image(model.preprocess(images.to(torch.uint8)))
    model.eval()
    found = rec.attention()
    return ", ".join(f"{op} x{n}" for op, n in sorted(found.items())) or "none found"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 8 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (20 CUDA, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--eval-batch", type=int, default=None, help="default: 512 CUDA, 32 CPU")
    ap.add_argument("--eval-images", type=int, default=None, help="default: 4096 CUDA, 64 CPU")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--compile", action="store_true", help="also each precision compiled")
    args = ap.parse_args()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (128 if cuda else 8)
    steps = args.steps or (20 if cuda else 3)
    eval_batch = args.eval_batch or (512 if cuda else 32)
    eval_images = args.eval_images or (4096 if cuda else 64)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"device {name}; {args.arch}, random init; batch {batch}, {steps} timed steps")

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=args.arch, pretrained=None), device)
    task, bench = _task(model.image_size, batch * max(2, args.warmup + steps))
    ctx = TaskContext(index=0, task=task, benchmark=bench, seed=0)
    method = create_method("finetune", {"train_mode": "image"})
    method.setup(model)
    method.before_task(ctx)
    print(f"{'precision':>9} {'img/s':>9} {'GFLOP/img':>10} {'TFLOP/s':>8} {'MFU':>6}")
    for precision in args.precisions.split(","):
        if precision == "bf16" and not cuda and not _cpu_bf16():
            print(f"{precision:>9}  skipped: no bf16 autocast on this CPU")
            continue
        per_image = flops_per_image(model, method, ctx, task, batch, precision)
        for compiled in (False, True) if args.compile else (False,):
            label = f"{precision}+c" if compiled else precision
            loader = make_loader(
                task.train, batch, shuffle=True, seed=0, num_workers=0, pin_memory=cuda
            )
            cfg = TrainConfig(
                iterations=args.warmup + steps,
                batch_size=batch,
                warmup_steps=0,
                precision=precision,
                compile=compiled,
            )
            marks: dict[int, float] = {}
            first, last = args.warmup, args.warmup + steps

            def after_step(state, marks=marks, first=first, last=last) -> None:
                if state.step in (first, last):
                    _sync(device)
                    marks[state.step] = time.perf_counter()

            _sync(device)
            marks[0] = time.perf_counter()  # --warmup 0: the first step is timed too
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RuntimeWarning)
                train_task(model, method, ctx, cfg, loader, after_step=after_step)
            fell_back = [w for w in caught if "train.compile" in str(w.message)]
            if fell_back:
                print(f"{label:>9}  compile failed, ran eager: {fell_back[0].message}")
                continue
            ips = steps * batch / (marks[last] - marks[first])
            achieved = ips * per_image / 1e12
            peak = peak_tflops(device, precision, args.peak_tflops)
            mfu = f"{100 * achieved / peak:5.1f}%" if peak else "  n/a"
            print(f"{label:>9} {ips:9.1f} {per_image / 1e9:10.2f} {achieved:8.2f} {mfu:>6}")
    if args.compile:
        print("(+c: train.compile true)")
    for precision in args.precisions.split(","):
        if precision == "bf16" and not cuda and not _cpu_bf16():
            continue
        print(f"attention kernel ({precision}): {attention_kernels(model, 2, precision)}")

    eval_task, eval_bench = _task(model.image_size, eval_images)
    _sync(device)
    t0 = time.perf_counter()
    rows = evaluate(model, eval_bench, 0, "bench", batch_size=eval_batch)  # one read per task
    _sync(device)
    seconds = time.perf_counter() - t0
    print(f"evaluation: {rows[0].total / seconds:.1f} images/s (batch {eval_batch}, fp32)")
    if cuda:
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


def _cpu_bf16() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.randn(4, 4) @ torch.randn(4, 4)
    except Exception:
        return False
    return True


if __name__ == "__main__":
    main()
