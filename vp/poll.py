"""Waiting on something outside vp (a provider's status, an operation, a snapshot): one loop
for all of them, so deadlines, backoff and the timeout message behave the same everywhere.

    host = poll(lambda: ready_or_none(), timeout=600, interval=2, what="host 42 to boot")
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from vp.errors import VpError

T = TypeVar("T")

MIN_SLEEP = 0.05


class PollTimeout(VpError):
    """The wait ran out before the awaited thing happened."""


def poll(
    check: Callable[[], T | None],
    *,
    timeout: float,
    interval: float,
    what: str,
    backoff: float = 1.0,
    max_interval: float = 30.0,
    hint: str | None = None,
    timed_out: Callable[[], VpError] | None = None,
) -> T:
    """Call `check` until it returns something other than None, and return that.

    `check` runs at once and then every `interval` seconds (multiplied by `backoff` after each
    try, up to `max_interval`), never sleeping past the deadline; it is always tried once more
    at the deadline. Errors `check` raises propagate (a provider saying the thing is gone ends
    the wait). When time runs out, raises `timed_out()` if given (so the message can quote the
    last status seen), else PollTimeout "gave up waiting for WHAT after Ns".
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        result = check()
        if result is not None:
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            if timed_out is not None:
                raise timed_out()
            raise PollTimeout(f"gave up waiting for {what} after {timeout:.0f}s", hint=hint)
        time.sleep(max(MIN_SLEEP, min(delay, left)))
        delay = min(delay * backoff, max_interval)
