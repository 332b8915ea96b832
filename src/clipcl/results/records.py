"""Durable per-chain records in the chain's run directory, written by the worker.

Layout of ``<run_dir>``::

    spec.json        the resolved ChainSpec (written once)
    rows.jsonl       evaluation rows, appended + fsynced after each task (last write wins)
    state.json       finished tasks and their checkpoint checksums (atomic replace)
    ckpt/task_KKK.pt checkpoints (atomic, SHA-256 in state.json)

A task counts as finished only once it is in ``state.json``; that is written after its checkpoint
and its rows, so a crash at any point loses at most the task in progress.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipcl.durable import append_lines_durably, atomic_write_json

ZEROSHOT = -1  # ``trained_task`` of the rows measured before the first task


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

    @property
    def top1(self) -> float:
        return 100.0 * self.correct / self.total if self.total else float("nan")

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "top1": self.top1}, sort_keys=True)


class ChainRecords:
    """Reader/writer of one chain's durable records."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.rows_path = self.run_dir / "rows.jsonl"
        self.state_path = self.run_dir / "state.json"
        self.spec_path = self.run_dir / "spec.json"

    def checkpoint_path(self, task_index: int) -> Path:
        return self.run_dir / "ckpt" / f"task_{task_index:03d}.pt"

    # ----- state -----
    def load_state(self) -> dict[str, Any]:
        if not self.state_path.is_file():
            return {"completed": {}, "zeroshot_done": False}
        return json.loads(self.state_path.read_text())

    def save_state(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.state_path, state)

    def completed(self) -> dict[int, dict[str, Any]]:
        """Finished task index → {"checkpoint": relative path or None, "sha256": ...}."""
        return {int(k): v for k, v in self.load_state()["completed"].items()}

    # ----- rows -----
    def append_rows(self, rows: list[EvalRow]) -> None:
        append_lines_durably(self.rows_path, [r.to_json() for r in rows])

    def read_rows(self) -> list[EvalRow]:
        """All rows, last write wins per (trained_task, eval_task); a torn last line is skipped."""
        if not self.rows_path.is_file():
            return []
        latest: dict[tuple[int, int], EvalRow] = {}
        fields = EvalRow.__dataclass_fields__
        for line in self.rows_path.read_text().splitlines():
            try:
                d = json.loads(line)
                row = EvalRow(**{k: d[k] for k in fields})
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            latest[(row.trained_task, row.eval_task)] = row
        return list(latest.values())

    def finished_rows(self) -> list[EvalRow]:
        """Rows of the zero-shot pass and of finished tasks only."""
        state = self.load_state()
        done = {int(k) for k in state["completed"]}
        if state.get("zeroshot_done"):
            done.add(ZEROSHOT)
        return [r for r in self.read_rows() if r.trained_task in done]

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
