"""A chain's mid-task snapshots: when one is written during a task (:class:`SnapshotHook`,
the training loop's step hook), and, on resume, which one is used and how it is put in place.

``find_snapshot`` reads the chain's snapshot and checks that it continues the next task of this
chain; ``apply_snapshot`` (after ``before_task``) checks the task's length and trainable
parameters, then restores the weights and the method's task state and returns where training
resumes. A snapshot that does not fit is reported through the chain's progress, recorded as a
``bad_snapshot`` event in ``state.json`` and removed. ``snapshot_now`` makes the snapshot of a
step. The file format and its contents are in ``workers/snapshot.py``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipcl.data import Benchmark
from clipcl.methods import Method
from clipcl.progress import ChainProgress
from clipcl.results.records import RunDir
from clipcl.workers.snapshot import (
    SnapshotError,
    TaskSnapshot,
    capture_rng,
    check_parameters,
    load_parameters,
    read_snapshot,
    trainable_parameters,
    write_snapshot,
)
from clipcl.workers.spec import ChainSpec
from clipcl.workers.stop import Preempted, StopRequest
from clipcl.workers.train import StepState, TrainResume


def find_snapshot(
    records: RunDir,
    spec: ChainSpec,
    benchmark: Benchmark,
    start: int,
    stop_at: int,
    progress: ChainProgress,
) -> TaskSnapshot | None:
    """The chain's snapshot if it continues task ``start`` of this chain; ``None`` if there is
    none. A corrupt or stale one is reported, recorded and removed. Loaded on the CPU: the
    weights are copied into the model and the optimizer moves its state to the parameters'
    device, while RNG and generator states must stay CPU tensors."""
    path = records.snapshot_path
    if start >= stop_at:  # this run trains nothing: a later one may need the snapshot
        if start == len(benchmark.tasks):
            path.unlink(missing_ok=True)  # the chain is finished
        return None
    try:
        snapshot = read_snapshot(path)
        if snapshot.chain_id != spec.chain_id:
            raise SnapshotError(f"it is of chain {snapshot.chain_id}")
        if snapshot.task != start:
            raise SnapshotError(f"it is of task {snapshot.task}, and task {start} is next")
        if snapshot.task_name != benchmark.tasks[start].name:
            raise SnapshotError(f"it is of task '{snapshot.task_name}'")
    except FileNotFoundError:
        return None
    except SnapshotError as exc:
        drop_snapshot(records, str(exc), progress)
        return None
    return snapshot


def drop_snapshot(records: RunDir, why: str, progress: ChainProgress) -> None:
    path = records.snapshot_path
    progress.message(f"ignoring the snapshot {path}: {why}")
    state = records.load_state()
    state.events.append({"event": "bad_snapshot", "detail": why, "time": time.time()})
    records.save_state(state)
    path.unlink(missing_ok=True)


def apply_snapshot(
    records: RunDir,
    snapshot: TaskSnapshot,
    model: Any,
    method: Method,
    steps: int,
    progress: ChainProgress,
) -> TrainResume | None:
    """Put the snapshot's weights and method task state in place (after ``before_task``);
    return where training resumes, or ``None`` (reported) when the snapshot does not fit."""
    try:
        if snapshot.steps != steps or not 0 <= snapshot.step <= steps:
            raise SnapshotError(f"it is of a {snapshot.steps}-step task, this one has {steps}")
        check_parameters(snapshot, model)
    except SnapshotError as exc:
        drop_snapshot(records, str(exc), progress)
        return None
    load_parameters(snapshot, model)
    try:
        method.load_task_state_dict(snapshot.method)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        records.snapshot_path.unlink(missing_ok=True)  # the next run starts the task afresh
        raise RuntimeError(
            f"the snapshot of task {snapshot.task} did not fit {method.name}'s task state "
            f"({exc}); it is removed, run the chain again"
        ) from exc
    progress.message(
        f"resuming task {snapshot.task} at step {snapshot.step}/{steps} from its snapshot"
    )
    return TrainResume(
        snapshot.step, snapshot.optimizer, snapshot.scaler, snapshot.rng, snapshot.recent
    )


def snapshot_now(
    chain_id: str, task: int, name: str, model: Any, method: Method, state: StepState
) -> TaskSnapshot:
    """The snapshot of the training state after ``state.step``."""
    return TaskSnapshot(
        chain_id=chain_id,
        task=task,
        task_name=name,
        step=state.step,
        steps=state.steps,
        params={n: p.detach() for n, p in trainable_parameters(model).items()},
        method=method.task_state_dict(),
        optimizer=state.optimizer.state_dict(),
        scaler=state.scaler.state_dict(),
        rng=capture_rng(),
        recent=list(state.recent),
    )


#: Test-only: ``"K:N"`` makes the worker SIGKILL itself after step N of task K, before that
#: step's snapshot (tests kill a chain at exact points inside tasks).
KILL_ENV = "CLIPCL_TEST_SIGKILL_AFTER"


def _kill_point() -> tuple[int, int] | None:
    value = os.environ.get(KILL_ENV)
    if not value:
        return None
    task, step = value.split(":")
    return int(task), int(step)


class SnapshotHook:
    """The step hook of one task: a snapshot every ``every_s`` seconds of training, and one on
    a stop request, after which :class:`~clipcl.workers.stop.Preempted` stops the chain.

    Args:
        path: The chain's snapshot file.
        make: Builds the snapshot of a step's :class:`~clipcl.workers.train.StepState`.
        every_s: Seconds of training between snapshots (0: only on a stop request).
        stop: The worker's stop request (``None``: no signals are handled).
        moved_on: Whether this run already finished a task (so a stop has made progress).
        first_step: The step this run started the task at.
        say: Where one line per snapshot goes (the worker log).
        task: The task index.
        before_write: Called before each snapshot is written (the training curve's points
            go to disk first, so a snapshot never holds a step whose points are lost).
    """

    def __init__(
        self,
        path: Path,
        make: Callable[[StepState], TaskSnapshot],
        every_s: float,
        stop: StopRequest | None,
        moved_on: bool,
        first_step: int,
        say: Callable[[str], None],
        task: int,
        before_write: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.make = make
        self.every_s = every_s
        self.stop = stop
        self.moved_on = moved_on
        self.first_step = first_step
        self.say = say
        self.task = task
        self.before_write = before_write
        self._last = time.monotonic()
        self._kill = _kill_point()

    def __call__(self, state: StepState) -> None:
        if self._kill == (self.task, state.step):
            os.kill(os.getpid(), signal.SIGKILL)
        stopping = self.stop is not None and self.stop.requested
        due = self.every_s > 0 and time.monotonic() - self._last >= self.every_s
        if stopping or due:
            t0 = time.monotonic()
            why = f"on {self.stop.reason}" if stopping and self.stop else "due"
            try:
                if self.before_write is not None:
                    self.before_write()
                size = write_snapshot(self.path, self.make(state))
            except OSError as exc:  # a full disk costs the snapshot, not the chain
                self.say(f"snapshot of task {self.task} at step {state.step} failed: {exc}")
            else:
                seconds = time.monotonic() - t0
                self.say(
                    f"snapshot of task {self.task} at step {state.step}/{state.steps} ({why}): "
                    f"{size / 2**20:.1f} MiB in {seconds:.2f} s"
                )
            self._last = time.monotonic()
        if stopping and self.stop is not None:
            progressed = self.moved_on or state.step > self.first_step
            raise Preempted(str(self.stop.reason), progressed)
