"""User-facing error type: bad input that the CLI reports as one line with exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ClipclError(Exception):
    """An error caused by the user's input (a file, a flag, a name), not by a bug.

    The message must say which thing is wrong and what is allowed; the CLI prints it as
    ``error: <message>`` and exits with code 2 without a traceback.
    """


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest allowed name, or ``""``."""
    matches = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def unknown_name(kind: str, value: str, allowed: Iterable[str]) -> ClipclError:
    """Build the standard error for an unknown registry name."""
    allowed = sorted(allowed)
    return ClipclError(
        f"unknown {kind} '{value}'{did_you_mean(value, allowed)}; allowed: {', '.join(allowed)}"
    )
