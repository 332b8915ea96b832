"""Orchestration overhead, measured in one run on this machine (no asserts).

1. N short chains through ``clipcl submit --backend ray --follow`` versus ``run_chain`` called in
   a loop (goal: ratio <= 1.10 plus Ray start-up, which is printed separately).
2. Planning a 10 000-chain sweep: load + expand + per-chain state lookup (goal < 2 s).
3. ``status`` on 10 000 chains: ingest + progress query + table (goal < 1 s).
4. The results table from 1 000 000 evaluation rows (goal < 3 s): runs bench/results_table.py.
With ``--store postgresql://...`` (or ``$CLIPCL_STORE``), 3 and 4 are measured on that
PostgreSQL store too (lines marked ``[postgresql]``).

5. ``clipcl plan`` as a whole process (imports included) for 10 000 chains (goal < 2 s) and
   100 000 chains (goal < 15 s and < 1 GB max RSS).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _sweep(path: Path, chains: int, iterations: int) -> None:
    seeds = ", ".join(str(s) for s in range(chains))
    path.write_text(
        f"name: bench\nbenchmarks: [smoke]\nmethods: {{finetune: {{}}}}\n"
        f"train: {{iterations: {iterations}, batch_size: 16, warmup_steps: 2}}\n"
        f"seeds: [{seeds}]\nresources: {{cpus: 1}}\n"
    )


def ray_vs_direct(chains: int, iterations: int) -> None:
    import torch  # here, not at the top: a forked child's max RSS counts the parent's pages

    from clipcl.sweeps import expand, load_sweep
    from clipcl.workers import run_chain

    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "bench.yaml"
        _sweep(sweep, chains, iterations)
        torch.set_num_threads(1)  # as a 1-cpu job
        t0 = time.perf_counter()
        for e in expand(load_sweep(sweep), str(sweep)):
            run_chain(e.spec, Path(tmp) / "direct" / e.chain_id)
        direct = time.perf_counter() - t0
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "clipcl.cli",
                "submit",
                str(sweep),
                "--backend",
                "ray",
                "--root",
                str(Path(tmp) / "ray"),
                "--follow",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        via_ray = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import ray; ray.init(address='local', "
                "include_dashboard=False, num_cpus=2); ray.shutdown()",
            ],
            capture_output=True,
            check=True,
        )
        ray_start = time.perf_counter() - t0
    n = len(re.findall(r"^\S+ [0-9a-f]{12} done$", proc.stderr, flags=re.M))
    print(
        f"{chains} chains x {iterations} it: direct loop {direct:.1f} s; clipcl submit --backend "
        f"ray --follow {via_ray:.1f} s ({n} done); ratio {via_ray / direct:.2f} "
        f"(Ray start-up + shutdown alone {ray_start:.1f} s; ratio without it "
        f"{(via_ray - ray_start) / direct:.2f}; the submit runs up to 2 chains at once)"
    )


def plan_and_status(chains: int, url: str | None = None) -> None:
    from clipcl.orchestrator.plan import plan
    from clipcl.results.store import ResultsStore

    tag = "[postgresql] " if url else ""
    env = {k: v for k, v in os.environ.items() if k != "CLIPCL_STORE"}
    if url:
        env["CLIPCL_STORE"] = url
        os.environ["CLIPCL_STORE"] = url
    else:
        os.environ.pop("CLIPCL_STORE", None)

    with tempfile.TemporaryDirectory() as tmp:
        sweep_path = Path(tmp) / "big.yaml"
        _sweep(sweep_path, chains, 5)
        root = Path(tmp) / "root"
        t0 = time.perf_counter()
        the_plan = plan(sweep_path, root)
        plan_s = time.perf_counter() - t0
        if not url:
            print(
                f"plan() of a {len(the_plan.chains)}-chain sweep in-process (load + expand + "
                f"records + owners): {plan_s:.2f} s ({plan_s / 2:.2f} x goal)"
            )
        with ResultsStore(root) as store:
            store.record_sweep("bench", str(sweep_path), {}, the_plan.records())
        t0 = time.perf_counter()
        with ResultsStore(root) as store:
            store.ingest_root(root)
            rows = store.chain_progress("bench")
        status_s = time.perf_counter() - t0
        print(
            f"{tag}status of {len(rows)} chains in-process (open store + ingest + query): "
            f"{status_s:.2f} s ({status_s:.2f} x goal)"
        )
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "clipcl.cli", "status", str(sweep_path), "--root", str(root)],
            capture_output=True,
            check=True,
            env=env,
        )
        whole = time.perf_counter() - t0
        if url:
            _drop_schema(url, root)
        print(
            f"{tag}`clipcl status` of {len(rows)} chains, whole process: {whole:.2f} s "
            f"({whole:.2f} x goal)"
        )


def _drop_schema(url: str, root: Path) -> None:
    import psycopg

    from clipcl.results.pg import root_schema

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {root_schema(root)} CASCADE")
        conn.execute("DELETE FROM clipcl.roots WHERE schema_name = %s", (root_schema(root),))


#: (chains, seconds, max RSS in GB) goals of ``clipcl plan`` as a whole process.
PLAN_GOALS = ((10_000, 2.0, None), (100_000, 15.0, 1.0))


def plan_process(chains: int, goal_s: float, goal_gb: float | None) -> None:
    """Time ``python -m clipcl.cli plan`` of a ``chains``-chain sweep; report its max RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        sweep_path = Path(tmp) / "big.yaml"
        _sweep(sweep_path, chains, 5)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "clipcl.cli", "plan", str(sweep_path), "--root", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # this child's own usage (its max RSS includes what it shared with this process when
        # forked: this module imports nothing heavy before it)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"clipcl plan of {chains} chains failed")
        rss_gb = usage.ru_maxrss / 2**20  # KiB on Linux
        memory = f" ({rss_gb / goal_gb:.2f} x goal)" if goal_gb else ""
        print(
            f"`clipcl plan` of {chains} chains, whole process: {wall:.2f} s "
            f"({wall / goal_s:.2f} x goal), max RSS {rss_gb:.2f} GB{memory}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--plan-chains", type=int, default=10_000)
    parser.add_argument(
        "--store",
        default=os.environ.get("CLIPCL_STORE"),
        help="also measure status and the table on this PostgreSQL store",
    )
    args = parser.parse_args()
    for chains, goal_s, goal_gb in PLAN_GOALS:
        plan_process(chains, goal_s, goal_gb)
    plan_and_status(args.plan_chains)
    if args.store:
        plan_and_status(args.plan_chains, args.store)
    table = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("results_table.py")),
            "--repeats",
            "1",
            "--ingest",
            "100",
            *(["--store", args.store] if args.store else []),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in table.stdout.splitlines():
        if "eval rows," in line or "end to end" in line:
            print(f"results table: {line.strip()}")
    if args.chains > 0:
        ray_vs_direct(args.chains, args.iterations)


if __name__ == "__main__":
    main()
