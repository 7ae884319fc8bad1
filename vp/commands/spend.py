"""`vp spend`: what vp's hosts cost, from the ledger in vp's state (no provider call)."""

from __future__ import annotations

import typer

from vp.commands.context import command_app, globals_of
from vp.errors import UsageError
from vp.output import render

app = command_app()


@app.command(
    "spend",
    help="What vp's hosts cost: compute while running, disk while stopped (all projects).",
    epilog="Examples: vp spend   |   vp spend --by project --since 30d   |   vp spend -o json",
)
def spend_cmd(
    ctx: typer.Context,
    by: str = typer.Option("day", "--by", help="day | project | platform | host"),
    since: str = typer.Option("7d", "--since", help="How far back: 90s, 30m, 2h, 7d"),
) -> None:
    from vp import clock, spend
    from vp.state import State

    g = globals_of(ctx)
    if by not in spend.BY:
        raise UsageError(f"--by {by!r}: choose one of {', '.join(spend.BY)}")
    seconds = clock.parse_duration(since, "--since")  # a ConfigError: a usage error, exit 2
    g.load()  # a broken config is reported the same way as everywhere
    state = State()
    now = clock.now()
    rows = spend.report(state, by, now - seconds, now)
    totals = spend.totals(state, now)
    if g.output == "text":
        if rows:
            render(rows, "table", [by, "compute", "storage", "total", "hours"])
        total = sum(r["total"] for r in rows)
        print(
            f"total ${total:.2f} over {since}; today ${totals['today']:.2f}, this month "
            f"${totals['month']:.2f}; billing now ${totals['per_hour']:.2f}/h"
        )
        return
    render(
        {
            "by": by,
            "since": since,
            "rows": rows,
            "total": round(sum(r["total"] for r in rows), 4),
            **totals,
        },
        g.output,
    )
