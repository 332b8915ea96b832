"""``run_chain``: train one model task after task, checkpoint, evaluate, record — resumably.

Per task ``k``: seed → ``before_task`` → train → ``after_task`` → checkpoint (atomic, SHA-256)
→ evaluate every eval task → append rows (fsync) → mark ``k`` finished in ``state.json``.
Re-running the same spec in the same run directory resumes after the last finished task whose
checkpoint verifies; a missing or corrupt checkpoint sends that task back to be recomputed.
Every task is seeded from (seed, k) alone, so a resumed chain is bit-identical on CPU; that
derived seed is also the hook context's ``TaskContext.seed``, from which methods seed their own
generators.

While training, the loss curve is written to ``train.jsonl`` (results/curves.py): its points
are flushed before every snapshot and at the end of the task, before the checkpoint.

Inside a task, a snapshot (workers/midtask.py, workers/snapshot.py) is written every
``checkpoint_every_min`` minutes of training and when a stop is requested (workers/stop.py);
resuming prefers it: task k − 1's checkpoint, then task k's seeding and ``before_task``, then the
snapshot's weights, method task state, optimizer, RNGs and data position. A snapshot of another
chain, task or training length, or a corrupt one, is reported, recorded as an event and ignored.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipcl.data import Benchmark, get_benchmark, make_loader
from clipcl.methods import Method, TaskContext, method_class
from clipcl.models import (
    CheckpointError,
    build_model,
    device_name,
    gpu_uuid,
    load_checkpoint,
    pick_device,
    save_checkpoint,
)
from clipcl.progress import ChainProgress
from clipcl.results.curves import TrainLog
from clipcl.results.metrics import cil_metrics, mtil_metrics
from clipcl.results.provenance import where_this_runs
from clipcl.results.records import ZEROSHOT, ChainBusy, RunDir, TaskRecord  # noqa: F401
from clipcl.workers.evaluate import evaluate, evaluate_heldout
from clipcl.workers.midtask import SnapshotHook, apply_snapshot, find_snapshot, snapshot_now
from clipcl.workers.snapshot import TaskSnapshot, capture_rng, restore_rng
from clipcl.workers.spec import ChainSpec
from clipcl.workers.stop import Preempted, StopRequest
from clipcl.workers.train import StepState, train_task


@dataclass
class ChainResult:
    """Outcome of a finished chain."""

    chain_id: str
    protocol: str
    tasks: list[str]
    matrix: np.ndarray  # (T, T) percent; NaN where not evaluated (CIL upper triangle)
    counts: np.ndarray  # (T,) test images per eval task
    zeroshot: np.ndarray  # (T,) accuracy of the pretrained model
    metrics: dict[str, Any] = field(default_factory=dict)
    trained_now: list[int] = field(default_factory=list)  # tasks (re)trained by this call

    def to_json(self) -> dict[str, Any]:
        def clean(a: np.ndarray) -> list:
            return [None if np.isnan(v) else round(float(v), 6) for v in a]

        return {
            "chain_id": self.chain_id,
            "protocol": self.protocol,
            "tasks": self.tasks,
            "matrix": [clean(r) for r in self.matrix],
            "zeroshot": clean(self.zeroshot),
            "metrics": self.metrics,
        }


def seed_everything(seed: int, task_index: int) -> int:
    """Seed python, numpy and torch from (chain seed, task index); return the derived seed."""
    derived = (seed * 1_000_003 + task_index + 1) % (2**31)
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)
    return derived


def chain_metrics(protocol: str, matrix: np.ndarray, counts: np.ndarray) -> dict[str, Any]:
    if protocol == "til":
        return mtil_metrics(matrix).to_dict()
    return cil_metrics(matrix, counts=list(counts)).to_dict()


def _resume(records: RunDir, model, method: Method, progress: ChainProgress) -> int:
    """Restore the latest finished task with a valid checkpoint; return the next task index.

    Only tasks whose rows are all there count as finished (:meth:`RunDir.verified_state`)."""
    state = records.verified_state()
    start = 0
    for k in sorted(state.completed, reverse=True):
        info = state.completed[k]
        if info.checkpoint is None and not method.trains:
            start = k + 1
            break
        if info.checkpoint is None:
            continue
        try:
            ckpt = load_checkpoint(
                records.path / info.checkpoint, info.sha256, map_location=model.device
            )
        except CheckpointError as exc:
            progress.message(f"{exc}; task {k} will be recomputed")
            state.events.append(
                {"event": "bad_checkpoint", "task": k, "detail": str(exc), "time": time.time()}
            )
            continue
        model.load_state_dict(ckpt["model"])
        method.load_state_dict(ckpt["method"])
        start = k + 1
        break
    state.completed = {k: v for k, v in state.completed.items() if k < start}
    records.save_state(state)
    return start


def _prune_checkpoints(records: RunDir, keep: int) -> None:
    if keep <= 0:
        return
    records.guard()
    state = records.load_state()
    with_ckpt = sorted(k for k, v in state.completed.items() if v.checkpoint)
    for k in with_ckpt[:-keep]:
        (records.path / str(state.completed[k].checkpoint)).unlink(missing_ok=True)
        state.completed[k].checkpoint = None
    records.save_state(state)


def load_result(
    spec: ChainSpec,
    benchmark: Benchmark,
    records: RunDir,
    trained_now: list[int] | None = None,
) -> ChainResult:
    """Assemble the accuracy matrix and metrics from a chain's durable records."""
    T = len(benchmark.tasks)
    matrix, counts = records.matrix(T)
    result = ChainResult(
        spec.chain_id,
        benchmark.protocol,
        benchmark.task_names,
        matrix,
        counts,
        records.zeroshot_accuracies(T),
        trained_now=trained_now or [],
    )
    if records.tasks_done() == T:
        result.metrics = chain_metrics(benchmark.protocol, matrix, counts)
    return result


