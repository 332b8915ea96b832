"""Mid-task snapshots (issue 17): a chain killed, signalled or stopped *inside* a task resumes at
the step it reached and gives the matrix, the weights and the method state of an undisturbed
run, bit for bit on the CPU.

The SIGKILL test kills real worker processes (``python -m clipcl.workers``) at seeded random
steps inside tasks through the test-only ``CLIPCL_TEST_SIGKILL_AFTER`` (the worker SIGKILLs
itself after step N of task K, before that step's snapshot, so step N is trained again after
the resume from step N − 1): finetune, every projection method, ZSCL, iCaRL, OGD and the
moving average, 13 kills in all (``KILL_TASKS``).
"""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from clipcl.data import cycle, make_loader
from clipcl.models import load_checkpoint
from clipcl.progress import ChainProgress
from clipcl.results.curves import read_points
from clipcl.results.records import RunDir
from clipcl.workers import ChainSpec, run_chain
from clipcl.workers.midtask import KILL_ENV
from clipcl.workers.snapshot import read_snapshot, write_snapshot
from clipcl.workers.stop import EXIT_PREEMPTED, Preempted, StopRequest, stop_on_signals
from tests.helpers import assert_same, tiny_spec

TASKS = 2  # every chain here runs its first two tasks
STEPS = 5
EVERY_STEP = 1e-9  # checkpoint_every_min: a snapshot after every step


def _with(spec: ChainSpec, **top: Any) -> ChainSpec:
    """``spec`` with top-level keys changed, built again from its JSON (not copied)."""
    return ChainSpec.build({**spec.model_dump(mode="json"), **top})


def _kill_specs() -> dict[str, ChainSpec]:
    zscl = {"reference_size": 64, "reference_batch_size": 8, "avg_freq": 2}
    gpm = tiny_spec("gpm", iterations=STEPS, samples=32)
    return {
        "finetune": tiny_spec("finetune", iterations=STEPS),
        "gpm": ChainSpec.build(
            {**gpm.model_dump(mode="json"), "train": {**gpm.train.model_dump(), "lr": 0.05}}
        ),
        "pgp": tiny_spec("pgp", iterations=STEPS),
        "nsp2": tiny_spec("nsp2", iterations=STEPS, refine_epochs=5),
        "dmnsp": tiny_spec("dmnsp", iterations=STEPS),
        "zscl": tiny_spec("zscl", iterations=STEPS, **zscl),
        "icarl": tiny_spec("icarl", iterations=STEPS, memory_size=24, batch_size=8),
        "ogd": tiny_spec("ogd", iterations=STEPS, samples=3),
        "moving-avg": tiny_spec(
            "we",
            iterations=STEPS,
            we=False,
            moving_avg=True,
            moving_avg_model="previous",
            avg_freq=2,
        ),
    }


KILL_SPECS = _kill_specs()
#: The tasks each method's chain is killed in (13 kills; the projection methods and OGD in both
#: tasks, so that the kill in task 1 hits them while their task-0 projectors are in use and the
#: kill in task 0 hits OGD's sampled gradients of the task so far).
KILL_TASKS = {
    "finetune": [1],
    "gpm": [0, 1],
    "pgp": [1],
    "nsp2": [0, 1],
    "dmnsp": [0, 1],
    "zscl": [1],
    "icarl": [1],
    "ogd": [0, 1],
    "moving-avg": [1],
}


class Messages(ChainProgress):
    """Keeps the chain's messages (and can run something at one step)."""

    def __init__(self, at_step: tuple[int, int] | None = None, action: Any = None) -> None:
        self.lines: list[str] = []
        self.at_step, self.action = at_step, action

    def message(self, text: str) -> None:
        self.lines.append(text)

    def step(self, index: int, step: int, steps: int, loss: float) -> None:
        if (index, step) == self.at_step:
            self.action()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``get(spec)`` → (result, final checkpoint) of the spec run undisturbed, once."""
    cache: dict[str, tuple[Any, dict[str, Any], list[Any]]] = {}

    def get(spec: ChainSpec) -> tuple[Any, dict[str, Any], list[Any]]:
        if spec.chain_id not in cache:
            run_dir = tmp_path_factory.mktemp(f"ref-{spec.method_name}")
            result = run_chain(spec, run_dir, until_task=TASKS)
            ckpt = load_checkpoint(RunDir(run_dir).checkpoint_path(TASKS - 1), None)
            cache[spec.chain_id] = (result, ckpt, _curve(run_dir))
        return cache[spec.chain_id]

    return get


def _curve(run_dir: Path) -> list[tuple[Any, ...]]:
    """The training curve's points without their seconds (which differ from run to run)."""
    points = read_points(RunDir(run_dir).train_path)
    return [(p.task, p.step, p.steps, p.loss, p.lr, sorted(p.terms.items())) for p in points]


