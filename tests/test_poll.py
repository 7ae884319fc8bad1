"""The one poll/backoff helper (vp/poll.py): returns the first non-None answer, lets the
checked thing's own errors through, and times out with a VpError that names what it waited for."""

from __future__ import annotations

import pytest

from vp.errors import VpError
from vp.poll import PollTimeout, poll


def test_returns_the_first_answer_and_tries_at_once() -> None:
    answers = iter([None, None, "ready"])
    calls: list[int] = []

    def check() -> str | None:
        calls.append(1)
        return next(answers)

    assert poll(check, timeout=30, interval=0, what="x") == "ready"
    assert len(calls) == 3


def test_the_checked_things_errors_end_the_wait() -> None:
    def check() -> None:
        raise VpError("host 42 is gone")

    with pytest.raises(VpError, match="gone"):
        poll(check, timeout=30, interval=0, what="host 42")


def test_timeout_names_what_it_waited_for_or_uses_the_callers_error() -> None:
    seen: list[int] = []

    def never() -> None:
        seen.append(1)

    with pytest.raises(PollTimeout, match="gave up waiting for snapshot s1 after 0s") as err:
        poll(never, timeout=0, interval=0, what="snapshot s1", hint="raise the timeout")
    assert err.value.hint == "raise the timeout" and seen == [1]  # tried once even so
    with pytest.raises(VpError, match="status: BUSY"):
        poll(never, timeout=0, interval=0, what="s", timed_out=lambda: VpError("status: BUSY"))