def _with_curve(curve: TrainLog, hook: SnapshotHook) -> Callable[[StepState], None]:
    """The step hook: the training curve's point when due, then the snapshot hook."""

    def after_step(state: StepState) -> None:
        if curve.due(state.step):  # tensors: read back to the host when the curve is flushed
            curve.record(state.step, state.loss_tensor, state.lr, state.terms)
        hook(state)

    return after_step


def _with_in_task_eval(
    inner: Callable[[StepState], None],
    every: int,
    run: Callable[[], list],
    records: RunDir,
) -> Callable[[StepState], None]:
    """The step hook with an in-task evaluation every ``every`` steps (not after the last: the
    task's own evaluation follows), written before ``inner`` (the snapshot hook) so a snapshot
    of that step never lacks its rows. Training is unchanged: ``run`` puts every module's
    train/eval mode back, and every global RNG returns to its state before the evaluation."""

    def after_step(state: StepState) -> None:
        if state.step % every == 0 and state.step < state.steps:
            rng = capture_rng()
            try:
                rows = run()
            finally:
                restore_rng(rng)
            records.append_intask_rows([replace(r, step=state.step) for r in rows])
        inner(state)

    return after_step


def chain_lock(run_dir: Path, chain_id: str) -> contextlib.AbstractContextManager[None]:
    """The chain's lock (see :meth:`RunDir.lock`)."""
    return RunDir(run_dir).lock(chain_id)


def chain_locked(run_dir: Path) -> bool:
    """Whether another live process holds the chain's lock (see :meth:`RunDir.locked`)."""
    return RunDir(run_dir).locked()


