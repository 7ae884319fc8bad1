"""Time for money: the one clock the spend ledger and caps read, and the one duration parser.

`VP_NOW` (epoch seconds) replaces the clock, so tests and what-if questions ("what would
`vp spend` say next week?") inject time instead of sleeping. Only the ledger, the caps and the
stopped-host sweep read it; timeouts on the host use the host's own clock.
"""

from __future__ import annotations

import os
import re
import time

from vp.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def now() -> float:
    """Seconds since the epoch: `VP_NOW` when set, else the system clock."""
    injected = os.environ.get("VP_NOW")
    if injected:
        try:
            return float(injected)
        except ValueError:
            raise ConfigError(
                f"VP_NOW={injected!r} is not a time",
                hint="seconds since the epoch, e.g. 1767225600",
            ) from None
    return time.time()


def parse_duration(text: str | int | float, where: str = "duration") -> float:
    """`90s`, `30m`, `2h`, `1d` (a decimal number with one unit) -> seconds, > 0."""
    match = _DURATION.match(str(text)) if isinstance(text, str) else None
    if not match or float(match[1]) <= 0:
        raise ConfigError(
            f"{where} {text!r} is not a duration",
            hint='write a number and a unit: "90s", "30m", "2h" or "1d"',
        )
    return float(match[1]) * _UNITS[match[2]]


def format_duration(seconds: float) -> str:
    """A short, human duration: 45s, 12m, 3.2h, 8.0d."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
