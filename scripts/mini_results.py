"""Run zeroshot and finetune chains on the mini benchmarks for several seeds; print the tables.

    .venv/bin/python scripts/mini_results.py --root runs/mini-results --seeds 0 1 2

Chains resume, so re-running only prints. The markdown goes into docs/mini-benchmark.md.
(Sweeps will do this through `clipcl submit`; until then this script is the reproducible recipe.)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from clipcl.workers import ChainSpec, run_chain


def _pm(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path("runs/mini-results"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--benchmarks", nargs="+", default=["mini-mtil", "mini-cil"])
    parser.add_argument("--methods", nargs="+", default=["zeroshot", "finetune"])
    args = parser.parse_args()
    for bench in args.benchmarks:
        keys = None
        lines = []
        for method in args.methods:
            results = []
            t0 = time.time()
            for seed in args.seeds:
                spec = ChainSpec.build(
                    {"model": {"arch": "tiny"}, "benchmark": bench, "method": method, "seed": seed}
                )
                results.append(run_chain(spec, args.root / "chains" / spec.chain_id))
            minutes = (time.time() - t0) / 60 / len(args.seeds)
            keys = (
                ["transfer", "avg", "last"]
                if results[0].protocol == "til"
                else ["avg", "last", "forgetting", "bwt"]
            )
            cells = [_pm([r.metrics[k] for r in results]) for k in keys]
            lines.append(f"| {method} | {' | '.join(cells)} | {len(results)} | {minutes:.1f} |")
            if results[0].protocol == "til" and method == "finetune":
                # forgetting per dataset: accuracy right after learning it vs at the end
                names = results[0].tasks
                drops = [
                    [r.matrix[i, i] - r.matrix[-1, i] for i in range(len(names) - 1)]
                    for r in results
                ]
                per = ", ".join(
                    f"{n} {statistics.mean(d[i] for d in drops):+.1f}"
                    for i, n in enumerate(names[:-1])
                )
                lines.append(f"|  ↳ drop from A[i,i] to A[T,i] (mean over seeds): {per} |")
        header = " | ".join(k.capitalize() if k != "bwt" else "BWT" for k in keys or [])
        print(f"\n### {bench}\n\n| method | {header} | seeds | min/chain |")
        print("|" + "---|" * (len(keys or []) + 3))
        print("\n".join(lines))


if __name__ == "__main__":
    main()
