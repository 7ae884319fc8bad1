"""Host lifecycle: ls, offers, up, start, stop, down, status, gpu."""

from __future__ import annotations

import sys
import time

import typer

from vp.cli import _globals, app
from vp.errors import UsageError, VpError
from vp.hosts import (
    platform_for,
    project_hosts,
    resolve,
    spec_from_config,
    transport_for,
    with_local_facts,
)
from vp.output import render
from vp.platforms import kind
from vp.platforms.base import STOPPED, Host
from vp.state import State

STOP_TIMEOUT = 300.0
HOST_COLUMNS = [
    "name",
    "id",
    "platform",
    "status",
    "gpu",
    "gpus",
    "per_hour",
    "cost",
    "spot",
    "ssh",
]
ALL_COLUMNS = ["platform", "name", "project", "status", "per_hour", "age", "known"]


def _row(host: Host) -> dict:
    d = host.to_dict()
    d["spot"] = host.labels.get("market") == "spot"  # interruptible: may be preempted
    if host.ssh_host:
        d["ssh"] = f"{host.ssh_user or 'root'}@{host.ssh_host}:{host.ssh_port or 22}"
    d.pop("key_path", None)
    return d


def _find(cfg, state: State, ident: str | None, ui) -> tuple[Host, object]:
    """The host named `ident` (id or name) on the configured platform, or the project's one."""
    platform = platform_for(cfg)
    if kind(cfg.platform) in ("local", "ssh"):
        host, _t = resolve(cfg, state, ui, host_name=ident, create=False)
        return host, platform
    hosts = project_hosts(platform, state, cfg.project)
    matches = [h for h in hosts if ident is None or ident in (h.id, h.name)]
    if not matches:
        target = f"'{ident}'" if ident else f"for project {cfg.project}"
        raise VpError(f"no host {target} on {cfg.platform}", hint="see `vp ls`")
    return matches[0], platform


@app.command(
    "ls",
    help="List the project's hosts with $/h and cost so far (--all: every vp host on every "
    "provider with credentials here, known to this machine or not).",
)
def ls_cmd(
    ctx: typer.Context,
    all_projects: bool = typer.Option(
        False, "--all", help="Every project, on every configured provider"
    ),
) -> None:
    g = _globals(ctx)
    cfg = g.load()
    state = State()
    if all_projects:
        _ls_everywhere(g, cfg, state)
        return
    platform = platform_for(cfg)
    if kind(cfg.platform) in ("vm", "container"):
        hosts = []
        for name in cfg.platforms:  # every platform of a fallback list
            hosts += project_hosts(
                platform_for(cfg, name), state, None if all_projects else cfg.project
            )
        for host in hosts:  # refresh what vp knows (address, status) for the warm path
            if not all_projects and state.host(host.key) is not None:
                state.save_host(host, cfg.project)
    else:
        hosts = platform.list(None if all_projects else cfg.project)
    from vp.spend import host_costs

    costs = host_costs(state)
    rows = []
    for h in hosts:
        row = _row(h)
        known = costs.get(h.key, {})
        # what it bills now: its price running, its disk stopped (the ledger knows which)
        row["per_hour"] = known.get("per_hour", h.price if h.status == "running" else None)
        row["cost"] = round(known["cost"], 4) if known.get("cost") is not None else None
        rows.append(row)
    if g.output == "text":
        if not rows:
            scope = "" if all_projects else f" for project {cfg.project}"
            g.ui.info(f"no hosts on {cfg.platform}{scope}")
            return
        render(rows, "table", HOST_COLUMNS)
        _total(rows)
    else:
        render(rows, g.output, HOST_COLUMNS)


def _total(rows: list[dict]) -> None:
    cost = sum(r.get("cost") or 0 for r in rows)
    rate = sum(r.get("per_hour") or 0 for r in rows)
    print(f"total: ${cost:.2f} so far, ${rate:.2f}/h now")


def _ls_everywhere(g, cfg, state: State) -> None:
    """`vp ls --all`: ask every configured provider (vp/orphans.py)."""
    from vp.orphans import sweep
    from vp.spend import host_costs

    found = sweep(cfg, state, g.ui)
    now = time.time()  # ages are from the provider's creation time: the real clock
    costs = host_costs(state)
    rows = []
    for f in found.found:
        row = f.row(now)
        row["cost"] = round(costs[f.host.key]["cost"] or 0, 4) if f.host.key in costs else None
        rows.append(row)
    if g.output != "text":
        render(rows, g.output, ALL_COLUMNS)
        return
    for note in found.notes:
        g.ui.note(note)
    if not rows:
        asked = ", ".join(found.asked) or "no provider (none has credentials here)"
        g.ui.info(f"no vp hosts on {asked}")
        return
    render(rows, "table", ALL_COLUMNS)
    _total(rows)
    orphans = len(found.orphans)
    if orphans:
        g.ui.note(
            f"{orphans} host(s) this machine does not know (known: no); "
            "`vp cleanup --orphans` destroys them"
        )


app.command("list-instances", help="Alias of `vp ls`.", hidden=True)(ls_cmd)


@app.command("offers", help="Search GPUs and prices that meet [host] (cheapest first).")
def offers_cmd(
    ctx: typer.Context,
    gpu: str = typer.Option(None, "--gpu", help="GPU name, e.g. H100"),
    gpus: int = typer.Option(None, "--gpus", help="GPU count"),
    max_price: float = typer.Option(None, "--max-price", help="$/h ceiling"),
    limit: int = typer.Option(20, "-n", "--limit"),
) -> None:
    g = _globals(ctx)
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
def up_cmd(ctx: typer.Context) -> None:
    g = _globals(ctx)
    cfg = g.load()
    state = State()
    host, _t = resolve(cfg, state, g.ui, host_name=g.host)
    render(_row(host), g.output if g.output != "text" else "text")


