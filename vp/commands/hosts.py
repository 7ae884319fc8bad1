"""Host lifecycle commands: ls, offers, up, start, stop, down, status, gpu. Each parses, calls
the lifecycle service (vp/lifecycle.py) and renders the records of vp/records.py."""

from __future__ import annotations

import sys

import typer

from vp import lifecycle, records
from vp.commands.context import Globals, command_app, globals_of
from vp.errors import UsageError, VpError
from vp.offers import platform_for, spec_from_config
from vp.output import render
from vp.platforms.base import Host
from vp.run import open_workspace
from vp.state import State

app = command_app()


def show_host(g: Globals, host: Host) -> None:
    """One host: its JSON record with -o json|yaml, `key  value` lines otherwise."""
    if g.output in ("json", "yaml"):
        render(records.host_json(host), g.output)
    else:
        render(records.host_text(host), "text")


def show_hosts(g: Globals, hosts: list[Host]) -> None:
    if g.output in ("json", "yaml"):
        render([records.host_json(h) for h in hosts], g.output)
    else:
        render([records.host_cells(h) for h in hosts], "table", records.HOST_COLUMNS)


@app.command("ls", help="List the project's hosts (--all: every vp host on the platform).")
@app.command("list-instances", help="Alias of `vp ls`.", hidden=True)
def ls_cmd(
    ctx: typer.Context,
    all_projects: bool = typer.Option(False, "--all", help="All projects"),
) -> None:
    g = globals_of(ctx)
    cfg = g.load()
    hosts = lifecycle.list_hosts(cfg, State(), all_projects=all_projects)
    if g.output == "text" and not hosts:
        scope = "" if all_projects else f" for project {cfg.project}"
        g.ui.info(f"no hosts on {cfg.platform}{scope}")
        return
    show_hosts(g, hosts)


@app.command("offers", help="Search GPUs and prices that meet [host] (cheapest first).")
def offers_cmd(
    ctx: typer.Context,
    gpu: str = typer.Option(None, "--gpu", help="GPU name, e.g. H100"),
    gpus: int = typer.Option(None, "--gpus", help="GPU count"),
    max_price: float = typer.Option(None, "--max-price", help="$/h ceiling"),
    limit: int = typer.Option(20, "-n", "--limit"),
) -> None:
    g = globals_of(ctx)
    cfg = g.load()
    spec = spec_from_config(cfg)
    spec.gpu = gpu or spec.gpu
    spec.gpus = gpus or spec.gpus
    spec.max_price = max_price if max_price is not None else spec.max_price
    if cfg.platform == "auto":
        from vp.offers import all_offers

        offers = all_offers(cfg, spec, g.ui)
    else:
        offers = platform_for(cfg).offers(spec)
    rows = [o.to_dict() for o in offers[:limit]]
    columns = ["platform", "gpu", "gpus", "price", "region", "spot", "id"]
    if any("quota_vcpus" in row["extra"] for row in rows):  # aws: the family's vCPU quota
        columns.append("quota_vcpus")
        for row in rows:
            row["quota_vcpus"] = row["extra"].get("quota_vcpus")
    if g.output == "text" and not rows:
        g.ui.info("no offers match")
        return
    render(rows, "table" if g.output == "text" else g.output, columns)


@app.command("up", help="Create the project's host from [host] (or start its stopped one).")
@app.command("create", help="Alias of `vp up`.", hidden=True)
def up_cmd(ctx: typer.Context) -> None:
    g = globals_of(ctx)
    show_host(g, lifecycle.up(g.load(), State(), g.ui, g.host))


@app.command("start", help="Start a stopped host and wait until ssh answers.")
def start_cmd(ctx: typer.Context, host: str = typer.Argument(None, help="Host id or name")) -> None:
    g = globals_of(ctx)
    show_host(g, lifecycle.start(g.load(), State(), g.ui, host or g.host))


@app.command("stop", help="Stop a host (keeps its disk; billing for compute stops).")
def stop_cmd(ctx: typer.Context, host: str = typer.Argument(None, help="Host id or name")) -> None:
    g = globals_of(ctx)
    cfg = g.load()
    result = lifecycle.stop(cfg, State(), g.ui, host or g.host)
    target = result.host
    if not result.done:
        g.ui.warn(
            f"{target.name} was still stopping after {lifecycle.STOP_TIMEOUT:.0f}s; see `vp ls`"
        )
    else:
        g.ui.info(f"stopped {target.name} ({target.id}) on {target.platform}")


@app.command("down", help="Destroy a host and its disk. Asks first unless --yes.")
@app.command("destroy", help="Alias of `vp down`.", hidden=True)
def down_cmd(
    ctx: typer.Context,
    host: str = typer.Argument(None, help="Host id or name"),
    yes: bool = typer.Option(False, "-y", "--yes", help="Don't ask"),
) -> None:
    g = globals_of(ctx)
    cfg = g.load()

    def confirm(target: Host) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError(
                f"refusing to destroy {target.name} without confirmation", hint="pass --yes"
            )
        return typer.confirm(f"Destroy {target.name} ({target.id}) on {cfg.platform} and its disk?")

    done = lifecycle.down(cfg, State(), g.ui, host or g.host, confirm=confirm)
    if done is None:
        g.ui.note("nothing destroyed")
        raise typer.Exit(1)
    target = done.host
    g.ui.info(f"destroyed {target.name} ({target.id}) on {cfg.platform}")
    from vp.sshconfig import user_config_path

    for project in done.ssh_aliases_removed:
        g.ui.info(f"removed Host vp-{project} from {user_config_path()}")


@app.command("status", help="The project's host: state, uptime, $/h and cost so far.")
def status_cmd(ctx: typer.Context) -> None:
    g = globals_of(ctx)
    show_host(g, lifecycle.status(g.load(), State(), g.ui, g.host))


@app.command("gpu", help="nvidia-smi summary of the project's host.")
def gpu_cmd(ctx: typer.Context) -> None:
    g = globals_of(ctx)
    cfg = g.load()
    state = State()
    ws = open_workspace(cfg, state, g.ui, g.host, create=False)
    host, transport = ws.host, ws.transport
    query = (
        "nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total,temperature.gpu"
        " --format=csv,noheader,nounits"
    )
    proc = transport.run(f"{query} 2>&1\n", timeout=60)
    if proc.returncode != 0:
        raise VpError(
            f"nvidia-smi failed on {host.name}: "
            + (proc.stdout.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        )
    keys = ["index", "name", "util_pct", "mem_used_mib", "mem_total_mib", "temp_c"]
    rows = [
        dict(zip(keys, [c.strip() for c in line.split(",")], strict=False))
        for line in proc.stdout.decode().splitlines()
        if line.strip()
    ]
    render(rows, "table" if g.output == "text" else g.output, keys)
