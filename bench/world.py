"""Speed of the procedural world generator: images/s for scenes, pretraining batches and a split.

Prints images/s on one thread and on all threads, measured in this run. No asserts.
"""

from __future__ import annotations

import argparse
import time

import torch

from clipcl.data import world
from clipcl.data.mini import domain_split


def _rate(fn, n: int, repeats: int) -> float:
    fn()  # warm-up (glyph bank, allocator)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4096, help="images per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.n
    rows = []
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        g = torch.Generator().manual_seed(0)
        scenes = world.sample_scenes(g, n)
        rows.append(
            (
                threads,
                "render (objects)",
                _rate(lambda s=scenes, g=g: world.render_chunked(s, g), n, args.repeats),
            )
        )
        glyphs = world.sample_scenes(g, n, glyph=torch.randint(36, (n,), generator=g))
        rows.append(
            (
                threads,
                "render (glyphs)",
                _rate(lambda s=glyphs, g=g: world.render_chunked(s, g), n, args.repeats),
            )
        )
        rows.append(
            (
                threads,
                "pretraining batch + captions",
                _rate(lambda: world.sample_pretraining_batch(1, n), n, args.repeats),
            )
        )
        per = max(1, n // 48)
        rows.append(
            (
                threads,
                "colored-shapes split",
                _rate(
                    lambda per=per: domain_split("colored-shapes", "train", per_class=per),
                    per * 48,
                    args.repeats,
                ),
            )
        )
    print(f"{'threads':>7}  {'what':30s} {'images/s':>10}")
    for threads, what, rate in rows:
        print(f"{threads:>7}  {what:30s} {rate:>10.0f}")


if __name__ == "__main__":
    main()
