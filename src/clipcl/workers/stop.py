"""Stopping a worker at a step boundary: the signals that ask for it and the exit that follows.

Slurm's USR2 (time limit or preemption) and SIGTERM (a Ray node drained, Kubernetes, ``scancel``
with a grace period) only *request* a stop: the training loop finishes the step in progress,
writes a mid-task snapshot and raises :class:`Preempted`; between tasks the chain stops before
the next one. The worker's command line then exits with :data:`EXIT_PREEMPTED`, the code the
backends retry on, and the Slurm job requeues itself. A second SIGTERM ends the process at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

#: The worker's exit code after a requested stop (EX_TEMPFAIL): run it again to resume.
EXIT_PREEMPTED = 75

#: The worker's exit code when a newer attempt of its chain began (it wrote nothing since).
EXIT_SUPERSEDED = 76

#: The signals a worker turns into a stop request.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class Preempted(Exception):
    """The chain stopped on request at a step or task boundary; its records resume it.

    Attributes:
        reason: What asked for the stop (a signal's name).
        progressed: Whether this run moved the chain on (a step or a task) before stopping.
    """

    def __init__(self, reason: str, progressed: bool) -> None:
        super().__init__(f"stopped on {reason}" + ("" if progressed else " before any step"))
        self.reason = reason
        self.progressed = progressed


class StopRequest:
    """A flag the training loop polls after every step (set from a signal handler)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        """Ask the chain to stop at its next step or task boundary (the first reason stays)."""
        if self.reason is None:
            self.reason = reason

    @property
    def requested(self) -> bool:
        return self.reason is not None


@contextlib.contextmanager
def stop_on_signals(
    stop: StopRequest, signals: Sequence[signal.Signals] = STOP_SIGNALS
) -> Iterator[StopRequest]:
    """Within the block, ``signals`` request ``stop``; the previous handlers come back after.

    After the first SIGTERM the default handler is back, so a second one ends the process at
    once. Outside the main thread (where Python cannot handle signals) nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        sig = signal.Signals(signum)
        stop.request(sig.name)
        if sig == signal.SIGTERM:
            signal.signal(sig, signal.SIG_DFL)

    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
