"""Capabilities only some providers have: modify a host in place, clone a host from its disk.

A platform opts in by implementing `SupportsModify` / `SupportsClone` (vp.platforms.base); for
any other platform these commands stop with one line saying it cannot.
"""

from __future__ import annotations

from dataclasses import replace

import typer

from vp.cli import _globals, app
from vp.commands.hosts import _find, _row
from vp.errors import UsageError
from vp.hosts import adopt_new_host, platform_for, with_local_facts
from vp.output import render
from vp.platforms.base import SupportsClone, SupportsModify
from vp.state import State


def _ready_timeout(cfg) -> float:
    return float(cfg.host.ready_timeout)


@app.command("modify", help="Change a host's GPU, GPU count, vCPUs or disk in place.")
def modify_cmd(
    ctx: typer.Context,
    host: str = typer.Argument(None, help="Host id or name"),
    gpu: str = typer.Option(None, "--gpu", help="New GPU type, e.g. H100"),
    gpus: int = typer.Option(None, "--gpus", help="New GPU count"),
    cpus: int = typer.Option(None, "--cpus", help="New vCPU count"),
    disk_gb: int = typer.Option(None, "--disk-gb", help="New disk size in GB (grow only)"),
) -> None:
    g = _globals(ctx)
    cfg = g.load()
    platform = platform_for(cfg)
    if not isinstance(platform, SupportsModify):
        raise UsageError(f"{cfg.platform} cannot modify hosts")
    if gpu is None and gpus is None and cpus is None and disk_gb is None:
        raise UsageError("nothing to modify", hint="pass --gpu, --gpus, --cpus or --disk-gb")
    state = State()
    target, _p = _find(cfg, state, host or g.host, g.ui)
    g.ui.info(f"modifying {target.name} ({target.id}) on {cfg.platform}")
    changed = platform.modify(target.id, cpus=cpus, gpu=gpu, gpus=gpus, disk_gb=disk_gb)
    ready = platform.wait_ready(target.id, _ready_timeout(cfg))
    # The key and pin alias stay; the price vp remembered was the old hardware's.
    price = ready.price if ready.price is not None else changed.price
    ready = replace(with_local_facts(ready, state), price=price)
    state.save_host(ready, cfg.project)
    render(_row(ready), g.output)


@app.command("clone", help="Make a new host from a host's disk (same GPU and size).")
def clone_cmd(
    ctx: typer.Context,
    host: str = typer.Argument(None, help="Host id or name to copy"),
    name: str = typer.Option(..., "--name", help="Name for the new host"),
) -> None:
    g = _globals(ctx)
    cfg = g.load()
    platform = platform_for(cfg)
    if not isinstance(platform, SupportsClone):
        raise UsageError(f"{cfg.platform} cannot clone hosts")
    state = State()
    source, _p = _find(cfg, state, host or g.host, g.ui)
    g.ui.info(f"cloning {source.name} ({source.id}) on {cfg.platform} as {name}")
    made, _t = adopt_new_host(cfg, state, g.ui, platform, platform.clone(source.id, name), "clone")
    snapshot = made.labels.get("snapshot")
    if snapshot:
        g.ui.info(f"kept snapshot {snapshot} on {cfg.platform} (its storage is billed)")
    render(_row(made), g.output)
