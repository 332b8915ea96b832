"""A chain's run directory and its durable records: :class:`RunDir` owns every file in it.

Layout of ``<root>/chains/<chain_id>/``::

    spec.json        the resolved ChainSpec (written once, before the chain first runs)
    rows.jsonl       evaluation rows, appended + fsynced after each task, each with its attempt
                     (of a finished task only the finishing attempt's count; then last write wins)
    train.jsonl      training curves: loss, loss terms, lr and seconds every few steps,
                     appended + fsynced per task and before each snapshot (results/curves.py)
    state.json       finished tasks, their checkpoint checksums, the number of tasks
                     (atomic replace; read and written as a typed :class:`ChainState`)
    ckpt/task_KKK.pt checkpoints (atomic, SHA-256 in state.json)
    ckpt/snapshot.pt the mid-task snapshot of the task in progress (at most one; atomic, its
                     SHA-256 inside; removed once that task is finished)
    .lock            flock held by the one process that trains the chain
    attempts/NNNNNN.json  one per worker attempt, created exclusively (O_EXCL) before it
                     trains: the newest number is the one attempt allowed to write; a worker
                     whose number is no longer the newest stops before its next write
    worker.pid       the PID of the worker holding the lock
    worker.log       the worker's stdout/stderr (local and Ray backends)

A task counts as finished only once it is in ``state.json``; that is written after its checkpoint
and its rows, so a crash at any point loses at most the task in progress. No other module names
these files: they ask a :class:`RunDir` for the path.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clipcl.durable import append_lines_durably, atomic_write_bytes, atomic_write_json, fsync_dir
from clipcl.errors import ClipclError

ZEROSHOT = -1  # ``trained_task`` of the rows measured before the first task

CHAINS_DIR = "chains"
SPEC_FILE = "spec.json"
ROWS_FILE = "rows.jsonl"
INTASK_FILE = "intask.jsonl"  # evaluations inside a task (eval.interval_steps)
HELDOUT_FILE = "heldout.jsonl"  # the held-out sets after each task (eval.extra)
TRAIN_FILE = "train.jsonl"
STATE_FILE = "state.json"
CKPT_DIR = "ckpt"
SNAPSHOT_FILE = "snapshot.pt"
LOCK_FILE = ".lock"
PID_FILE = "worker.pid"
LOG_FILE = "worker.log"
ATTEMPTS_DIR = "attempts"
#: Test-only: "1" turns the chain lock off, to show that fencing alone keeps one writer.
NO_LOCK_ENV = "CLIPCL_TEST_NO_LOCK"


class Superseded(ClipclError):
    """A newer attempt of the chain started: this worker must not write its records."""


@dataclass(frozen=True)
class EvalRow:
    """Accuracy of eval task ``eval_task`` after training task ``trained_task`` (-1: zero-shot)."""

    chain_id: str
    trained_task: int
    trained_name: str
    eval_task: int
    eval_name: str
    correct: int
    total: int
    attempt: int | None = None  # the worker attempt that wrote it (None: older records)
    #: images whose label is among the 5 highest scores (all of them when the classifier has
    #: 5 classes or fewer); None in records written before top-5 was recorded
    correct5: int | None = None
    #: an in-task row (``eval.interval_steps``): the steps of ``trained_task`` finished when it
    #: was taken; None for the rows after a task, the only ones metrics read
    step: int | None = None

    @property
    def top1(self) -> float:
        return 100.0 * self.correct / self.total if self.total else float("nan")

    @property
    def top5(self) -> float:
        if self.correct5 is None or not self.total:
            return float("nan")
        return 100.0 * self.correct5 / self.total

    def to_json(self) -> str:
        data = {**asdict(self), "top1": self.top1}
        if self.attempt is None:
            del data["attempt"]
        if self.correct5 is None:
            del data["correct5"]
        else:
            data["top5"] = self.top5
        if self.step is None:
            del data["step"]
        return json.dumps(data, sort_keys=True)


@dataclass
class TaskRecord:
    """A finished task: its checkpoint (relative path, ``None`` once pruned) and timings.

    The throughput fields (``None`` in records older than them) describe the attempt that
    finished the task: ``device`` (``cpu`` or the CUDA device's name), ``steps`` trained in
    it (fewer than the task's when it resumed a mid-task snapshot), ``samples`` they saw,
    ``train_seconds`` (training, the method's task hooks and the checkpoint), ``eval_seconds``
    and ``eval_samples`` (the evaluation after the task); the first task an attempt finishes
    also records ``startup_seconds``, from the worker's start to the task's (imports, model,
    zero-shot row, resume). Where it ran: the worker ``attempt`` that finished it (its rows
    carry the same number), ``host``, ``ip``, ``gpu_uuid``, the scheduler's ``job_id`` and
    ``started_at`` (epoch seconds; ``finished_at`` ends it).
    """

    checkpoint: str | None = None
    sha256: str | None = None
    seconds: float | None = None
    finished_at: float | None = None
    device: str | None = None
    steps: int | None = None
    samples: int | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    eval_samples: int | None = None
    startup_seconds: float | None = None
    attempt: int | None = None
    host: str | None = None
    ip: str | None = None
    gpu_uuid: str | None = None
    job_id: str | None = None
    started_at: float | None = None


@dataclass
class ChainState:
    """The typed content of ``state.json``.

    Attributes:
        completed: Finished task index → its record.
        zeroshot_done: Whether the zero-shot rows are written.
        num_tasks: The chain's number of tasks (``None`` in records older than this field).
        events: Things worth keeping that happened to the chain (e.g. a bad checkpoint).
        zeroshot_attempt: The attempt whose zero-shot rows count (``None``: older records).
    """

    completed: dict[int, TaskRecord] = field(default_factory=dict)
    zeroshot_done: bool = False
    num_tasks: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    zeroshot_attempt: int | None = None

    def attempt_of(self, trained_task: int) -> int | None:
        """The attempt whose rows after ``trained_task`` count (``None``: any, last wins)."""
        if trained_task == ZEROSHOT:
            return self.zeroshot_attempt
        record = self.completed.get(trained_task)
        return record.attempt if record is not None else None

    @property
    def tasks_done(self) -> int:
        """How many tasks are finished."""
        return len(self.completed)

    @property
    def finished(self) -> bool:
        """Whether every task is finished (unknown ``num_tasks``: not known to be)."""
        return self.num_tasks is not None and self.tasks_done >= self.num_tasks

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChainState:
        """Parse ``state.json`` content.

        Raises:
            ValueError: The content is not a chain state.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("completed", {}), Mapping):
            raise ValueError(f"not a chain state: {str(data)[:80]!r}")
        known = TaskRecord.__dataclass_fields__
        completed = {
            int(k): TaskRecord(**{f: v[f] for f in known if f in v})
            for k, v in data.get("completed", {}).items()
        }
        num = data.get("num_tasks")
        return cls(
            completed,
            bool(data.get("zeroshot_done", False)),
            int(num) if num is not None else None,
            list(data.get("events", [])),
            data.get("zeroshot_attempt"),
        )

    def to_json(self) -> dict[str, Any]:
        """The ``state.json`` content (task indices as string keys, as JSON requires)."""
        out: dict[str, Any] = {
            "completed": {str(k): asdict(v) for k, v in sorted(self.completed.items())},
            "zeroshot_done": self.zeroshot_done,
        }
        if self.num_tasks is not None:
            out["num_tasks"] = self.num_tasks
        if self.events:
            out["events"] = self.events
        if self.zeroshot_attempt is not None:
            out["zeroshot_attempt"] = self.zeroshot_attempt
        return out


_CHAIN_ID = re.compile(r"[0-9a-f]{12}")


def check_chain_id(chain_id: str) -> str:
    """``chain_id`` if it is one (12 lowercase hex digits, as ``ChainSpec.chain_id`` makes).

    Raises:
        ClipclError: It is not.
    """
    if not isinstance(chain_id, str) or not _CHAIN_ID.fullmatch(chain_id):
        raise ClipclError(f"'{chain_id}' is not a chain id (chain ids are 12 hex digits)")
    return chain_id


class CorruptRecords(ClipclError, ValueError):
    """A chain's records cannot be read (``state.json`` is not a chain state, ``rows.jsonl``
    holds lines that are not rows); the message names the file."""


class ChainBusy(ClipclError):
    """Another process holds the chain's lock."""


class _Spec(Protocol):
    """What :meth:`RunDir.place_spec` needs of a chain spec (a ``ChainSpec``)."""

    @property
    def chain_id(self) -> str: ...

    def model_dump(self, *, mode: str) -> dict[str, Any]: ...

    @classmethod
    def model_validate(cls, obj: Any) -> _Spec: ...


_HELD: set[Path] = set()  # run dirs whose lock this process holds (the lock is re-entrant)


class RunDir:
    """One chain's run directory: its paths, records, lock and PID file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.run_dir = self.path  # the name older callers use
        self.spec_path = self.path / SPEC_FILE
        self.rows_path = self.path / ROWS_FILE
        self.intask_path = self.path / INTASK_FILE
        self.heldout_path = self.path / HELDOUT_FILE
        self.train_path = self.path / TRAIN_FILE
        self.state_path = self.path / STATE_FILE
        self.lock_path = self.path / LOCK_FILE
        self.pid_path = self.path / PID_FILE
        self.log_path = self.path / LOG_FILE
        self.snapshot_path = self.path / CKPT_DIR / SNAPSHOT_FILE
        self.attempts_path = self.path / ATTEMPTS_DIR
        self.attempt: int | None = None  # set by begin_attempt: then every write is fenced

    @classmethod
    def of(cls, root: str | Path, chain_id: str) -> RunDir:
        """The run directory of ``chain_id`` under the run root ``root``.

        Raises:
            ClipclError: ``chain_id`` is not a chain id (12 hex digits): nothing outside the
            run root is ever reached through one.
        """
        return cls(Path(root) / CHAINS_DIR / check_chain_id(chain_id))

    @staticmethod
    def chains_dir(root: str | Path) -> Path:
        """The folder holding every chain's run directory of a run root."""
        return Path(root) / CHAINS_DIR

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def checkpoint_path(self, task_index: int) -> Path:
        return self.path / CKPT_DIR / f"task_{task_index:03d}.pt"

    # ----- spec -----
    def has_spec(self) -> bool:
        """Whether ``spec.json`` exists."""
        return self.spec_path.is_file()

    def read_spec(self) -> dict[str, Any]:
        """The raw ``spec.json`` object.

        Raises:
            ClipclError: It is missing, unreadable or not a JSON object.
        """
        try:
            data = json.loads(self.spec_path.read_text())
        except FileNotFoundError:
            raise ClipclError(
                f"{self.spec_path}: no chain spec (the coordinator writes it)"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ClipclError(f"{self.spec_path}: cannot read the chain spec: {exc}") from None
        if not isinstance(data, dict):
            raise ClipclError(
                f"{self.spec_path}: expected a JSON object, got {type(data).__name__}"
            )
        return data

    def place_spec(self, spec: _Spec, num_tasks: int | None = None) -> None:
        """Write ``spec.json`` unless the directory already holds this chain.

        ``num_tasks`` (when given) is recorded in ``state.json`` too, so the chain's progress
        can be judged from its records alone.

        Raises:
            ClipclError: The directory holds another chain or cannot be written.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClipclError(
                f"cannot create the run directory {self.path}: {exc.strerror or exc}"
            ) from None
        if self.spec_path.is_file():
            try:
                other = type(spec).model_validate(json.loads(self.spec_path.read_text()))
            except ValueError as exc:
                raise ClipclError(f"{self.spec_path}: not a chain spec: {exc}") from None
            if other.chain_id != spec.chain_id:
                raise ClipclError(
                    f"{self.path} holds chain {other.chain_id}, not {spec.chain_id}; "
                    "use another run directory"
                )
        else:
            try:
                atomic_write_json(self.spec_path, spec.model_dump(mode="json"))
            except OSError as exc:
                raise ClipclError(f"cannot write {self.spec_path}: {exc.strerror or exc}") from None
        if num_tasks is not None:
            self.record_num_tasks(num_tasks)

    def record_num_tasks(self, num_tasks: int) -> None:
        """Store the number of tasks in ``state.json`` (once; a no-op when it is there)."""
        state = self.load_state()
        if state.num_tasks != num_tasks:
            state.num_tasks = num_tasks
            self.save_state(state)

    # ----- state -----
    def load_state(self) -> ChainState:
        """The chain's state (empty when it never ran).

        Raises:
            CorruptRecords: ``state.json`` is not a chain state.
        """
        if not self.state_path.is_file():
            return ChainState()
        try:
            return ChainState.from_json(json.loads(self.state_path.read_text()))
        except (ValueError, TypeError, AttributeError) as exc:
            raise CorruptRecords(
                f"{self.state_path}: not a chain state ({exc}); move the chain directory "
                "away to start the chain over"
            ) from None

    def save_state(self, state: ChainState | Mapping[str, Any]) -> None:
        """Replace ``state.json`` atomically (a mapping is checked as ``state.json`` content)."""
        typed = state if isinstance(state, ChainState) else ChainState.from_json(state)
        self.guard()
        atomic_write_json(self.state_path, typed.to_json())

    def completed(self) -> dict[int, TaskRecord]:
        """Finished task index → its record."""
        return self.load_state().completed

    def verified_state(self) -> ChainState:
        """The state with only the finished tasks whose evaluation rows are all in
        ``rows.jsonl`` (after task k: eval tasks 0..k at least). A task whose rows were lost
        after the fact is not finished, and neither is any task after it: they are recomputed.

        Raises:
            OSError, ValueError: ``state.json`` cannot be read or is not a chain state.
        """
        state = self.load_state()
        if not state.completed:
            return state
        rows = {(r.trained_task, r.eval_task) for r in self.read_rows(state)}
        kept: dict[int, TaskRecord] = {}
        for k in range(max(state.completed) + 1):
            if k not in state.completed or any((k, i) not in rows for i in range(k + 1)):
                break
            kept[k] = state.completed[k]
        state.completed = kept
        return state

    def tasks_done(self) -> int:
        """Finished tasks whose rows are there (0 if it never ran or its records are
        unreadable); see :meth:`verified_state`."""
        try:
            return self.verified_state().tasks_done
        except (OSError, ValueError):
            return 0

    # ----- rows -----
    def append_rows(self, rows: list[EvalRow]) -> None:
        """Append rows durably; inside an attempt they carry its number (and are fenced)."""
        self._append(self.rows_path, rows)

    def _append(self, path: Path, rows: list[EvalRow]) -> None:
        """Append ``rows`` to ``path`` durably, each with this attempt's number (fenced)."""
        self.guard()
        if self.attempt is not None:
            rows = [r if r.attempt is not None else replace(r, attempt=self.attempt) for r in rows]
        append_lines_durably(path, [r.to_json() for r in rows])

    def read_rows(self, state: ChainState | None = None) -> list[EvalRow]:
        """All rows, last write wins per (trained_task, eval_task); a torn last line (a crash
        while appending) is skipped. With ``state``, a task that ``state`` says an attempt
        finished keeps only that attempt's rows (a superseded copy's rows never count).

        Raises:
            CorruptRecords: A line before the last is not a row.
        """
        return self._read_rows(self.rows_path, state)

    def append_heldout_rows(self, rows: list[EvalRow]) -> None:
        """Append the held-out sets' rows (``eval.extra``: eval_task = the set's position in
        it) durably, fenced like ``append_rows``."""
        self._append(self.heldout_path, rows)

    def read_heldout_rows(self, state: ChainState | None = None) -> list[EvalRow]:
        """The held-out rows, read as :meth:`read_rows` reads the task rows."""
        return self._read_rows(self.heldout_path, state)

    def _read_rows(self, path: Path, state: ChainState | None) -> list[EvalRow]:
        latest: dict[tuple[int, int], EvalRow] = {}
        remedy = "move the chain directory away to start the chain over"
        for row in _parse_rows(path, "an evaluation row", remedy):
            if state is not None:
                wanted = state.attempt_of(row.trained_task)
                if wanted is not None and row.attempt != wanted:
                    continue
            latest[(row.trained_task, row.eval_task)] = row
        return list(latest.values())

    def append_intask_rows(self, rows: list[EvalRow]) -> None:
        """Append in-task rows (each with its ``step``) durably, fenced like ``append_rows``."""
        if any(r.step is None for r in rows):
            raise ValueError("an in-task row needs its step")
        self._append(self.intask_path, rows)

    def read_intask_rows(self) -> list[EvalRow]:
        """The in-task rows, last write wins per (trained_task, step, eval_task) (a resumed
        task evaluates its steps after the snapshot again); a torn last line is skipped.

        Raises:
            CorruptRecords: A line before the last is not an in-task row.
        """
        latest: dict[tuple[int, int, int], EvalRow] = {}
        remedy = "delete the file to drop the in-task rows (the metrics never read them)"
        for row in _parse_rows(self.intask_path, "an in-task evaluation row", remedy, step=True):
            latest[(row.trained_task, row.step or 0, row.eval_task)] = row
        return list(latest.values())

    def problem(self) -> str | None:
        """What is wrong with the chain's records (``None``: nothing)."""
        try:
            self.verified_state()
            self.read_rows()
        except CorruptRecords as exc:
            return str(exc)
        except OSError as exc:
            return f"{self.path}: {exc.strerror or exc}"
        return None

    def finished_rows(self) -> list[EvalRow]:
        """Rows of the zero-shot pass and of finished tasks only (:meth:`verified_state`)."""
        state = self.verified_state()
        done = set(state.completed)
        if state.zeroshot_done:
            done.add(ZEROSHOT)
        return [r for r in self.read_rows(state) if r.trained_task in done]

    def matrix(self, num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
        """(accuracy matrix (T, T) in percent with NaN where not evaluated, test counts (T,))."""
        acc = np.full((num_tasks, num_tasks), np.nan)
        counts = np.zeros(num_tasks)
        for r in self.finished_rows():
            if r.trained_task >= 0:
                acc[r.trained_task, r.eval_task] = r.top1
                counts[r.eval_task] = r.total
        return acc, counts

    def zeroshot_accuracies(self, num_tasks: int) -> np.ndarray:
        acc = np.full(num_tasks, np.nan)
        for r in self.finished_rows():
            if r.trained_task == ZEROSHOT:
                acc[r.eval_task] = r.top1
        return acc

    # ----- attempts (fencing: one writer even when the lock fails) -----
    def begin_attempt(self, info: Mapping[str, Any]) -> int:
        """Take the next attempt number: ``attempts/NNNNNN.json`` (holding ``info``) is
        created with ``O_EXCL``, so two workers never get the same number, and fsynced."""
        self.attempts_path.mkdir(parents=True, exist_ok=True)
        number = self.newest_attempt() + 1
        while True:
            path = self.attempts_path / f"{number:06d}.json"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                number += 1
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps({"attempt": number, **info}, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(self.attempts_path)
            self.attempt = number
            return number

    def newest_attempt(self) -> int:
        """The highest attempt number taken so far (0: none)."""
        try:
            names = os.listdir(self.attempts_path)
        except FileNotFoundError:
            return 0
        numbers = [int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()]
        return max(numbers, default=0)

    def check_attempt(self, attempt: int) -> None:
        """Raise :class:`Superseded` unless ``attempt`` is still the newest attempt."""
        newest = self.newest_attempt()
        if newest != attempt:
            raise Superseded(
                f"{self.path}: attempt {attempt} is superseded by attempt {newest} of this "
                "chain (another copy runs it); this one stops without writing"
            )

    def guard(self) -> None:
        """Before a write of this attempt (see :meth:`begin_attempt`): raise
        :class:`Superseded` if a newer attempt began. A no-op outside an attempt."""
        if self.attempt is not None:
            self.check_attempt(self.attempt)

    def attempts(self) -> list[dict[str, Any]]:
        """What each attempt recorded when it began (host, pid, job id, time), oldest first;
        unreadable files are left out."""
        out = []
        try:
            paths = sorted(self.attempts_path.glob("*.json"))
        except OSError:
            return []
        for path in paths:
            try:
                out.append(dict(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return out

    # ----- the lock and the worker's PID -----
    @contextlib.contextmanager
    def lock(self, chain_id: str) -> Iterator[None]:
        """Hold an exclusive lock on the run directory: one process trains a chain at a time
        (a resubmitted or retried chain never runs twice at once). Re-entrant within a
        process; the kernel drops it when the process dies. Uses ``flock``, which is local to
        a host on some network filesystems.

        Raises:
            ChainBusy: another live process holds the chain.
        """
        key = self.path.resolve()
        if key in _HELD or os.environ.get(NO_LOCK_ENV) == "1":
            yield  # re-entrant; or the lock is off (tests of fencing alone)
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = self.read_pid()
                holder = f"worker pid {pid}" if pid is not None else "another process"
                raise ChainBusy(f"chain {chain_id} is already running ({holder})") from None
            _HELD.add(key)
            try:
                yield
            finally:
                _HELD.discard(key)
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def locked(self) -> bool:
        """Whether another live process holds the chain's lock (probes without keeping it)."""
        if not self.lock_path.exists() or self.path.resolve() in _HELD:
            return False
        with open(self.lock_path, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return False

    def write_pid(self) -> None:
        """Atomically record this process's PID in ``worker.pid``."""
        atomic_write_bytes(self.pid_path, f"{os.getpid()}\n".encode())

    def read_pid(self) -> int | None:
        """The PID in ``worker.pid``, or ``None`` when absent or unreadable."""
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def pid_snapshot(self) -> tuple[int, str] | None:
        """(mtime in ns, content) of ``worker.pid``, or ``None`` when absent: a change means a
        new worker started."""
        try:
            return self.pid_path.stat().st_mtime_ns, self.pid_path.read_text()
        except OSError:
            return None


def _parse_rows(path: Path, what: str, remedy: str, *, step: bool = False) -> Iterator[EvalRow]:
    """The rows of a JSON-lines row file in order (none if it is absent); a torn last line (a
    crash while appending) is skipped. ``step``: a row without its step is not a row.

    Raises:
        CorruptRecords: A line before the last is not ``what`` (the message says ``remedy``).
    """
    if not path.is_file():
        return
    fields = EvalRow.__dataclass_fields__
    lines = path.read_text(errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            d = json.loads(line)
            row = EvalRow(**{k: d[k] for k in fields if k in d})
            if step and row.step is None:
                raise KeyError("step")
        except (json.JSONDecodeError, KeyError, TypeError):
            if number == len(lines):
                continue
            raise CorruptRecords(f"{path}: line {number} is not {what}; {remedy}") from None
        yield row
