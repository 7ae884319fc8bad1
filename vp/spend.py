"""What vp's hosts cost: the spend report, today's and this month's totals, and the caps.

Everything here reads the ledger in vp's state (vp/state.py), so it needs no provider call:
`vp spend`, `vp status`, the web page and the checks before a create, start or run all agree.
Days and months are this machine's local calendar. The caps count every project on this
machine (it is one wallet), open intervals up to now included.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from vp import clock
from vp.errors import VpError
from vp.state import COMPUTE, Interval, State

BY = ("day", "project", "platform", "host")


def day_start(t: float) -> float:
    d = dt.datetime.fromtimestamp(t).date()
    return dt.datetime.combine(d, dt.time()).timestamp()


def month_start(t: float) -> float:
    d = dt.datetime.fromtimestamp(t).date().replace(day=1)
    return dt.datetime.combine(d, dt.time()).timestamp()


def _next_day(t: float) -> float:
    d = dt.datetime.fromtimestamp(t).date() + dt.timedelta(days=1)
    return dt.datetime.combine(d, dt.time()).timestamp()


def spent(intervals: Iterable[Interval], since: float, until: float) -> float:
    return sum(i.cost(since, until) for i in intervals)


def totals(state: State, now: float | None = None) -> dict[str, float]:
    """Today's and this month's spend, and what is billing right now ($/h). For `vp status`
    and the web page."""
    now = clock.now() if now is None else now
    month = month_start(now)
    rows = state.intervals(since=month)
    return {
        "today": round(spent(rows, day_start(now), now), 4),
        "month": round(spent(rows, month, now), 4),
        "per_hour": round(sum(i.rate or 0 for i in rows if i.end is None), 4),
    }


def host_costs(state: State, now: float | None = None) -> dict[str, dict[str, float | None]]:
    """Per host key: cost so far (all its intervals) and its current $/h (storage when
    stopped). For `vp ls`."""
    now = clock.now() if now is None else now
    out: dict[str, dict[str, float | None]] = {}
    for i in state.intervals():
        row = out.setdefault(i.host_key, {"cost": 0.0, "per_hour": None})
        row["cost"] = (row["cost"] or 0.0) + i.cost(i.start, now)
        if i.end is None:
            row["per_hour"] = i.rate
    return out


def report(state: State, by: str, since: float, now: float | None = None) -> list[dict]:
    """Spend from `since` to now, one row per day / project / platform / host."""
    now = clock.now() if now is None else now
    rows: dict[str, dict] = {}
    for i in state.intervals(since=since):
        if by == "day":
            t = max(i.start, since)
            end = min(i.end if i.end is not None else now, now)
            while t < end:
                cut = min(_next_day(t), end)
                day = dt.datetime.fromtimestamp(t).date().isoformat()
                _add(rows, day, i, t, cut)
                t = cut
            continue
        key = {
            "project": i.project or "-",
            "platform": i.platform,
            "host": f"{i.host_name or '-'} ({i.host_key})",
        }[by]
        _add(rows, key, i, since, now)
    out = []
    for key in sorted(rows):
        row = rows[key]
        out.append(
            {
                by: key,
                "compute": round(row["compute"], 4),
                "storage": round(row["storage"], 4),
                "total": round(row["compute"] + row["storage"], 4),
                "hours": round(row["hours"], 2),
            }
        )
    return out


def _add(rows: dict, key: str, i: Interval, since: float, until: float) -> None:
    row = rows.setdefault(key, {"compute": 0.0, "storage": 0.0, "hours": 0.0})
    row[i.kind if i.kind == COMPUTE else "storage"] += i.cost(since, until)
    if i.kind == COMPUTE:
        end = min(i.end if i.end is not None else until, until)
        row["hours"] += max(0.0, end - max(i.start, since)) / 3600


# -- caps ----------------------------------------------------------------------------------------


class OverBudget(VpError):
    """A cap is reached, or would be before a run could do anything useful."""


@dataclass(frozen=True)
class Budget:
    """`[budget]`: USD caps (the lower of the user and project files' values) and how many
    minutes of budget a host must have left at its price to be worth starting."""

    daily: float | None = None
    monthly: float | None = None
    min_minutes: float = 5.0

    @classmethod
    def of(cls, cfg) -> Budget:
        return cls(
            daily=cfg.budget.daily,
            monthly=cfg.budget.monthly,
            min_minutes=float(cfg.budget.min_minutes),
        )

    @property
    def capped(self) -> bool:
        return self.daily is not None or self.monthly is not None


@dataclass(frozen=True)
class Allowance:
    """How much of the tightest cap is left, and for how long the hosts can bill at `burn`."""

    cap: float
    spent: float
    period: str  # "today" | "this month"
    burn: float  # $/h: what is billing now, plus the host about to run

    @property
    def left(self) -> float:
        return max(0.0, self.cap - self.spent)

    @property
    def hours(self) -> float:
        return float("inf") if self.burn <= 0 else self.left / self.burn


def allowance(
    budget: Budget, state: State, *, host_key: str | None, price: float | None, now: float
) -> Allowance | None:
    """The tightest cap for a host billing `price` $/h (`host_key`: a host that may already
    be in the ledger, whose current rate it replaces). None when no cap is set."""
    if not budget.capped:
        return None
    rows = state.intervals(since=month_start(now))
    burn = sum(i.rate or 0 for i in rows if i.end is None and i.host_key != host_key)
    burn += price or 0
    found: list[Allowance] = []
    if budget.daily is not None:
        found.append(Allowance(budget.daily, spent(rows, day_start(now), now), "today", burn))
    if budget.monthly is not None:
        month = spent(rows, month_start(now), now)
        found.append(Allowance(budget.monthly, month, "this month", burn))
    return min(found, key=lambda a: (a.hours, a.left))


def check(
    cfg,
    state: State,
    *,
    what: str,
    host_key: str | None = None,
    price: float | None,
    now: float | None = None,
) -> Allowance | None:
    """Refuse (OverBudget) to `what` ("create a host", "start vp-x", "run on vp-x") when a cap
    is reached or `price` would reach it within `[budget] min_minutes`; `--over-budget`
    (cfg.over_budget) lets it through once. Returns the allowance (None: no cap)."""
    budget = Budget.of(cfg)
    now = clock.now() if now is None else now
    found = allowance(budget, state, host_key=host_key, price=price, now=now)
    if found is None or getattr(cfg, "over_budget", False):
        return found
    head = f"budget: ${found.spent:.2f} of ${found.cap:.2f} spent {found.period}"
    key = "daily" if found.period == "today" else "monthly"
    hint = (
        f"raise [budget] {key} (the lower of your user file's and vp.toml's counts), wait, "
        "or pass --over-budget to go ahead this once"
    )
    if found.left <= 0:
        raise OverBudget(f"{head}; not going to {what}", hint=hint)
    if found.hours * 60 < budget.min_minutes:
        rate = f" at ${found.burn:.2f}/h" if found.burn else ""
        raise OverBudget(
            f"{head}; {what}{rate} would reach it in {clock.format_duration(found.hours * 3600)}"
            f" (less than [budget] min_minutes = {budget.min_minutes:g})",
            hint=hint,
        )
    return found
