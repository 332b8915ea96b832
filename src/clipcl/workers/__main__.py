"""The chain worker's entry point: ``python -m clipcl.workers --run-dir DIR``.

Owns the contract between a backend and one chain: the run directory holds ``spec.json``
(written by the coordinator); the worker holds the chain's lock (one live worker per chain),
records its PID in ``worker.pid``, runs or resumes the chain with
:func:`clipcl.workers.run_chain` and prints the result as one JSON line on stdout. Progress
goes to stderr. Exit codes: 0 done, 2 bad input (``ClipclError``, one line on
stderr), 1 anything else (traceback on stderr), 75 (:data:`~clipcl.workers.stop.EXIT_PREEMPTED`)
stopped on SIGTERM or SIGUSR2 after snapshotting the step in progress: run it again to resume;
76 (:data:`~clipcl.workers.stop.EXIT_SUPERSEDED`) a newer attempt of the chain began, so this
one stopped before its next write.

Backends that run chains in-process (Ray) call :func:`run_chain_dir` directly. This module
never imports an orchestration framework.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from clipcl.errors import ClipclError
from clipcl.results.records import RunDir, Superseded
from clipcl.validation import validate
from clipcl.workers.chain import ChainProgress, run_chain
from clipcl.workers.spec import ChainSpec
from clipcl.workers.stop import (
    EXIT_PREEMPTED,
    EXIT_SUPERSEDED,
    Preempted,
    StopRequest,
    stop_on_signals,
)


class StreamProgress(ChainProgress):
    """Plain-text progress for ``worker.log``: one line per message, task start and task end."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        self._say(text)

    def task_started(self, index: int, name: str, steps: int) -> None:
        self._say(f"task {index} ({name}): training {steps} steps")

    def task_finished(self, index: int, name: str, accuracies: list[float]) -> None:
        accs = " ".join(f"{a:.1f}" for a in accuracies)
        self._say(f"task {index} ({name}) finished; accuracies: {accs}")


def load_spec(run_dir: Path) -> ChainSpec:
    """The validated ``ChainSpec`` in ``run_dir``'s ``spec.json`` (``ClipclError`` if bad)."""
    records = RunDir(run_dir)
    return validate(ChainSpec, records.read_spec(), str(records.spec_path))


def run_chain_dir(
    run_dir: str | Path,
    data_root: str | None = None,
    device: str | None = None,
    *,
    threads: int | None = None,
    progress: ChainProgress | None = None,
    until_task: int | None = None,
    stop: StopRequest | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Run or resume the chain whose spec is ``run_dir/spec.json``; return its result JSON.

    Args:
        run_dir: The chain's run directory (must hold ``spec.json``).
        data_root: Where benchmark data lives (``None``: the benchmark's default).
        device: ``cpu``, ``cuda`` or ``cuda:N`` (``None``: CUDA when visible, else CPU).
        threads: Torch intra-op threads (``None``: leave as is).
        progress: A ``ChainProgress`` receiving events (``None``: none).
        until_task: Stop once tasks ``0..until_task-1`` are finished (``None``: all).
        stop: The stop request the caller's signal handlers set (``None``: SIGTERM and
            SIGUSR2 set one here, in the main thread).
        started_at: When this attempt began (the worker process's start; ``None``: now),
            for the startup time the first task records.

    Returns:
        ``ChainResult.to_json()`` of the finished chain.

    Raises:
        ClipclError: The spec or the inputs it names are invalid.
        Preempted: A stop was requested; the step in progress is snapshotted.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ClipclError(f"run directory not found: {run_dir}")
    spec = load_spec(run_dir)
    records = RunDir(run_dir)
    with records.lock(spec.chain_id):  # before the pid file: a refused worker writes none
        records.write_pid()
        if threads is not None and threads > 0:
            torch.set_num_threads(threads)
        own = stop is None
        stop = stop or StopRequest()
        with stop_on_signals(stop) if own else contextlib.nullcontext(stop):
            result = run_chain(
                spec,
                run_dir,
                data_root=data_root,
                device=device,
                progress=progress,
                until_task=until_task,
                stop=stop,
                started_at=started_at,
            )
    return result.to_json()


def process_started_at() -> float | None:
    """When this process started (Linux ``/proc``), ``None`` where it cannot be read."""
    import os
    import time

    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return started if started <= time.time() else None


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m clipcl.workers",
        description="Run or resume the chain in a run directory (reads DIR/spec.json).",
    )
    parser.add_argument("--run-dir", required=True, help="The chain's run directory.")
    parser.add_argument("--data-root", default=None, help="Benchmark data root.")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N.")
    parser.add_argument("--threads", type=int, default=None, help="Torch CPU threads.")
    parser.add_argument(
        "--until-task",
        type=int,
        default=None,
        help="Stop once tasks 0..N-1 are finished (default: run every task).",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, started_at: float | None = None) -> int:
    """Run the worker; return the process exit code (0 done, 2 bad input, 1 bug, 75 stopped
    on a signal). ``started_at``: when the worker process started (see
    :func:`run_chain_dir`)."""
    args = _parse_args(argv)
    try:
        out = run_chain_dir(
            args.run_dir,
            args.data_root,
            args.device,
            threads=args.threads,
            progress=StreamProgress(sys.stderr),
            until_task=args.until_task,
            started_at=started_at,
        )
    except Superseded as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return EXIT_SUPERSEDED
    except ClipclError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Preempted as exc:
        print(f"{exc}; run the worker again to resume", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    except Exception:
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        return 1
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(started_at=process_started_at()))
