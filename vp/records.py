"""What vp lists — hosts and runs — in one schema for every front: `vp ls`, `vp status`,
`vp up|start|modify|clone`, `vp runs` and the web page's API all render these records.

JSON (and YAML) carry machine values in documented units, the same everywhere:
times are ISO 8601 in UTC (`2026-12-01T14:03:22Z`, keys ending `_at`), durations are seconds
(keys ending `_s`), prices are US dollars per hour (`price_per_hour`, `billing_per_hour`),
costs US dollars (`cost_usd`). Ages and uptimes read the real clock (providers stamp creation
with it); costs come from the spend ledger, which reads `vp.clock`. Unknown values are null,
never absent. Tables and `-o text` show the same records for people: units in the headers,
human durations and ages, local ISO times.
README.md ("Output formats") documents the schema; tests/test_records.py holds it to that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from vp.platforms.base import Host
from vp.state import RunRecord, State

# Table columns: (header, key of `host_cells` / `run_cells`). Headers carry the units.
HOST_COLUMNS = [
    "name",
    "id",
    "platform",
    "status",
    "gpu",
    "gpus",
    "$/h",
    "cost $",
    "spot",
    "region",
    "age",
    "ssh",
]
# `vp ls --all`: every provider, every project, known to this machine or not.
ALL_HOST_COLUMNS = ["platform", "name", "id", "project", "status", "$/h", "cost $", "age", "known"]
RUN_COLUMNS = [
    "id",
    "command",
    "host",
    "started",
    "duration",
    "exit",
    "status",
    "attempt",
    "cost $",
]


# ------------------------------------------------------------------------- value formats


def iso_utc(t: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC to the second: the JSON form of every time."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_time(t: float | None) -> str:
    """An epoch time as local ISO date and time, for people."""
    if t is None:
        return "-"
    return datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    """Seconds for people: 0.2s, 42s, 3m 07s, 2h 05m, 3d 04h."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    n = int(s)
    if n < 60:
        return f"{n}s"
    if n < 3600:
        return f"{n // 60}m {n % 60:02d}s"
    if n < 86400:
        return f"{n // 3600}h {n % 3600 // 60:02d}m"
    return f"{n // 86400}d {n % 86400 // 3600:02d}h"


def age(t: float | None, now: float | None = None) -> str:
    """How long ago `t` was: `12 min ago`."""
    if t is None:
        return "-"
    n = int(max(0.0, (now if now is not None else time.time()) - t))
    if n < 60:
        return f"{n} s ago"
    if n < 3600:
        return f"{n // 60} min ago"
    if n < 86400:
        return f"{n // 3600} h {n % 3600 // 60} min ago"
    days = n // 86400
    return f"{days} day{'s' if days != 1 else ''} ago"


def money(usd: float | None) -> str:
    """Dollars for people: $0.36, and cents' fractions where they matter ($0.0042)."""
    if usd is None:
        return "-"
    return f"${usd:.2f}" if usd == 0 or usd >= 0.1 else f"${usd:.4f}"


def _number(x: float | None, digits: int) -> float | None:
    return None if x is None else round(float(x), digits)


# ------------------------------------------------------------------------- hosts


def _ssh(host: Host) -> str | None:
    if not host.ssh_host:
        return None
    return f"{host.ssh_user or 'root'}@{host.ssh_host}:{host.ssh_port or 22}"


def _uptime(host: Host, now: float) -> float | None:
    return None if host.created_at is None else max(0.0, now - host.created_at)


@dataclass(frozen=True)
class Billing:
    """What vp's spend ledger (vp/spend.py) knows of a host: what it has cost, what it bills
    now (its price running, its disk stopped), and whose it is."""

    cost_usd: float | None = None
    per_hour: float | None = None
    project: str | None = None
    known: bool = True  # this machine's state knows the host (`vp ls --all` finds others)


def ledger(state: State) -> dict[str, Billing]:
    """Per host key, what the spend ledger recorded (vp/spend.py)."""
    from vp.spend import host_costs

    return {
        key: Billing(cost_usd=c.get("cost"), per_hour=c.get("per_hour"))
        for key, c in host_costs(state).items()
    }


def listed_billing(hosts: list[Host], state: State) -> list[Billing]:
    """`vp ls`'s ledger facts per host, and whether this machine's state knows it: one
    function for the CLI's listing and the page's, so both show the same records."""
    book = ledger(state)
    return [replace(book.get(h.key, Billing()), known=state.host(h.key) is not None) for h in hosts]


