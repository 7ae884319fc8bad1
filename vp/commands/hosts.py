"""Host lifecycle commands: ls, offers, up, start, stop, down, status, gpu. Each parses, calls
the lifecycle service (vp/lifecycle.py) and renders the records of vp/records.py."""

from __future__ import annotations

import sys
from dataclasses import replace

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


def billing(state: State) -> dict[str, records.Billing]:
    """Per host key, what the spend ledger recorded (vp/spend.py)."""
    return records.ledger(state)


def show_host(g: Globals, host: Host, state: State | None = None) -> None:
    """One host: its JSON record with -o json|yaml, `key  value` lines otherwise."""
    known = billing(state or State()).get(host.key)
    if g.output in ("json", "yaml"):
        render(records.host_json(host, billing=known), g.output)
    else:
        render(records.host_text(host, billing=known), "text")


@app.command(
    "ls",
    help="List the project's hosts with $/h and cost so far (--all: every vp host on every "
    "provider with credentials here, known to this machine or not).",
)
@app.command("list-instances", help="Alias of `vp ls`.", hidden=True)
def ls_cmd(
    ctx: typer.Context,
    all_projects: bool = typer.Option(
        False, "--all", help="Every project, on every configured provider"
    ),
) -> None:
    g = globals_of(ctx)
    cfg = g.load()
    state = State()
    if all_projects:
        _ls_everywhere(g, cfg, state)
        return
    hosts = lifecycle.list_hosts(cfg, state)
    if g.output == "text" and not hosts:
        g.ui.info(f"no hosts on {cfg.platform} for project {cfg.project}")
        return
    facts = records.listed_billing(hosts, state)
    if g.output in ("json", "yaml"):
        render(
            [records.host_json(h, billing=b) for h, b in zip(hosts, facts, strict=True)], g.output
        )
        return
    rows = [records.host_cells(h, billing=b) for h, b in zip(hosts, facts, strict=True)]
    render(rows, "table", records.HOST_COLUMNS)
    print(records.total_line(rows))


def _ls_everywhere(g: Globals, cfg, state: State) -> None:
    """`vp ls --all`: ask every configured provider (vp/orphans.py)."""
    from vp.orphans import sweep

    found = sweep(cfg, state, g.ui)
    ledger = billing(state)
    shown = lifecycle.ranks_marked([f.host for f in found.found])
    pairs = [
        (
            host,
            replace(
                ledger.get(f.host.key, records.Billing()),
                per_hour=f.per_hour,
                project=f.project,
                known=f.known,
            ),
        )
        for f, host in zip(found.found, shown, strict=True)
    ]
    if g.output != "text":
        render([records.host_json(h, billing=b) for h, b in pairs], g.output)
        return
    for note in found.notes:
        g.ui.note(note)
    if not pairs:
        asked = ", ".join(found.asked) or "no provider (none has credentials here)"
        g.ui.info(f"no vp hosts on {asked}")
        return
    rows = [records.host_cells(h, billing=b) for h, b in pairs]
    render(rows, "table", records.ALL_HOST_COLUMNS)
    print(records.total_line(rows))
    if found.orphans:
        g.ui.note(
            f"{len(found.orphans)} host(s) this machine does not know (known: no); "
            "`vp cleanup --orphans` destroys them"
        )


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
    if not rows:
        _no_offers(cfg, spec, gpu, gpus, max_price)
        if g.output == "text":
            g.ui.info(f"{cfg.platform} offers nothing right now")
            return
    render(rows, "table" if g.output == "text" else g.output, columns)