def run_chain(
    spec: ChainSpec,
    run_dir: Path,
    *,
    data_root: str | None = None,
    device: str | None = None,
    progress: ChainProgress | None = None,
    until_task: int | None = None,
    stop: StopRequest | None = None,
    started_at: float | None = None,
) -> ChainResult:
    """Run (or resume) the chain ``spec`` in ``run_dir``; return its matrix and metrics.

    ``until_task``: stop once tasks ``0..until_task-1`` are finished (one Slurm job per task
    runs a chain piecewise); ``None`` runs every task. ``stop``: polled after every step and
    between tasks; once requested, the chain snapshots and raises
    :class:`~clipcl.workers.stop.Preempted`. ``started_at``: when this attempt began (``None``:
    now); the first task it finishes records the time from then to its start as
    ``startup_seconds`` (imports, model, zero-shot row, resume).
    """
    started_at = time.time() if started_at is None else started_at
    progress = progress or ChainProgress()
    records = RunDir(run_dir)
    benchmark = get_benchmark(spec.benchmark, data_root=data_root)
    dev = pick_device(device)
    seed_everything(spec.seed, -1)  # random-init weights (pretrained: none) depend on the seed
    model = build_model(spec.model, dev)
    method = method_class(spec.method_spec.name)(spec.method_spec.config)
    method.check_model(model)
    heldout: list = []
    if spec.eval.extra:
        from clipcl.data.real.benchmarks import load_heldout

        heldout = load_heldout(spec.eval.extra, data_root)
    # only once inputs are known good: bad input writes nothing
    records.place_spec(spec, len(benchmark.tasks))
    with records.lock(spec.chain_id):
        # the newest attempt is the one writer, even where the lock fails (network FS, a
        # requeued copy on another node): every write of an older one raises Superseded
        records.begin_attempt({**where_this_runs(), "started_at": time.time()})
        return _run_locked(
            spec,
            records,
            benchmark,
            model,
            method,
            dev,
            progress,
            until_task,
            data_root,
            stop,
            started_at,
            heldout,
        )


