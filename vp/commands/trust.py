"""`vp trust`: the user's consent to the ssh machines this project's file names (vp/trust.py).

Running it is the answer to the question vp asks on a terminal, for scripts, CI and first
runs without one; `--forget` takes every answer for this project folder back.
"""

from __future__ import annotations

import typer

from vp import trust
from vp.commands.context import command_app, globals_of

app = command_app()


@app.command(
    "trust",
    help="Trust the ssh host(s) this project's vp.toml names (asked once per machine).",
)
def trust_cmd(
    ctx: typer.Context,
    forget: bool = typer.Option(False, "--forget", help="Take back this project's trust"),
) -> None:
    g = globals_of(ctx)
    cfg = g.load()
    root = cfg.project_root.resolve()
    if forget:
        gone = trust.forget(cfg)
        if gone:
            g.ui.info(f"no longer trusting {', '.join(gone)} for {root}")
        else:
            g.ui.info(f"nothing was trusted for {root}")
        return
    named = trust.project_destinations(cfg)
    if not named:
        g.ui.info(f"nothing to trust: no project file of {root} names an ssh host")
        return
    for label, specs in named:
        trust.record(cfg, specs)
        g.ui.info(f"trusting {label} {', '.join(specs)} for {root} (`vp trust --forget` undoes it)")
