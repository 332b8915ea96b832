"""Cost ahead: the time a plan's unfinished chains still need, from measured throughput.

Finished tasks record their throughput (``TaskRecord``: device, training samples and seconds,
evaluation samples and seconds); the store keeps it per task. :func:`estimate` turns those
measurements into a time per unfinished chain:

- training: the chain's remaining tasks' samples (``iterations`` × ``batch_size``, or for
  ``epochs`` the steps a finished run of the same task recorded) × the seconds per training
  sample that finished tasks of the same **method, model (arch), precision and device type**
  took (``train_seconds`` covers the steps, the method's task hooks and the checkpoint);
- evaluation: the samples a finished run of the same benchmark evaluated after that task × the
  seconds per evaluated sample of the same model, precision and device type;
- one start per chain (worker start, imports, model, zero-shot row or resume): the mean
  ``startup_seconds`` of the same model and device type on the same benchmark, else on any
  (0 where none was recorded).

Device type is ``gpu`` or ``cpu``: a chain asking for GPUs (``resources.gpus``) runs on one (the
backends hide GPUs from a chain that asks for none). Device-hours are wall hours × the
chain's GPUs (GPU-hours) or CPUs (CPU-hours), what a cluster bills. A chain whose parts have no
measurement gets no estimate and the reason. Pure: no torch, no store access.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChainCost", "CostAhead", "Measured", "device_kind", "estimate", "measured_from"]


def device_kind(device: str | None) -> str:
    """``cpu`` or ``gpu`` of a recorded device (``cpu``, ``NVIDIA H200``, ...)."""
    return "cpu" if device in (None, "cpu") else "gpu"


@dataclass(frozen=True)
class Measured:
    """One finished task's throughput with what determines it."""

    method: str
    arch: str
    precision: str
    device: str
    benchmark: str
    task_index: int
    batch_size: int
    epochs: int | None
    steps: int
    samples: int
    train_seconds: float
    eval_seconds: float
    eval_samples: int
    startup_seconds: float | None = None

    @property
    def kind(self) -> str:
        return device_kind(self.device)


def measured_from(frame_rows: Iterable[Mapping[str, Any]]) -> list[Measured]:
    """:class:`Measured` of the store's task rows joined with their chain's spec (rows
    without throughput, from records older than it, are left out)."""
    out = []
    for r in frame_rows:
        if r.get("device") is None or r.get("train_seconds") is None:
            continue
        spec = r["spec"]
        train = spec.get("train", {})
        out.append(
            Measured(
                method=str(spec.get("method", {}).get("name")),
                arch=str(spec.get("model", {}).get("arch")),
                precision=str(train.get("precision", "fp32")),
                device=str(r["device"]),
                benchmark=str(spec.get("benchmark")),
                task_index=int(r["task_index"]),
                batch_size=int(train.get("batch_size") or 0),
                epochs=train.get("epochs"),
                steps=int(r["steps"] or 0),
                samples=int(r["samples"] or 0),
                train_seconds=float(r["train_seconds"]),
                eval_seconds=float(r["eval_seconds"] or 0.0),
                eval_samples=int(r["eval_samples"] or 0),
                startup_seconds=r.get("startup_seconds"),
            )
        )
    return out


@dataclass(frozen=True)
class ChainCost:
    """The estimate of one unfinished chain: ``seconds`` (``None``: not estimable, ``why``)."""

    chain_id: str
    tasks_left: int
    kind: str
    units: int  # GPUs or CPUs the chain holds
    seconds: float | None
    why: str | None = None

    def describe(self) -> str:
        return "?" if self.seconds is None else duration(self.seconds)


@dataclass(frozen=True)
class CostAhead:
    """Estimates of a plan's unfinished chains and what they rest on."""

    chains: list[ChainCost] = field(default_factory=list)
    based_on: dict[str, int] = field(default_factory=dict)  # "<arch> on <device>" → tasks

    def of(self, chain_id: str) -> ChainCost | None:
        return next((c for c in self.chains if c.chain_id == chain_id), None)

    def device_hours(self) -> dict[str, float]:
        """``gpu``/``cpu`` → estimated device-hours of the chains that have an estimate."""
        out: dict[str, float] = defaultdict(float)
        for c in self.chains:
            if c.seconds is not None:
                out[c.kind] += c.seconds * c.units / 3600
        return dict(out)

    def lines(self) -> list[str]:
        """What ``clipcl plan`` prints below its table."""
        left = [c for c in self.chains if c.tasks_left]
        if not left:
            return ["time left: none (every chain is finished)"]
        known = [c for c in left if c.seconds is not None]
        lines = []
        if known:
            hours = self.device_hours()
            parts = [f"{hours[k]:.2f} {k.upper()}-hours" for k in ("gpu", "cpu") if k in hours]
            basis = ", ".join(f"{n} tasks of {what}" for what, n in sorted(self.based_on.items()))
            wall = sum(c.seconds or 0 for c in known)
            lines.append(
                f"time left: {' + '.join(parts)} for {len(known)} of {len(left)} unfinished "
                f"chains ({duration(wall)} one after another; measured on {basis})"
            )
        unknown = [c for c in left if c.seconds is None]
        if unknown:
            reasons: dict[str, int] = defaultdict(int)
            for c in unknown:
                reasons[str(c.why)] += 1
            said = "; ".join(f"{why} ({n} chains)" for why, n in sorted(reasons.items()))
            lines.append(f"time left unknown for {len(unknown)} chains: {said}")
        return lines


