"""Getting a host when GPUs are scarce: fallback lists and waiting for capacity.

`[host] platform` and `[host] gpu` may each be a list. An existing host of the project on any
listed platform wins (running before stopped, in list order); otherwise vp tries every
(platform, GPU) pair in order, each the provider's cheapest fitting offer first, and moves on
when the provider says it cannot (`Unavailable`: nothing in stock, no capacity, quota
exceeded) or the host it rented vanished while booting (`HostGone`). Any other error, such as a
rejected API key or a bad setting, stops at once: another GPU would not fix it. `max_price`
holds for every attempt; every failed attempt destroys what it made (vp/platforms/cloud.py).

`[host] wait_for_capacity = "30m"` tries the whole list again, with backoff, until a host is
had or the time is up.

This module owns only that order and its waiting; the host lifecycle (vp/lifecycle.py) hands
it the one-attempt create and uses it, so it imports nothing of the lifecycle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from vp.config import Config
from vp.errors import HostGone
from vp.platforms.cloud import Unavailable
from vp.ui import UI

T = TypeVar("T")

BACKOFF_FIRST = 2.0  # seconds before the list is tried again; doubles up to BACKOFF_MAX
BACKOFF_MAX = 120.0


@dataclass
class Attempt:
    platform: str
    gpu: str | None
    why: str = ""

    @property
    def what(self) -> str:
        return f"{self.platform} {self.gpu or 'any GPU'}"


def create_with_fallback(
    cfg: Config,
    ui: UI,
    names: tuple[str, ...],
    attempt_one: Callable[[str, str | None], T],
) -> T:
    """Call `attempt_one(platform, gpu)` for every (platform, GPU) pair in order, the whole
    list again with backoff while `wait_for_capacity` lasts, until one returns. One progress
    line per failed attempt; the final error lists every attempt and why it failed."""
    wait = _wait_seconds(cfg)
    deadline = time.monotonic() + wait
    delay = BACKOFF_FIRST
    pairs = [Attempt(name, gpu) for name in names for gpu in cfg.gpus_wanted]
    rounds = 0
    while True:
        rounds += 1
        tried: list[Attempt] = []
        last: Unavailable | HostGone | None = None
        for i, attempt in enumerate(pairs):
            try:
                return attempt_one(attempt.platform, attempt.gpu)
            except (Unavailable, HostGone) as exc:
                last = exc
                attempt = replace(attempt, why=exc.message)
                tried.append(attempt)
                if len(pairs) > 1 or wait:
                    ui.info(f"{attempt.platform}: {exc.message} → {_next(pairs, i, wait)}")
        left = deadline - time.monotonic()
        if left <= 0:
            break
        pause = min(delay, left)
        ui.info(
            f"no capacity yet (round {rounds}); trying again in {pause:.0f}s "
            f"(wait_for_capacity: {_human(left)} left)"
        )
        time.sleep(pause)
        delay = min(delay * 2, BACKOFF_MAX)
    if len(pairs) == 1 and not wait and last is not None:
        raise last  # one platform, one GPU: the provider's own message, as before
    waited = f" (for {_human(wait)}, {rounds} rounds)" if wait else ""
    listing = "; ".join(f"{a.what}: {a.why}" for a in tried)
    raise Unavailable(
        f"no host could be had on any platform of the list{waited}: {listing}",
        hint="add GPUs or platforms to the lists, raise max_price, or set "
        '[host] wait_for_capacity = "30m"',
    )


def _next(pairs: list[Attempt], i: int, wait: float) -> str:
    if i + 1 >= len(pairs):
        return "the list is used up" if not wait else "end of the list"
    here, there = pairs[i], pairs[i + 1]
    if there.platform == here.platform:
        return f"trying {there.gpu or 'any GPU'}"
    gpu = f" {there.gpu}" if there.gpu and len({p.gpu for p in pairs}) > 1 else ""
    return f"trying {there.platform}{gpu}"


def _wait_seconds(cfg: Config) -> float:
    value = cfg.host.wait_for_capacity
    if not value:
        return 0.0
    from vp.clock import parse_duration

    return parse_duration(value, "[host] wait_for_capacity")


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
