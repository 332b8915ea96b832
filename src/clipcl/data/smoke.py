"""``smoke``: a three-task procedural benchmark that trains in seconds (colours, shapes, stripes).

Images are 32×32 uint8 tensors generated in a vectorised way from a fixed data seed, so every run
and every machine sees the same pixels.
"""

from __future__ import annotations

import math

import torch

from clipcl.data.task import Benchmark, Task, TensorImageDataset, register_benchmark

SIZE = 32
DATA_SEED = 1234
TRAIN_PER_CLASS = 48
TEST_PER_CLASS = 16

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
}


def _grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    return xs.float().expand(n, SIZE, SIZE), ys.float().expand(n, SIZE, SIZE)


def _noise(g: torch.Generator, n: int, scale: float) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=g) * scale  # (N, 3, S, S)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 255).round().to(torch.uint8)


def _colours(g: torch.Generator, label: torch.Tensor) -> torch.Tensor:
    rgb = torch.tensor(list(COLOURS.values()), dtype=torch.float32)[label]  # (N, 3)
    shade = 0.75 + 0.5 * torch.rand(label.shape[0], 1, generator=g)  # (N, 1)
    img = (rgb * shade)[:, :, None, None].expand(-1, -1, SIZE, SIZE)
    return img + _noise(g, label.shape[0], 20.0)


def _shapes(g: torch.Generator, label: torch.Tensor) -> torch.Tensor:
    n = label.shape[0]
    xs, ys = _grid(n)
    cx = 10 + 12 * torch.rand(n, 1, 1, generator=g)
    cy = 10 + 12 * torch.rand(n, 1, 1, generator=g)
    r = 6 + 4 * torch.rand(n, 1, 1, generator=g)
    dx, dy = xs - cx, ys - cy
    masks = torch.stack(
        [
            (dx**2 + dy**2) <= r**2,  # circle
            (dx.abs() <= r * 0.85) & (dy.abs() <= r * 0.85),  # square
            (dy <= r * 0.8) & (dy >= -r) & (dx.abs() <= (dy + r) / 2),  # triangle
            ((dx.abs() <= r / 3) | (dy.abs() <= r / 3))
            & (dx.abs() <= r)
            & (dy.abs() <= r),  # cross
        ],
        dim=1,
    )  # (N, 4, S, S)
    mask = masks[torch.arange(n), label].float()[:, None]  # (N, 1, S, S)
    fg = 120 + 135 * torch.rand(n, 3, 1, 1, generator=g)
    bg = 60 * torch.rand(n, 3, 1, 1, generator=g)
    return mask * fg + (1 - mask) * bg + _noise(g, n, 12.0)


def _stripes(g: torch.Generator, label: torch.Tensor) -> torch.Tensor:
    n = label.shape[0]
    xs, ys = _grid(n)
    period = 4 + 4 * torch.rand(n, 1, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
    waves = torch.stack(
        [
            torch.sin(2 * math.pi * ys / period + phase),  # horizontal
            torch.sin(2 * math.pi * xs / period + phase),  # vertical
            torch.sin(2 * math.pi * (xs + ys) / (period * 1.41) + phase),  # diagonal
            torch.sin(2 * math.pi * xs / period + phase)
            * torch.sin(2 * math.pi * ys / period),  # checks
        ],
        dim=1,
    )  # (N, 4, S, S)
    w = (waves[torch.arange(n), label] > 0).float()[:, None]
    fg = 150 + 100 * torch.rand(n, 3, 1, 1, generator=g)
    return w * fg + (1 - w) * 30 + _noise(g, n, 15.0)


_TASKS = {
    "colors": (list(COLOURS), ("a {} image.", "a photo that is {}.", "the colour {}."), _colours),
    "shapes": (
        ["circle", "square", "triangle", "cross"],
        ("a {}.", "a drawing of a {}.", "a photo of a {} shape."),
        _shapes,
    ),
    "stripes": (
        ["horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard"],
        ("a pattern of {}.", "{}.", "a texture with {}."),
        _stripes,
    ),
}


def _split(gen_fn, num_classes: int, per_class: int, seed: int) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(num_classes).repeat_interleave(per_class)
    return TensorImageDataset(_to_uint8(gen_fn(g, label)), label)


@register_benchmark(
    "smoke",
    protocol="til",
    task_names=list(_TASKS),
    train_defaults={"iterations": 60, "batch_size": 32, "lr": 1e-3, "warmup_steps": 10},
)
def smoke_benchmark(data_root: str | None = None) -> Benchmark:
    """Three 4-class task-incremental tasks, 192 train / 64 test images each."""
    tasks = []
    for k, (name, (classes, templates, fn)) in enumerate(_TASKS.items()):
        tasks.append(
            Task(
                name=name,
                class_names=tuple(classes),
                templates=templates,
                train=_split(fn, len(classes), TRAIN_PER_CLASS, DATA_SEED + 2 * k),
                test=_split(fn, len(classes), TEST_PER_CLASS, DATA_SEED + 2 * k + 1),
            )
        )
    return Benchmark(name="smoke", protocol="til", tasks=tuple(tasks))
