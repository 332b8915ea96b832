"""Images/s of the training input pipeline for a real on-disk dataset, with and without the
pre-resized cache (``clipcl data cache``).

Writes an ImageFolder-style dataset of JPEG photos (default 500×375, the size of a typical
Food-101/SUN397 image) to a temporary directory, then iterates a training DataLoader (shuffled,
batch 64, ``--workers`` processes, pinned memory on CUDA) over (a) the JPEG files, decoded and
resized to 224 per access, and (b) the memory-mapped cache. Prints both rates and their ratio,
measured in this run. No asserts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipcl.data.real.base import FileImageDataset, RealDataset, Splits
from clipcl.data.real.cache import load_splits, write_cache
from clipcl.workers.train import make_loader


class _Folder(RealDataset):
    name = "bench-folder"
    folder = "bench-folder"
    how_to_get = "written by bench/dataloader.py"
    templates = ("a photo of a {}.",)

    def expected(self) -> list[str]:
        return ["train/"]

    def load(self, data_root) -> Splits:
        root = self.root(data_root)
        classes = sorted(p.name for p in (root / "train").iterdir())
        paths, labels = [], []
        for i, c in enumerate(classes):
            for f in sorted((root / "train" / c).glob("*.jpg")):
                paths.append(f)
                labels.append(i)
        ds = FileImageDataset(paths, labels)
        return Splits(tuple(classes), ds, FileImageDataset(paths[:64], labels[:64]))


def _write(root: Path, n: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / "bench-folder" / "train" / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        # smooth random colour fields compress like photos (noise would be unrealistically big)
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        img.save(d / f"{i:05d}.jpg", quality=90)


def _rate(dataset, batches: int, workers: int) -> float:
    loader = make_loader(
        dataset,
        64,
        shuffle=True,
        seed=0,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
    )
    it = iter(loader)
    next(it)  # start-up (worker processes) is not counted
    t0 = time.perf_counter()
    seen = 0
    for _ in range(batches):
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        seen += len(x)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(root, args.images, (args.width, args.height))
        ds = _Folder()
        files = ds.load(root).train
        t0 = time.perf_counter()
        write_cache(ds, root, num_workers=args.workers)
        build_s = time.perf_counter() - t0
        cached = load_splits(ds, root).train
        r_files = _rate(files, args.batches, args.workers)
        r_cache = _rate(cached, args.batches, args.workers)
    print(
        f"{args.images} JPEGs {args.width}x{args.height} -> 224, batch 64, {args.workers} workers"
    )
    print(f"  JPEG files (decode + resize per access): {r_files:8.0f} images/s")
    print(f"  pre-resized cache (memory-mapped):        {r_cache:8.0f} images/s")
    print(f"  ratio cache / files: {r_cache / r_files:.1f}x; cache built in {build_s:.1f} s")


if __name__ == "__main__":
    main()