def duration(seconds: float) -> str:
    """``45 s``, ``12.5 min``, ``3.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _rate(pairs: Iterable[tuple[float, int]]) -> float | None:
    seconds = count = 0.0
    for s, n in pairs:
        if n > 0 and math.isfinite(s):
            seconds, count = seconds + s, count + n
    return seconds / count if count else None


@dataclass(frozen=True)
class _Left:
    """What an unfinished chain still has to do (from its plan entry)."""

    chain_id: str
    method: str
    trains: bool
    arch: str
    precision: str
    benchmark: str
    batch_size: int
    iterations: int | None
    epochs: int | None
    tasks: Sequence[int]
    kind: str
    units: int


def estimate(chains: Iterable[_Left], measured: Sequence[Measured]) -> CostAhead:
    """The cost ahead of ``chains`` (see :func:`left_of`) from ``measured`` tasks."""
    train_rate: dict[tuple[str, ...], list[tuple[float, int]]] = defaultdict(list)
    eval_rate: dict[tuple[str, ...], list[tuple[float, int]]] = defaultdict(list)
    eval_samples: dict[tuple[str, int], int] = {}
    epoch_steps: dict[tuple[str, int, int, int], int] = {}
    based_on: dict[str, int] = defaultdict(int)
    startup: dict[tuple[str, ...], list[float]] = defaultdict(list)
    for m in measured:
        if m.startup_seconds is not None:  # the zero-shot row in it scales with the benchmark
            startup[(m.arch, m.kind, m.benchmark)].append(m.startup_seconds)
            startup[(m.arch, m.kind)].append(m.startup_seconds)
        train_rate[(m.method, m.arch, m.precision, m.kind)].append((m.train_seconds, m.samples))
        eval_rate[(m.arch, m.precision, m.kind)].append((m.eval_seconds, m.eval_samples))
        eval_samples.setdefault((m.benchmark, m.task_index), m.eval_samples)
        if m.epochs:
            key = (m.benchmark, m.task_index, m.batch_size, int(m.epochs))
            epoch_steps[key] = max(epoch_steps.get(key, 0), m.steps)
    used: set[tuple[str, str]] = set()
    out = []
    for left in chains:
        seconds, why = _chain_seconds(left, train_rate, eval_rate, eval_samples, epoch_steps)
        if seconds is not None and left.tasks:
            used.add((left.arch, left.kind))
            starts = startup.get((left.arch, left.kind, left.benchmark)) or startup.get(
                (left.arch, left.kind)
            )
            seconds += sum(starts) / len(starts) if starts else 0.0
        out.append(ChainCost(left.chain_id, len(left.tasks), left.kind, left.units, seconds, why))
    for m in measured:
        if (m.arch, m.kind) in used:
            based_on[f"{m.arch} on {m.device}"] += 1
    return CostAhead(out, dict(based_on))


def _chain_seconds(
    c: _Left,
    train_rate: Mapping[tuple[str, ...], list[tuple[float, int]]],
    eval_rate: Mapping[tuple[str, ...], list[tuple[float, int]]],
    eval_samples: Mapping[tuple[str, int], int],
    epoch_steps: Mapping[tuple[str, int, int, int], int],
) -> tuple[float | None, str | None]:
    if not c.tasks:
        return 0.0, None
    where = f"{c.arch} ({c.precision}) on {c.kind.upper()}"
    per_eval = _rate(eval_rate.get((c.arch, c.precision, c.kind), []))
    if per_eval is None:
        return None, f"no evaluation measured for {where}"
    per_train = 0.0
    if c.trains:
        rate = _rate(train_rate.get((c.method, c.arch, c.precision, c.kind), []))
        if rate is None:
            return None, f"no task of {c.method} measured for {where}"
        per_train = rate
    total = 0.0
    for k in c.tasks:
        n_eval = eval_samples.get((c.benchmark, k))
        if n_eval is None:
            return None, f"no finished task {k} of {c.benchmark} to count its evaluation"
        total += n_eval * per_eval
        if not c.trains:
            continue
        if c.iterations is not None:
            steps = c.iterations
        else:
            steps = epoch_steps.get((c.benchmark, k, c.batch_size, int(c.epochs or 0)), 0)
            if not steps:
                return None, (
                    f"no finished task {k} of {c.benchmark} at batch size {c.batch_size} "
                    f"to count its {c.epochs} epochs' steps"
                )
        total += steps * c.batch_size * per_train
    return total, None


def left_of(chain: Any, resources: Any) -> _Left:
    """What a plan's chain (``PlannedChain``) holding ``resources`` still has to do."""
    from clipcl.methods.catalog import method_info

    spec = chain.entry.spec
    gpus = int(resources.gpus)
    done, total = chain.tasks_done, chain.num_tasks
    return _Left(
        chain_id=chain.chain_id,
        method=spec.method_name,
        trains=method_info(spec.method_name).trains,
        arch=str(spec.model.arch),
        precision=str(spec.train.precision),
        benchmark=spec.benchmark,
        batch_size=spec.train.batch_size,
        iterations=spec.train.iterations,
        epochs=spec.train.epochs,
        tasks=() if chain.finished or chain.problem else range(done, total),
        kind="gpu" if gpus > 0 else "cpu",
        units=gpus if gpus > 0 else int(resources.cpus),
    )