def _same_as_reference(reference, spec: ChainSpec, run_dir: Path) -> None:
    """The matrix, the weights, the method state and the training curve (every step once, no
    point of a lost attempt) are those of the undisturbed run."""
    ref, ref_ckpt, ref_curve = reference(spec)
    got = run_chain(spec, run_dir, until_task=TASKS)  # finished: only reads the records
    assert got.trained_now == []
    np.testing.assert_array_equal(got.matrix[:TASKS], ref.matrix[:TASKS])
    ckpt = load_checkpoint(RunDir(run_dir).checkpoint_path(TASKS - 1), None)
    assert_same(ckpt["model"], ref_ckpt["model"], "model")
    assert_same(ckpt["method"], ref_ckpt["method"], "method")
    assert not RunDir(run_dir).snapshot_path.exists(), "a finished task left its snapshot"
    steps = ref_curve[0][2]
    assert [p[:2] for p in ref_curve] == [(k, s) for k in range(TASKS) for s in range(1, steps + 1)]
    assert _curve(run_dir) == ref_curve


def _worker(run_dir: Path, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "clipcl.workers", "--run-dir", str(run_dir)]
    cmd += ["--threads", "1", "--until-task", str(TASKS)]
    return subprocess.Popen(
        cmd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


# ----- the data position -----
class Numbers(Dataset):
    """Item i is i; counts what it loaded."""

    def __init__(self) -> None:
        self.loaded = 0

    def __len__(self) -> int:
        return 23

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.loaded += 1
        return torch.tensor([i]), i


def _numbers(batches: Any) -> list[list[int]]:
    return [b[0].flatten().tolist() for b in batches]


def _loader(ds: Dataset, workers: int = 0) -> Any:
    return make_loader(ds, 4, shuffle=True, seed=7, num_workers=workers, pin_memory=False)


def test_cycle_resumes_the_stream_and_the_loader_state_without_loading_skipped_batches():
    """Every start and end (5 batches an epoch): the same batches, and a later pass over the
    loader (as an ``after_task`` makes) sees what it sees after the uninterrupted stream."""
    for start, end in itertools.combinations_with_replacement(range(0, 13), 2):
        plain = _loader(Numbers())
        stream = _numbers(itertools.islice(cycle(plain), end))[start:]
        ds = Numbers()
        resumed = _loader(ds)
        got = _numbers(itertools.islice(cycle(resumed, start), end - start))
        assert got == stream, (start, end)
        assert ds.loaded == 4 * (end - start), (start, end)  # nothing skipped was loaded
        assert _numbers(resumed) == _numbers(plain), (start, end)


def test_cycle_with_worker_processes_resumes_the_batches() -> None:
    stream = _numbers(itertools.islice(cycle(_loader(Numbers(), 1)), 20))
    for start in (3, 5, 12):
        got = _numbers(itertools.islice(cycle(_loader(Numbers(), 1), start), 6))
        assert got == stream[start : start + 6], start


def test_checkpoint_every_min_is_settable_and_not_in_the_chain_id() -> None:
    spec = tiny_spec()
    data = spec.model_dump(mode="json")
    fast = ChainSpec.build(data, overrides=["checkpoint_every_min=0.05"])
    assert fast.checkpoint_every_min == 0.05 and spec.checkpoint_every_min == 10.0
    assert fast.chain_id == spec.chain_id
    assert "checkpoint_every_min" not in spec.canonical_json()


# ----- SIGKILL inside tasks -----
@pytest.mark.parametrize("method", list(KILL_SPECS))
def test_sigkilled_inside_tasks_resumes_bit_for_bit(reference, tmp_path: Path, method: str):
    spec = KILL_SPECS[method]
    rng = random.Random(zlib.crc32(method.encode()))
    # After step N, before its snapshot: the resume is from N − 1 (N ≥ 2 so there is one).
    kills = [(task, rng.randint(2, STEPS - 1)) for task in KILL_TASKS[method]]
    run_dir = tmp_path / "killed"
    RunDir(run_dir).place_spec(_with(spec, checkpoint_every_min=EVERY_STEP))
    for task, step in kills:
        proc = _worker(run_dir, {KILL_ENV: f"{task}:{step}"})
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, f"kill {task}:{step} missed: {err[-2000:]}"
        assert RunDir(run_dir).tasks_done() == task
    proc = _worker(run_dir)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    last_task, last_step = kills[-1]
    assert f"resuming task {last_task} at step {last_step - 1}/{STEPS} from its snapshot" in err
    _same_as_reference(reference, spec, run_dir)


# ----- SIGUSR2 / SIGTERM -----
SIGNALS = [pytest.param(s, id=s.name) for s in (signal.SIGUSR2, signal.SIGTERM)]


@pytest.mark.parametrize("sig", SIGNALS)
def test_signal_inside_a_step_snapshots_that_step_and_resumes(reference, tmp_path, sig) -> None:
    """In process: the signal arrives during step 3 of task 1; the chain stops right after that
    step with its snapshot (default interval: no other snapshot) and resumes from it."""
    spec = KILL_SPECS["zscl"]
    stop = StopRequest()
    seen = Messages((1, 3), lambda: os.kill(os.getpid(), sig))
    with stop_on_signals(stop), pytest.raises(Preempted) as stopped:
        run_chain(spec, tmp_path, until_task=TASKS, progress=seen, stop=stop)
    assert stopped.value.reason == sig.name and stopped.value.progressed
    snap = read_snapshot(RunDir(tmp_path).snapshot_path)
    assert (snap.task, snap.step) == (1, 3)
    assert any(f"at step 3/{STEPS} (on {sig.name})" in line for line in seen.lines)
    resumed = Messages()
    run_chain(spec, tmp_path, until_task=TASKS, progress=resumed)
    assert f"resuming task 1 at step 3/{STEPS} from its snapshot" in resumed.lines
    _same_as_reference(reference, spec, tmp_path)


@pytest.mark.parametrize("sig", SIGNALS)
def test_worker_signalled_at_a_random_time_exits_75_and_resumes(reference, tmp_path, sig):
    spec = tiny_spec("finetune", iterations=20)
    run_dir = tmp_path / "signalled"
    RunDir(run_dir).place_spec(spec)
    proc = _worker(run_dir)
    assert proc.stderr is not None
    for line in proc.stderr:  # the first task's training has begun
        if "training 20 steps" in line:
            break
    delay = random.uniform(0.05, 1.0)
    time.sleep(delay)
    proc.send_signal(sig)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert proc.returncode == EXIT_PREEMPTED, f"after {delay:.2f} s: {err[-2000:]}"
    match = re.search(rf"snapshot of task (\d) at step (\d+)/20 \(on {sig.name}\)", err)
    if match:  # stopped inside a task (not between tasks, while evaluating)
        snap = read_snapshot(RunDir(run_dir).snapshot_path)
        assert (snap.task, snap.step) == (int(match[1]), int(match[2]))
        assert took < 30, f"{took:.1f} s from the signal to the exit"
    proc = _worker(run_dir)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    if match:
        assert f"resuming task {match[1]} at step {match[2]}/20" in err
    _same_as_reference(reference, spec, run_dir)


# ----- snapshots that must not be used -----
def _stopped_at(spec: ChainSpec, run_dir: Path, task: int, step: int) -> None:
    stop = StopRequest()
    with pytest.raises(Preempted):
        run_chain(
            spec,
            run_dir,
            until_task=TASKS,
            progress=Messages((task, step), lambda: stop.request("test")),
            stop=stop,
        )


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit(path: Path, **fields: Any) -> None:
    snap = read_snapshot(path)
    for key, value in fields.items():
        setattr(snap, key, value)
    write_snapshot(path, snap)


BAD = {
    "corrupt": (_corrupt, "checksum mismatch"),
    "torn": (lambda p: p.write_bytes(p.read_bytes()[:1000]), "not a clipcl snapshot"),
    "other-chain": (lambda p: _edit(p, chain_id="0123456789ab"), "it is of chain 0123456789ab"),
    "other-task": (lambda p: _edit(p, task=0), "it is of task 0, and task 1 is next"),
    "other-length": (lambda p: _edit(p, steps=STEPS + 1), f"it is of a {STEPS + 1}-step task"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_corrupt_or_stale_snapshot_is_reported_and_ignored(reference, tmp_path, case) -> None:
    spec = KILL_SPECS["finetune"]
    _stopped_at(spec, tmp_path, 1, 2)
    damage, why = BAD[case]
    damage(RunDir(tmp_path).snapshot_path)
    seen = Messages()
    run_chain(spec, tmp_path, until_task=TASKS, progress=seen)
    assert any(line.startswith("ignoring the snapshot") and why in line for line in seen.lines)
    assert not any(line.startswith("resuming task") for line in seen.lines)
    events = RunDir(tmp_path).load_state().events
    assert any(e["event"] == "bad_snapshot" and why in e["detail"] for e in events)
    _same_as_reference(reference, spec, tmp_path)  # task 1 trained again from its start


def test_no_snapshot_without_a_reason(tmp_path: Path) -> None:
    """``checkpoint_every_min: 0`` and no signal: no snapshot is ever written."""
    spec = _with(KILL_SPECS["finetune"], checkpoint_every_min=0)
    seen = Messages()
    run_chain(spec, tmp_path, until_task=1, progress=seen)
    assert not any(line.startswith("snapshot of") for line in seen.lines)
    with_interval = Messages()
    every_step = _with(spec, checkpoint_every_min=EVERY_STEP)
    run_chain(every_step, tmp_path / "b", until_task=1, progress=with_interval)
    assert sum(line.startswith("snapshot of task 0") for line in with_interval.lines) == STEPS