app.command("create", help="Alias of `vp up`.", hidden=True)(up_cmd)


@app.command("start", help="Start a stopped host and wait until ssh answers.")
def start_cmd(ctx: typer.Context, host: str = typer.Argument(None, help="Host id or name")) -> None:
    g = _globals(ctx)
    cfg = g.load()
    state = State()
    target, platform = _find(cfg, state, host or g.host, g.ui)
    from vp import spend

    spend.check(cfg, state, what=f"start {target.name}", host_key=target.key, price=target.price)
    g.ui.info(f"starting {target.name} on {cfg.platform}")
    platform.start(target.id)
    ready = platform.wait_ready(target.id, float(cfg.host.ready_timeout))
    known = state.host(ready.key)
    if known:
        ready.key_path, ready.host_key_alias = known.key_path, known.host_key_alias
    state.save_host(ready, cfg.project)
    render(_row(ready), g.output)


@app.command("stop", help="Stop a host (keeps its disk; billing for compute stops).")
def stop_cmd(ctx: typer.Context, host: str = typer.Argument(None, help="Host id or name")) -> None:
    g = _globals(ctx)
    cfg = g.load()
    state = State()
    target, platform = _find(cfg, state, host or g.host, g.ui)
    platform.stop(target.id)
    g.ui.info(f"stopping {target.name} ({target.id}) on {cfg.platform}")
    stopped = _wait_for_status(platform, cfg, target, STOPPED, STOP_TIMEOUT)
    known = state.host(target.key)
    if known:
        known.status = stopped.status if stopped else "stopped"
        state.save_host(known, cfg.project)
    if stopped is None:
        g.ui.warn(f"{target.name} was still stopping after {STOP_TIMEOUT:.0f}s; see `vp ls`")
    else:
        g.ui.info(f"stopped {target.name} ({target.id}) on {cfg.platform}")


def _wait_for_status(platform, cfg, target: Host, status: str, timeout: float) -> Host | None:
    """Poll the provider until `target` reaches `status`: `vp stop` returns when billing
    for compute has stopped, not when the request was accepted."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while time.monotonic() < deadline:
        now = next((h for h in platform.list(cfg.project) if h.id == target.id), None)
        if now is None:  # gone altogether: certainly not billing for compute
            return target
        if now.status == status:
            return now
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)
    return None


@app.command("down", help="Destroy a host and its disk. Asks first unless --yes.")
def down_cmd(
    ctx: typer.Context,
    host: str = typer.Argument(None, help="Host id or name"),
    yes: bool = typer.Option(False, "-y", "--yes", help="Don't ask"),
) -> None:
    g = _globals(ctx)
    cfg = g.load()
    state = State()
    if kind(cfg.platform) in ("local", "ssh"):
        raise UsageError(f"the {cfg.platform} platform has no hosts to destroy")
    target, platform = _find(cfg, state, host or g.host, g.ui)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"refusing to destroy {target.name} without confirmation", hint="pass --yes"
            )
        if not typer.confirm(
            f"Destroy {target.name} ({target.id}) on {cfg.platform} and its disk?"
        ):
            g.ui.note("nothing destroyed")
            raise typer.Exit(1)
    platform.destroy(target.id)
    known = state.host(target.key)
    if known is not None and known.ssh_host:
        transport_for(known, cfg).close()  # its shared connection would linger 10 minutes
    state.forget_host(target.key)
    g.ui.info(f"destroyed {target.name} ({target.id}) on {cfg.platform}")
    from vp import sshconfig

    for project in sshconfig.remove_blocks_of_host(target.key):  # `vp ssh-config` wrote it
        g.ui.info(f"removed Host vp-{project} from {sshconfig.user_config_path()}")


app.command("destroy", help="Alias of `vp down`.", hidden=True)(down_cmd)


@app.command("status", help="The project's host: state, uptime, $/h and cost so far.")
def status_cmd(ctx: typer.Context) -> None:
    g = _globals(ctx)
    cfg = g.load()
    state = State()
    if kind(cfg.platform) in ("local", "ssh"):
        host, _t = resolve(cfg, state, g.ui, host_name=g.host, create=False)
    else:
        host, _p = _find(cfg, state, g.host, g.ui)
        host = with_local_facts(host, state)
    row = _row(host)
    known = state.host(host.key)
    created = host.created_at or (known.created_at if known else None)
    if created:
        uptime = time.time() - created
        row["uptime_h"] = round(uptime / 3600, 2)
        if host.price:
            row["cost_so_far"] = round(uptime / 3600 * host.price, 2)
    from vp import spend

    ledger = spend.host_costs(state).get(host.key)
    if ledger is not None:  # what vp recorded it billing, stops and disk included
        row["cost_so_far"] = round(ledger["cost"] or 0, 2)
    totals = spend.totals(state)
    row["spend_today"] = round(totals["today"], 2)
    row["spend_month"] = round(totals["month"], 2)
    render(row, g.output)


@app.command("gpu", help="nvidia-smi summary of the project's host.")
def gpu_cmd(ctx: typer.Context) -> None:
    g = _globals(ctx)
    cfg = g.load()
    state = State()
    host, transport = resolve(cfg, state, g.ui, host_name=g.host, create=False)
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
