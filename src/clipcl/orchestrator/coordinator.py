"""``run_jobs``: submit chains to a backend and follow them to the end.

Owns the coordination loop only: submit, poll each handle's state, report every change through a
callback, cancel everything when asked to stop (or on an exception such as Ctrl-C). It knows
nothing of the results store; the CLI's callback records the events.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from clipcl.errors import ClipclError
from clipcl.orchestrator.backend import (
    TERMINAL_STATES,
    Backend,
    ChainFailed,
    ChainJob,
    JobHandle,
    JobState,
)

EventCallback = Callable[[str, JobState, str | None], None]
#: Called once per poll; returns the chains whose jobs are to be cancelled now.
TickCallback = Callable[[], set[str]]


class Backoff:
    """Intervals that grow by ``factor`` while nothing changes, back to ``base`` on a change."""

    def __init__(self, base: float = 5.0, factor: float = 1.5, cap: float = 60.0) -> None:
        self.base, self.factor, self.cap = base, factor, cap
        self.current = base

    def next(self, changed: bool) -> float:
        """The wait before the next query."""
        self.current = self.base if changed else min(self.cap, self.current * self.factor)
        return self.current


def _detail(handle: JobHandle, state: JobState) -> str | None:
    """What to report with a state: the job id when running, the error when it failed."""
    if state == "running":
        return handle.job_id
    if state in ("failed", "cancelled"):
        try:
            handle.result(timeout=0)
        except ChainFailed as exc:
            return exc.message
        except TimeoutError:
            return None
    return None


def _poll(
    handles: Sequence[JobHandle], last: dict[str, JobState | None], on_event: EventCallback
) -> None:
    """Report every handle whose state changed since the last poll."""
    for handle in handles:
        if last[handle.chain_id] in TERMINAL_STATES:
            continue
        state = handle.state()
        if state != last[handle.chain_id]:
            last[handle.chain_id] = state
            on_event(handle.chain_id, state, _detail(handle, state))


def _unfinished(last: dict[str, JobState | None]) -> bool:
    return any(s not in TERMINAL_STATES for s in last.values())


def run_jobs(
    backend: Backend,
    jobs: Sequence[ChainJob],
    on_event: EventCallback,
    poll_s: float = 1.0,
    stop: threading.Event | None = None,
    on_tick: TickCallback | None = None,
) -> dict[str, JobState]:
    """Run ``jobs`` on ``backend`` until each is done, failed or cancelled.

    Args:
        backend: Where the chains run.
        jobs: One job per chain (chain ids must be unique).
        on_event: Called as ``on_event(chain_id, state, detail)`` on every state change; detail
            is the job id for ``running`` and the error for ``failed``/``cancelled``.
        poll_s: Seconds between polls.
        stop: When set, every unfinished job is cancelled and the loop waits for them to end.
        on_tick: Called every poll; the chains it returns are cancelled (``clipcl cancel CHAIN``).

    Returns:
        The final state of each chain.

    Raises:
        ClipclError: Two jobs share a chain id.
    """
    duplicates = sorted(cid for cid, n in Counter(j.chain_id for j in jobs).items() if n > 1)
    if duplicates:
        raise ClipclError(f"chains submitted twice: {', '.join(duplicates)}")
    return follow(backend.submit(jobs), on_event, poll_s, stop, on_tick=on_tick)


def follow(
    handles: Sequence[JobHandle],
    on_event: EventCallback,
    poll_s: float = 1.0,
    stop: threading.Event | None = None,
    cancel_on_exit: bool = True,
    on_tick: TickCallback | None = None,
) -> dict[str, JobState]:
    """Poll ``handles`` until each is done, failed or cancelled (see :func:`run_jobs`).

    ``cancel_on_exit``: cancel unfinished jobs when ``stop`` is set or an exception (Ctrl-C)
    ends the loop; ``False`` for jobs that live on without this process (a scheduler's): then
    ``stop`` only ends the loop. ``on_tick``: see :func:`run_jobs`.
    """
    stop = stop or threading.Event()
    last: dict[str, JobState | None] = {h.chain_id: None for h in handles}
    cancelled = False
    try:
        _poll(handles, last, on_event)
        while _unfinished(last):
            if on_tick is not None:
                wanted = on_tick()
                if wanted:
                    _cancel_all([h for h in handles if h.chain_id in wanted])
            if stop.is_set() and not cancel_on_exit:
                break
            if stop.is_set() and not cancelled:
                _cancel_all(handles)
                cancelled = True
            if cancelled:
                time.sleep(poll_s)  # waiting for the cancelled jobs to end
            else:
                stop.wait(poll_s)  # wakes early when asked to stop
            _poll(handles, last, on_event)
    except BaseException:
        if cancel_on_exit:
            _cancel_all(handles)
        raise
    return {cid: s for cid, s in last.items() if s is not None}


def _cancel_all(handles: Sequence[JobHandle]) -> None:
    """Cancel unfinished jobs, queued ones first (so none starts in a freed slot)."""
    for handle in sorted(handles, key=lambda h: h.state() != "queued"):
        if not handle.done():
            handle.cancel()
