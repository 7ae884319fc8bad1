"""The one way tests wait: poll for the event itself, never sleep a guessed time and act.

A sleep-then-act test is a race: on a loaded machine the sleep is too short and the test
fails for nothing; on an idle one it wastes time. `wait_for` polls the condition the test
actually needs (a line printed, a file on the host, an instance in the emulator) with a short
interval and, when it gives up, says what it waited for and what it saw.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL = 0.05


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    what: str | None = None,
    *,
    interval: float = INTERVAL,
    gave_up: Callable[[], str | None] | None = None,
    context: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy and return that value.

    `gave_up` ends the wait early when the event can no longer happen (e.g. the process that
    would print the line has exited): it returns why, or None to keep waiting; the predicate
    is asked once more before failing, so an event that came just before the end counts.
    `context` adds what the test saw (captured output) to the failure message.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        reason = gave_up() if gave_up is not None else None
        if reason is not None:
            value = predicate()
            if value:
                return value
            _fail(f"{reason} before {_describe(predicate, what)}", context)
        if time.monotonic() > deadline:
            _fail(f"timed out after {timeout:g}s waiting for {_describe(predicate, what)}", context)
        time.sleep(interval)


def _fail(message: str, context: Callable[[], str] | None) -> None:
    if context is not None:
        message += "\n" + context()
    raise AssertionError(message)


def _describe(predicate: Callable[[], object], what: str | None) -> str:
    """`what`, or the predicate's own source line when the caller gave no words for it."""
    if what:
        return what
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)