def _run_locked(
    spec: ChainSpec,
    records: RunDir,
    benchmark: Benchmark,
    model: Any,
    method: Method,
    dev: torch.device,
    progress: ChainProgress,
    until_task: int | None = None,
    data_root: str | None = None,
    stop: StopRequest | None = None,
    started_at: float | None = None,
    heldout: list | None = None,
) -> ChainResult:
    progress.message(
        f"chain {spec.chain_id}: {spec.method_name} on {spec.benchmark} "
        f"(seed {spec.seed}) → {records.path}"
    )

    # Auto loader workers follow the job's CPU threads (set from its cpus by every backend).
    workers = spec.train.workers_on(dev.type, torch.get_num_threads())
    if workers != (spec.train.num_workers or 0):
        progress.message(f"{workers} loader worker(s) (train.num_workers: auto on {dev.type})")
    how: dict[str, Any] = {  # every evaluation of the chain runs so
        "batch_size": spec.eval.batch_on(dev.type),
        "precision": spec.train.precision,
        "num_workers": workers,
    }

    def evaluate_after(index: int) -> list:
        chain_method = None if index == ZEROSHOT else method
        return evaluate(model, benchmark, index, spec.chain_id, method=chain_method, **how)

    def evaluate_in_task(index: int) -> Callable[[], list]:
        """The in-task evaluation of task ``index`` (``eval.interval_tasks``)."""
        only = index if spec.eval.interval_tasks == "current" else None

        def run() -> list:
            modes = {m: m.training for m in model.modules()}  # evaluate() sets eval mode
            try:
                return evaluate(
                    model, benchmark, index, spec.chain_id, method=method, only=only, **how
                )
            finally:
                for module, training in modes.items():
                    module.training = training

        return run

    def heldout_after(index: int) -> None:
        """The held-out sets' rows after task ``index``, before the task counts as done."""
        if not heldout:
            return
        name = "zeroshot" if index == ZEROSHOT else benchmark.tasks[index].name
        rows = evaluate_heldout(model, heldout, index, name, spec.chain_id, **how)
        records.append_heldout_rows(rows)

    if not records.load_state().zeroshot_done:
        progress.message("evaluating the pretrained model (zero-shot row)")
        records.append_rows(evaluate_after(ZEROSHOT))
        heldout_after(ZEROSHOT)
        state = records.load_state()
        state.zeroshot_done, state.zeroshot_attempt = True, records.attempt
        records.save_state(state)
    # After the zero-shot row: that row is the pretrained CLIP, before any prompt or adapter.
    method.setup(model)

    start = _resume(records, model, method, progress)
    if start == len(benchmark.tasks):
        progress.message(f"all {start} tasks already finished")
    elif start > 0:
        progress.message(f"resuming after task {start} of {len(benchmark.tasks)}")
    stop_at = len(benchmark.tasks) if until_task is None else min(until_task, len(benchmark.tasks))
    if start < stop_at < len(benchmark.tasks):
        progress.message(f"this job runs tasks {start}..{stop_at - 1}")
    trained_now: list[int] = []
    batch = spec.train.batch_size
    where = where_this_runs()
    snapshot = find_snapshot(records, spec, benchmark, start, stop_at, progress)
    for k in range(start, stop_at):
        if stop is not None and stop.requested:
            progress.message(f"stopping before task {k}: {stop.reason}")
            raise Preempted(str(stop.reason), bool(trained_now))
        task = benchmark.tasks[k]
        derived = seed_everything(spec.seed, k)
        loader = make_loader(
            task.train,
            spec.train.batch_size,
            shuffle=True,
            seed=derived,
            num_workers=workers,
            pin_memory=dev.type == "cuda",
        )
        ctx = TaskContext(
            index=k,
            task=task,
            benchmark=benchmark,
            seed=derived,
            data_root=data_root,
            steps=spec.train.steps_for(len(loader)) if method.trains else None,
        )
        t0 = time.time()
        trained = 0
        method.before_task(ctx)
        if method.trains:
            steps = spec.train.steps_for(len(loader))
            resume = None
            if snapshot is not None and snapshot.task == k:
                resume = apply_snapshot(records, snapshot, model, method, steps, progress)
            progress.task_started(k, task.name, steps)

            def on_step(step: int, steps: int, loss: float, k: int = k) -> None:
                progress.step(k, step, steps, loss)

            def make(state: StepState, k: int = k, name: str = task.name) -> TaskSnapshot:
                records.guard()  # a superseded copy writes no snapshot
                return snapshot_now(spec.chain_id, k, name, model, method, state)

            curve = TrainLog(records.train_path, k, steps, resume.step if resume else 0)

            def flush_curve(curve: TrainLog = curve) -> None:
                records.guard()
                curve.flush()

            hook = SnapshotHook(
                records.snapshot_path,
                make,
                spec.checkpoint_every_min * 60,
                stop,
                bool(trained_now),
                resume.step if resume is not None else 0,
                progress.message,
                k,
                flush_curve,
            )
            step_hook = _with_curve(curve, hook)
            if spec.eval.interval_steps is not None:
                step_hook = _with_in_task_eval(
                    step_hook, spec.eval.interval_steps, evaluate_in_task(k), records
                )
            train_task(
                model,
                method,
                ctx,
                spec.train,
                loader,
                on_step=on_step,
                resume=resume,
                after_step=step_hook,
            )
            flush_curve()
            trained = steps - (resume.step if resume is not None else 0)
        method.after_task(ctx, loader)
        done = TaskRecord()
        if method.trains:
            path = records.checkpoint_path(k)
            records.guard()
            sha = save_checkpoint(
                {
                    "model": model.state_dict(),
                    "method": method.state_dict(),
                    "task_index": k,
                    "chain_id": spec.chain_id,
                },
                path,
            )
            done = TaskRecord(str(path.relative_to(records.path)), sha)
        t_eval = time.time()
        rows = evaluate_after(k)
        records.append_rows(rows)
        heldout_after(k)
        now = time.time()
        done.seconds, done.finished_at = round(now - t0, 3), now
        done.device, done.steps, done.samples = device_name(dev), trained, trained * batch
        done.train_seconds, done.eval_seconds = round(t_eval - t0, 3), round(now - t_eval, 3)
        done.eval_samples = sum(r.total for r in rows)
        if not trained_now and started_at is not None:  # this attempt's first task
            done.startup_seconds = round(max(0.0, t0 - started_at), 3)
        done.attempt, done.started_at, done.gpu_uuid = records.attempt, t0, gpu_uuid(dev)
        done.host, done.ip, done.job_id = where["host"], where["ip"], where["job_id"]
        state = records.load_state()
        state.completed[k] = done
        records.save_state(state)
        records.snapshot_path.unlink(missing_ok=True)  # the task is finished: its snapshot is done
        _prune_checkpoints(records, spec.keep_checkpoints)
        trained_now.append(k)
        progress.task_finished(k, task.name, [r.top1 for r in rows])
    return load_result(spec, benchmark, records, trained_now)
