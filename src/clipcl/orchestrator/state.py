"""The one rule for a chain's state: :func:`reconcile`.

A chain's state is judged from two sources only: what its jobs are doing (as a backend or a
scheduler reports them, or the last state the store recorded for them) and what its durable
records on disk say is finished. Every caller — ``plan``, ``status``, the coordinator, the
Slurm watcher, ingestion — asks :func:`reconcile`; nobody else decides whether a chain is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

#: States a job of a chain can be in, as backends and schedulers report them. ``requeued`` and
#: ``preempted`` (to be requeued) are waiting, not failures; ``gone``: nobody knows the job.
JobState = Literal[
    "queued", "running", "requeued", "preempted", "done", "failed", "cancelled", "timeout", "gone"
]
#: A chain's state as the store records it.
ChainStateName = Literal["new", "queued", "running", "done", "failed", "cancelled"]
CHAIN_STATES: tuple[str, ...] = ("new", "queued", "running", "done", "failed", "cancelled")
#: Chain states that need nobody to act before they change by themselves.
ACTIVE: frozenset[str] = frozenset({"queued", "running"})
#: Chain states after which nothing runs until the chain is submitted again.
TERMINAL: frozenset[str] = frozenset({"done", "failed", "cancelled"})

_WAITING = frozenset({"queued", "requeued", "preempted"})
_FAILED = frozenset({"failed", "timeout"})


@dataclass(frozen=True)
class Reconciled:
    """A chain's state with the facts it was judged from.

    Attributes:
        state: The chain's state.
        tasks_done: Finished tasks on disk.
        num_tasks: The chain's number of tasks.
        job: Index into the given jobs of the job the state comes from (``None``: none).
    """

    state: ChainStateName
    tasks_done: int
    num_tasks: int | None
    job: int | None = None

    @property
    def label(self) -> str:
        """``done``, ``new``, ``partial (k/T)`` or ``running (k/T)``-style text for tables."""
        if self.state == "new":
            return f"partial ({self.tasks_done}/{self.num_tasks})" if self.tasks_done else "new"
        if self.state == "done" or not self.tasks_done:
            return self.state
        return f"{self.state} ({self.tasks_done}/{self.num_tasks})"

    @property
    def finished(self) -> bool:
        """Whether every task is finished."""
        return self.state == "done"


def reconcile(
    jobs: Sequence[str] | str | None, tasks_done: int, num_tasks: int | None
) -> Reconciled:
    """The state of a chain from its jobs' states and its finished tasks.

    Args:
        jobs: The states of the chain's current jobs (one per job of its latest submission; a
            single state; or ``None``/empty when no job is known). The store's last recorded
            chain state may stand in for a job that nobody can be asked about.
        tasks_done: Finished tasks according to the chain's records on disk.
        num_tasks: The chain's number of tasks (``None``: unknown, never done by count).

    Returns:
        ``done`` once every task is finished, whatever the jobs say; else ``running`` if a
        job runs, ``queued`` if one waits (queued, requeued, preempted), ``failed`` if one
        failed or timed out, ``cancelled`` if one was cancelled; a job that ended (``done``,
        ``gone``) with tasks left is ``failed``; no job at all is ``new``.
    """
    if num_tasks is not None and tasks_done >= num_tasks:
        return Reconciled("done", tasks_done, num_tasks)
    states = [jobs] if isinstance(jobs, str) else list(jobs or ())
    if not states or all(s == "new" for s in states):
        return Reconciled("new", tasks_done, num_tasks)
    for wanted, result in (
        ({"running"}, "running"),
        (_WAITING, "queued"),
        (_FAILED, "failed"),
        ({"cancelled"}, "cancelled"),
    ):
        for i, s in enumerate(states):
            if s in wanted:
                return Reconciled(result, tasks_done, num_tasks, i)  # type: ignore[arg-type]
    return Reconciled("failed", tasks_done, num_tasks, len(states) - 1)