def host_json(host: Host, now: float | None = None, billing: Billing | None = None) -> dict:
    """One host in the JSON schema. `uptime_s` counts from creation; `cost_usd` is what the
    ledger recorded, or else uptime at the current price (an estimate); `billing_per_hour`
    what it costs now."""
    now = time.time() if now is None else now
    billing = billing or Billing()
    uptime = _uptime(host, now)
    cost = billing.cost_usd
    if cost is None and uptime is not None and host.price is not None:
        cost = uptime / 3600 * host.price
    rate = billing.per_hour
    if rate is None and host.status == "running":
        rate = host.price
    return {
        "name": host.name,
        "id": host.id,
        "platform": host.platform,
        "project": billing.project or host.labels.get("project") or None,
        "status": host.status,
        "gpu": host.gpu,
        "gpus": host.gpus,
        "price_per_hour": _number(host.price, 6),
        "billing_per_hour": _number(rate, 6),
        "spot": host.labels.get("market") == "spot",  # interruptible: may be preempted
        "region": host.region,
        "ssh": _ssh(host),
        "created_at": iso_utc(host.created_at),
        "stopped_at": iso_utc(host.stopped_at),
        "uptime_s": _number(uptime, 1),
        "cost_usd": _number(cost, 6),
        "known": billing.known,
        # Its rank in a multi-node run (vp/nodes.py): rank >= 1, or 0 for the host whose
        # nodes they are; null for a host of no such run.
        "node": int(host.labels["node"]) if host.labels.get("node", "").isdigit() else None,
        "labels": dict(host.labels),
    }


def host_cells(host: Host, now: float | None = None, billing: Billing | None = None) -> dict:
    """One host as a table row (`HOST_COLUMNS`, `ALL_HOST_COLUMNS`)."""
    now = time.time() if now is None else now
    j = host_json(host, now, billing)
    return {
        "name": host.name if j["node"] is None else f"{host.name} (node {j['node']})",
        "id": host.id,
        "platform": host.platform,
        "project": j["project"],
        "status": host.status,
        "gpu": host.gpu,
        "gpus": host.gpus,
        "$/h": None if j["billing_per_hour"] is None else f"{j['billing_per_hour']:.2f}",
        "cost $": None if j["cost_usd"] is None else f"{j['cost_usd']:.2f}",
        "spot": "yes" if j["spot"] else "no",
        "region": host.region,
        "age": duration(_uptime(host, now)),
        "ssh": j["ssh"],
        "known": "yes" if j["known"] else "no",
    }


def total_line(rows: list[dict]) -> str:
    """Under a host table: what they cost so far and what they bill now."""
    cost = sum(float(r["cost $"]) for r in rows if r.get("cost $"))
    rate = sum(float(r["$/h"]) for r in rows if r.get("$/h"))
    return f"total: ${cost:.2f} so far, ${rate:.2f}/h now"


def host_text(host: Host, now: float | None = None, billing: Billing | None = None) -> dict:
    """One host as `key  value` lines (`vp status`, `vp up`)."""
    now = time.time() if now is None else now
    j = host_json(host, now, billing)
    lines: dict[str, Any] = {
        "name": host.name,
        "id": host.id,
        "platform": host.platform,
        "status": host.status,
        "gpu": f"{host.gpus}x {host.gpu}" if host.gpu else None,
        "price": f"{money(host.price)}/h" if host.price is not None else None,
        "region": host.region,
        "ssh": j["ssh"],
    }
    if host.created_at is not None:
        lines["created"] = f"{local_time(host.created_at)} ({age(host.created_at, now)})"
        lines["uptime"] = duration(j["uptime_s"])
    if host.stopped_at is not None:
        lines["stopped"] = f"{local_time(host.stopped_at)} ({age(host.stopped_at, now)})"
    if j["billing_per_hour"] is not None and j["billing_per_hour"] != host.price:
        lines["billing now"] = f"{money(j['billing_per_hour'])}/h"
    if j["cost_usd"] is not None:
        lines["cost so far"] = money(j["cost_usd"])
    return {k: v for k, v in lines.items() if v is not None}


# ------------------------------------------------------------------------- runs


def run_json(run: RunRecord) -> dict[str, Any]:
    """One run in the JSON schema."""
    return {
        "id": run.id,
        "project": run.project,
        "command": run.command,
        "host_name": run.host_name,
        "platform": run.platform,
        "workdir": run.workdir,
        "status": run.status,
        "exit_code": run.exit_code,
        "attempt": run.attempt,  # after a preemption vp re-runs it (vp/recover.py): 2, 3, ...
        "parent": run.parent,  # the run this attempt re-runs, or null
        "started_at": iso_utc(run.started),
        "ended_at": iso_utc(run.ended),
        "duration_s": _number(run.duration, 1),
        "price_per_hour": _number(run.price, 6),
        "cost_usd": _number(run.cost, 6),
    }


def run_cells(run: RunRecord) -> dict[str, Any]:
    """One run as a table row (`RUN_COLUMNS`)."""
    return {
        "id": run.id,
        "command": run.command,
        "host": run.host_name,
        "started": local_time(run.started),
        "duration": duration(run.duration),
        "exit": run.exit_code,
        "status": run.status,
        "attempt": run.attempt,
        "cost $": None if run.cost is None else f"{run.cost:.4f}",
    }