def _no_offers(cfg, spec, gpu: str | None, gpus: int | None, max_price: float | None) -> None:
    """An explicit filter (a flag, or [host] gpu / max_price) that matched nothing is an error,
    exit 1; one naming a GPU the platform does not offer suggests the nearest names it does."""
    from vp.platforms.cloud import SET_GPU, CloudPlatform
    from vp.platforms.common import describe

    if not (spec.gpu or gpus or spec.max_price is not None):
        return  # no filter at all: the platform has nothing, which is not the user's mistake
    named = f"--gpu {gpu}" if gpu else f"[host] gpu = {spec.gpu!r}"
    if cfg.platform != "auto" and spec.gpu:
        platform = platform_for(cfg)
        if isinstance(platform, CloudPlatform):
            hint = None if gpu else "set a GPU it offers: " + SET_GPU
            unknown = platform.unmatched_gpu(spec, named, hint)
            if unknown is not None:
                raise unknown
    price = f" at or below ${spec.max_price:.2f}/h" if spec.max_price is not None else ""
    where = "configured platform" if cfg.platform == "auto" else cfg.platform
    if price or spec.gpus > 1:
        hint = "raise --max-price ([host] max_price) or ask for fewer --gpus"
    else:
        hint = f"run `vp offers -p {cfg.platform}` to see what is available"
    raise VpError(f"no {where} offers for {describe(spec)}{price}", hint=hint)


@app.command("up", help="Create the project's host from [host] (or start its stopped one).")
@app.command("create", help="Alias of `vp up`.", hidden=True)
def up_cmd(ctx: typer.Context) -> None:
    g = globals_of(ctx)
    show_host(g, lifecycle.up(g.load(), State(), g.ui, g.host))


@app.command("start", help="Start a stopped host and wait until ssh answers.")
def start_cmd(ctx: typer.Context, host: str = typer.Argument(None, help="Host id or name")) -> None:
    g = globals_of(ctx)
    show_host(g, lifecycle.start(g.load(), State(), g.ui, host or g.host))


@app.command(
    "stop",
    help="Stop a host (keeps its disk; billing for compute stops). With no host named: the "
    "project's, and the other nodes of a multi-node run.",
)
def stop_cmd(ctx: typer.Context, host: str = typer.Argument(None, help="Host id or name")) -> None:
    g = globals_of(ctx)
    cfg = g.load()
    for result in lifecycle.stop(cfg, State(), g.ui, host or g.host):
        target = result.host
        if not result.done:
            g.ui.warn(
                f"{target.name} was still stopping after {lifecycle.STOP_TIMEOUT:.0f}s; see `vp ls`"
            )
        else:
            g.ui.info(f"stopped {target.name} ({target.id}) on {target.platform}")


@app.command(
    "down",
    help="Destroy a host and its disk (with no host named: the project's, and the other nodes "
    "of a multi-node run). Asks first unless --yes.",
)
@app.command("destroy", help="Alias of `vp down`.", hidden=True)
def down_cmd(
    ctx: typer.Context,
    host: str = typer.Argument(None, help="Host id or name"),
    yes: bool = typer.Option(False, "-y", "--yes", help="Don't ask"),
) -> None:
    g = globals_of(ctx)
    cfg = g.load()

    def confirm(targets: list[Host]) -> bool:
        named = ", ".join(f"{t.name} ({t.id})" for t in targets)
        if yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to destroy {named} without confirmation", hint="pass --yes")
        return typer.confirm(f"Destroy {named} on {cfg.platform} and the disk of each?")

    done = lifecycle.down(cfg, State(), g.ui, host or g.host, confirm=confirm)
    if not done:
        g.ui.note("nothing destroyed")
        raise typer.Exit(1)
    from vp.sshconfig import user_config_path

    for each in done:
        target = each.host
        g.ui.info(f"destroyed {target.name} ({target.id}) on {cfg.platform}")
        for project in each.ssh_aliases_removed:
            g.ui.info(f"removed Host vp-{project} from {user_config_path()}")


@app.command("status", help="The project's host: state, uptime, $/h and cost so far.")
def status_cmd(ctx: typer.Context) -> None:
    from vp import spend

    g = globals_of(ctx)
    state = State()
    host = lifecycle.status(g.load(), state, g.ui, g.host)
    known = billing(state).get(host.key)
    totals = spend.totals(state)
    if g.output in ("json", "yaml"):
        data = records.host_json(host, billing=known)
        data["spend_today_usd"] = round(totals["today"], 4)
        data["spend_month_usd"] = round(totals["month"], 4)
        render(data, g.output)
    else:
        lines = records.host_text(host, billing=known)
        lines["spent today"] = records.money(totals["today"])
        lines["spent this month"] = records.money(totals["month"])
        render(lines, "text")


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
