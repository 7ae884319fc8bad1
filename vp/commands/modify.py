"""Capabilities only some providers have: modify a host in place, clone a host from its disk.

A platform opts in by implementing `SupportsModify` / `SupportsClone` (vp.platforms.base); for
any other platform these commands stop with one line saying it cannot (vp/lifecycle.py).
"""

from __future__ import annotations

import typer

from vp import lifecycle
from vp.commands.context import command_app, globals_of
from vp.commands.hosts import show_host
from vp.state import State

app = command_app()


@app.command("modify", help="Change a host's GPU, GPU count, vCPUs or disk in place.")
def modify_cmd(
    ctx: typer.Context,
    host: str = typer.Argument(None, help="Host id or name"),
    gpu: str = typer.Option(None, "--gpu", help="New GPU type, e.g. H100"),
    gpus: int = typer.Option(None, "--gpus", help="New GPU count"),
    cpus: int = typer.Option(None, "--cpus", help="New vCPU count"),
    disk_gb: int = typer.Option(None, "--disk-gb", help="New disk size in GB (grow only)"),
) -> None:
    g = globals_of(ctx)
    changed = lifecycle.modify(
        g.load(), State(), g.ui, host or g.host, gpu=gpu, gpus=gpus, cpus=cpus, disk_gb=disk_gb
    )
    show_host(g, changed)


@app.command("clone", help="Make a new host from a host's disk (same GPU and size).")
def clone_cmd(
    ctx: typer.Context,
    host: str = typer.Argument(None, help="Host id or name to copy"),
    name: str = typer.Option(..., "--name", help="Name for the new host"),
) -> None:
    g = globals_of(ctx)
    cfg = g.load()
    made = lifecycle.clone(cfg, State(), g.ui, host or g.host, name)
    snapshot = made.labels.get("snapshot")
    if snapshot:
        g.ui.info(f"kept snapshot {snapshot} on {cfg.platform} (its storage is billed)")
    show_host(g, made)
