"""The one duration parser: `90s`, `30m`, `2h`, `1d` in config values and flags.

(The `money` branch has the same rule in `vp.clock.parse_duration`; when both are in main, one
of them should import the other.)
"""

from __future__ import annotations

import re

from vp.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_duration(text: str | int | float, where: str = "duration") -> float:
    """`"90s"`, `"30m"`, `"2h"`, `"1d"` (a decimal number and one unit), or a bare number of
    seconds, -> seconds, > 0. Anything else is a ConfigError naming `where`."""
    if isinstance(text, int | float) and not isinstance(text, bool) and text > 0:
        return float(text)
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match or float(match[1]) <= 0:
        raise ConfigError(
            f"{where} {text!r} is not a duration",
            hint='write a number and a unit: "90s", "30m", "2h" or "1d"',
        )
    return float(match[1]) * _UNITS[match[2]]
