"""The embedded mini benchmark: 8 domains of the procedural world, ``mini-mtil`` and ``mini-cil``.

Domains whose vocabulary the pretraining captions use (shapes, colours, textures, counts,
positions, coloured shapes) are ones a CLIP pretrained on the world can classify zero-shot;
letters and digits never appear in captions (like MNIST/EuroSAT for real CLIP).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from clipcl.data import world
from clipcl.data.task import Benchmark, Task, TensorImageDataset, register_benchmark

TRAIN_PER_CLASS = 32
TEST_PER_CLASS = 16
DATA_SEED = 20_250_000
CS_COLOURS = ["red", "yellow", "green", "blue", "purple", "white"]


@dataclass(frozen=True)
class Domain:
    """One dataset of the world: its classes, prompts and how to draw an image of a class."""

    name: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]  # [0] trains, all evaluate
    sample: Callable[[torch.Generator, torch.Tensor], world.Scenes]  # labels (N,) → scenes


def _scenes(g: torch.Generator, labels: torch.Tensor, **kw) -> world.Scenes:
    n = labels.shape[0]
    n_obj = torch.ones(n, dtype=torch.long) if kw.pop("single", True) else None
    return world.sample_scenes(g, n, n_obj=kw.pop("n_obj", n_obj), **kw)


def _large(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.long)


def _cs_sample(g: torch.Generator, y: torch.Tensor) -> world.Scenes:
    colour = torch.tensor([list(world.COLOURS).index(c) for c in CS_COLOURS])[y // 8]
    return _scenes(g, y, shape=y % 8, colour=colour, size=_large(len(y)))


DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in [
        Domain(
            "shapes",
            tuple(world.SHAPES),
            ("a photo of a {}.", "a {}.", "a picture of a {} shape.", "a {} on a background."),
            lambda g, y: _scenes(g, y, shape=y, size=_large(len(y))),
        ),
        Domain(
            "colors",
            tuple(world.COLOURS),
            ("a photo of a {} object.", "a {} shape.", "something {}.", "a picture of a {} thing."),
            lambda g, y: _scenes(g, y, colour=y, size=_large(len(y))),
        ),
        Domain(
            "textures",
            tuple(world.TEXTURES),
            ("a shape on a background of {}.", "a background of {}.", "{}.", "a picture with {}."),
            lambda g, y: _scenes(g, y, texture=y, size=torch.zeros_like(y)),
        ),
        Domain(
            "counts",
            tuple(world.COUNT_WORDS),
            ("a picture of {} shapes.", "{} objects.", "{} things.", "a photo of {} shapes."),
            lambda g, y: _scenes(g, y, single=False, n_obj=y + 1),
        ),
        Domain(
            "positions",
            tuple(world.POSITIONS),
            (
                "a shape in the {}.",
                "an object in the {}.",
                "something in the {}.",
                "a photo of a shape in the {}.",
            ),
            lambda g, y: _scenes(g, y, position=y, size=torch.zeros_like(y)),
        ),
        Domain(
            "letters",
            tuple(world.LETTERS),
            ("the letter {}.", "a photo of the letter {}.", "the character {}.", "a {} sign."),
            lambda g, y: _scenes(g, y, glyph=y),
        ),
        Domain(
            "digits",
            tuple(world.DIGITS),
            ("the number {}.", "a photo of the digit {}.", "the digit {}.", "a {} sign."),
            lambda g, y: _scenes(g, y, glyph=y + len(world.LETTERS)),
        ),
        Domain(
            "colored-shapes",
            tuple(f"{c} {s}" for c in CS_COLOURS for s in world.SHAPES),
            ("a photo of a {}.", "a {}.", "a picture of a {}.", "a {} on a background."),
            _cs_sample,
        ),
    ]
}

ORDER_I = sorted(DOMAINS)  # alphabetical, as MTIL's Order I
ORDER_II = [
    "letters",
    "colors",
    "textures",
    "colored-shapes",
    "digits",
    "positions",
    "shapes",
    "counts",
]
CIL_CLASS_ORDER_SEED = 1993
CIL_TASKS = 6


def domain_split(name: str, split: str, per_class: int | None = None) -> TensorImageDataset:
    """The fixed ``train`` or ``test`` split of a domain (class-major, labels 0..C-1)."""
    domain = DOMAINS[name]
    per_class = per_class or (TRAIN_PER_CLASS if split == "train" else TEST_PER_CLASS)
    index = sorted(DOMAINS).index(name)
    g = torch.Generator().manual_seed(DATA_SEED + 2 * index + (split == "test"))
    labels = torch.arange(len(domain.classes)).repeat_interleave(per_class)
    images = world.render_chunked(domain.sample(g, labels), g)
    return TensorImageDataset(images, labels)


def domain_task(name: str) -> Task:
    d = DOMAINS[name]
    return Task(
        name, d.classes, d.templates, domain_split(name, "train"), domain_split(name, "test")
    )


MINI_TRAIN = {"iterations": 100, "batch_size": 32, "lr": 1e-4, "warmup_steps": 10}


def _mtil(order: list[str], name: str) -> Benchmark:
    return Benchmark(name=name, protocol="til", tasks=tuple(domain_task(n) for n in order))


@register_benchmark("mini-mtil", protocol="til", task_names=ORDER_I, train_defaults=MINI_TRAIN)
def mini_mtil(data_root: str | None = None) -> Benchmark:
    """Task-incremental over the 8 domains, Order I (alphabetical)."""
    return _mtil(ORDER_I, "mini-mtil")


@register_benchmark(
    "mini-mtil-order2", protocol="til", task_names=ORDER_II, train_defaults=MINI_TRAIN
)
def mini_mtil_order2(data_root: str | None = None) -> Benchmark:
    """Task-incremental over the 8 domains, Order II."""
    return _mtil(ORDER_II, "mini-mtil-order2")


def cil_class_order() -> list[int]:
    """The fixed order of the 48 coloured-shape classes (seed 1993)."""
    g = torch.Generator().manual_seed(CIL_CLASS_ORDER_SEED)
    return torch.randperm(len(DOMAINS["colored-shapes"].classes), generator=g).tolist()


def _subset(ds: TensorImageDataset, classes: list[int]) -> TensorImageDataset:
    remap = {c: i for i, c in enumerate(classes)}
    keep = torch.isin(ds.labels, torch.tensor(classes))
    labels = torch.tensor([remap[int(y)] for y in ds.labels[keep]])
    return TensorImageDataset(ds.images[keep], labels)


@register_benchmark(
    "mini-cil",
    protocol="cil",
    task_names=[f"cs-{i + 1}" for i in range(CIL_TASKS)],
    train_defaults=MINI_TRAIN,
)
def mini_cil(data_root: str | None = None) -> Benchmark:
    """The 48 coloured-shape classes, class-incremental in 6 tasks of 8 (fixed class order)."""
    d = DOMAINS["colored-shapes"]
    train, test = domain_split(d.name, "train"), domain_split(d.name, "test")
    order = cil_class_order()
    per = len(order) // CIL_TASKS
    tasks = []
    for t in range(CIL_TASKS):
        cls = order[t * per : (t + 1) * per]
        tasks.append(
            Task(
                f"cs-{t + 1}",
                tuple(d.classes[c] for c in cls),
                d.templates,
                _subset(train, cls),
                _subset(test, cls),
            )
        )
    return Benchmark(name="mini-cil", protocol="cil", tasks=tuple(tasks))


def reference_set(n: int = 2048) -> tuple[torch.Tensor, list[str]]:
    """Held-out images and captions of the world for ZSCL-style distillation (never trained on:
    pretraining seeds are below 10**9)."""
    return world.sample_pretraining_batch(10**9 + 7, n)
