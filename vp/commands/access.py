"""Access and everyday use: ssh, ssh-config, cleanup, tunnel, upload, download, sync.

Each command parses, calls a small function (here, or in `vp.sshconfig`, `vp.tunnel`,
`vp.watch`) and renders. Every command reaches the host through `vp.run.open_workspace`, the
project's one shared connection.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from vp.cleanup import cleanup
from vp.commands.context import Globals, command_app, globals_of
from vp.errors import EXIT_INTERRUPTED, UsageError, VpError
from vp.output import human_size, render
from vp.platforms import kind
from vp.run import Workspace, ignore_rules, open_workspace, sync_up, workdir_for
from vp.state import State
from vp.sync.copy import copy_down, copy_up
from vp.sync.transfer import REMOTE_SUFFIX
from vp.transport import LocalTransport
from vp.ui import UI, one_line

if TYPE_CHECKING:
    from typer._click import Context


class _DashDashCommand(typer.core.TyperCommand):
    """Keeps everything after `--` out of click's hands: `vp ssh [HOST] -- CMD ARGS...`."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        if "--" in args:
            i = args.index("--")
            ctx.meta["vp.command"] = args[i + 1 :]
            args = args[:i]
        return super().parse_args(ctx, args)


app = command_app()


def _connect(ctx: typer.Context, host_arg: str | None = None) -> tuple[Globals, Workspace]:
    """The project's host as a `Workspace` (never created here: these commands need one)."""
    g = globals_of(ctx)
    ws = open_workspace(g.load(), State(), g.ui, host_arg or g.host, create=False)
    return g, ws


def _exec(argv: list[str], cwd: str | None = None) -> None:
    """Become `argv`: the terminal, signals and exit status are the child's own."""
    sys.stdout.flush()
    sys.stderr.flush()
    if cwd:
        os.chdir(cwd)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise VpError(f"cannot start {argv[0]}: {exc.strerror}") from None


# ---------------------------------------------------------------------------- ssh


def session_name(project: str) -> str:
    from vp.sshconfig import alias_for

    return alias_for(project)  # vp-PROJECT, safe for tmux (no '.' or ':')


def login_script(workdir_sh: str, session: str, tmux: bool = True) -> str:
    """Shell text for an interactive login: cd to the workdir, attach to (or create) the
    project's tmux session, or fall back to a plain login shell without tmux or a terminal."""
    attach = (
        f"if [ -t 0 ] && command -v tmux >/dev/null 2>&1; then "
        f"exec tmux new-session -A -s {shlex.quote(session)}; fi; "
        if tmux
        else ""
    )
    script = f'cd {workdir_sh} 2>/dev/null; {attach}exec "${{SHELL:-/bin/sh}}" -l'
    return "sh -c " + shlex.quote(script)


@app.command(
    "ssh",
    cls=_DashDashCommand,
    help=(
        "Shell on the project's host, in its workdir, inside the tmux session vp-PROJECT "
        "(created or re-attached; a plain login shell without tmux). "
        "`vp ssh -- CMD ...` runs one command there and exits with its status. "
        "On the local platform: a shell in the local workspace."
    ),
    epilog="Examples: vp ssh   |   vp ssh -- nvidia-smi   |   vp ssh -- 'tail -f log.txt'",
)
def ssh_cmd(
    ctx: typer.Context,
    host: str = typer.Argument(None, help="Host name or id (default: the project's)"),
    no_tmux: bool = typer.Option(False, "--no-tmux", help="Plain login shell, no tmux"),
) -> None:
    from vp.run import command_text

    command = ctx.meta.get("vp.command")
    g, ws = _connect(ctx, host)
    cfg, transport, workdir = ws.cfg, ws.transport, ws.workdir
    text = command_text(command) if command else None
    if isinstance(transport, LocalTransport):
        Path(workdir).mkdir(parents=True, exist_ok=True)
        _exec(transport.interactive_argv(text), cwd=workdir)
    from vp.ssh import SshTransport

    if not isinstance(transport, SshTransport):
        raise VpError(f"cannot open a shell over {type(transport).__name__}")
    wd = transport.workdir_sh(workdir)
    if text is None:
        remote = login_script(wd, session_name(cfg.project), tmux=not no_tmux)
        tty = "-t"
    else:
        remote = f"cd {wd} 2>/dev/null; {text}"
        tty = "-t" if sys.stdin.isatty() and sys.stdout.isatty() else "-T"
    g.ui.debug(f"ssh {transport.label}: {remote}")
    _exec(transport.ssh_argv(tty, "--", transport.target.host, remote))


# ---------------------------------------------------------------------------- ssh-config


@app.command(
    "ssh-config",
    help=(
        "Write (or --remove) the alias vp-PROJECT in ~/.ssh/config, so `ssh vp-PROJECT`, "
        "scp and VS Code Remote-SSH reach the host as vp does (same key, pinned host key)."
    ),
    epilog="Re-run it after the host's address changes (cloud hosts get a new IP on start).",
)
def ssh_config_cmd(
    ctx: typer.Context,
    remove: bool = typer.Option(False, "--remove", help="Remove the project's block"),
) -> None:
    from vp import sshconfig

    g = globals_of(ctx)
    cfg = g.load()
    name = sshconfig.alias_for(cfg.project)[3:]
    if remove:
        removed = sshconfig.remove_blocks({name})
        if g.output != "text":
            render({"alias": f"vp-{name}", "removed": bool(removed)}, g.output)
        elif removed:
            g.ui.info(f"removed Host vp-{name} from {sshconfig.user_config_path()}")
        else:
            g.ui.info(f"no vp-{name} block in {sshconfig.user_config_path()}")
        return
    from vp.ssh import SshTransport

    ws = open_workspace(cfg, State(), g.ui, g.host, create=False)
    host, transport = ws.host, ws.transport
    if not isinstance(transport, SshTransport):
        raise UsageError(
            f"the {host.platform} platform has no ssh host", hint="use `vp ssh` for a local shell"
        )
    block = sshconfig.render_block(name, host, sshconfig.resolved_options(transport))
    path = sshconfig.write_block(name, block)
    alias = f"vp-{name}"
    if g.output != "text":
        render({"alias": alias, "config": str(path), "host": host.name}, g.output)
        return
    g.ui.info(f"wrote Host {alias} ({host.name}) to {path}")
    g.ui.info(f"connect with `ssh {alias}` or VS Code: Remote-SSH: Connect to Host > {alias}")
    print(alias)


# ---------------------------------------------------------------------------- cleanup


@app.command(
    "cleanup",
    help=(
        "Remove ~/.ssh/config aliases and known_hosts pins of hosts that are gone, destroy "
        "hosts stopped longer than [host] destroy_after_stopped, and list orphaned instances: "
        "vp's hosts on any provider with credentials here that this machine doesn't know "
        "(made on another machine, or forgotten), and hosts a failed create left recorded. "
        "--orphans destroys them, after asking."
    ),
)
def cleanup_cmd(
    ctx: typer.Context,
    orphans: bool = typer.Option(
        False, "--orphans", help="Destroy the orphaned instances (asks first; --yes: don't)"
    ),
    yes: bool = typer.Option(False, "-y", "--yes", help="Don't ask"),
) -> None:
    from vp.guard import sweep_stopped

    g = globals_of(ctx)
    cfg = g.load()
    state = State()
    sweep_stopped(cfg, g.ui, state, all_projects=True)
    report = cleanup(cfg, state, g.ui, destroy_orphans=False)
    text = g.output == "text"
    if text:
        for alias in report.ssh_config:
            g.ui.info(f"removed Host {alias} from ~/.ssh/config")
        for alias in report.known_hosts:
            g.ui.info(f"removed the host key pin of {alias}")
        if report.orphans:
            g.ui.warn(
                f"{len(report.orphans)} orphaned host(s) may be billing"
                + ("" if orphans else "; `vp cleanup --orphans` destroys them")
            )
            render(report.orphans, "table", ["platform", "id", "name", "status", "gpu"])
    if orphans and report.orphans:
        if not (yes or g.yes):
            if not sys.stdin.isatty():
                raise UsageError(
                    f"refusing to destroy {len(report.orphans)} orphaned host(s) without "
                    "confirmation",
                    hint="pass --yes (vp cleanup --orphans --yes)",
                )
            if not typer.confirm(f"Destroy these {len(report.orphans)} host(s) and their disks?"):
                g.ui.note("nothing destroyed")
                raise typer.Exit(1)
        # the same sweep again, destroying: a recorded orphan's state and key go with it
        report = cleanup(cfg, state, g.ui, destroy_orphans=True)
    if not text:
        render(report.to_dict(), g.output)
    elif not (report.ssh_config or report.known_hosts or report.orphans):
        g.ui.info("nothing to clean up")


# ---------------------------------------------------------------------------- tunnel


@app.command(
    "tunnel",
    help=(
        "Forward host ports here until Ctrl-C: REMOTE_PORT[:LOCAL_PORT] ... and print "
        "http://127.0.0.1:LOCAL for each. Jupyter 8888, ComfyUI 8188, TensorBoard 6006."
    ),
    epilog="Examples: vp tunnel 8888   |   vp tunnel 8188:8189 6006",
)
def tunnel_cmd(
    ctx: typer.Context,
    ports: list[str] = typer.Argument(..., help="REMOTE_PORT[:LOCAL_PORT]"),
) -> None:
    from vp.tunnel import connect, serve

    g, ws = _connect(ctx)
    host = ws.host
    tunnels = connect(host, ws.transport, ports, say=g.ui.info, debug=g.ui.debug)
    try:
        if g.output == "text":
            for f in tunnels.forwards:
                app_name = f" ({f.label})" if f.label else ""
                g.ui.info(f"{host.name}:{f.remote}{app_name} -> {f.url}")
                print(f.url, flush=True)
        else:
            render([f.to_dict() for f in tunnels.forwards], g.output)
        g.ui.note("forwarding; Ctrl-C stops")
        serve(tunnels, warn=g.ui.warn)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        tunnels.close()


# ---------------------------------------------------------------------------- upload/download


@app.command(
    "upload",
    help=(
        "Copy a file or folder to the host, outside the sync rules (data, checkpoints). "
        "DST defaults to SRC's path in the workdir; a relative DST is under the workdir."
    ),
    epilog="Examples: vp upload data/raw   |   vp upload ~/weights.bin models/",
)
def upload_cmd(
    ctx: typer.Context,
    src: str = typer.Argument(..., help="Local file or folder"),
    dst: str = typer.Argument(None, help="Path on the host (default: same relative path)"),
) -> None:
    g, ws = _connect(ctx)
    cfg, host = ws.cfg, ws.host
    g.ui.info(f"uploading {src} to {host.name}")
    rel, size = copy_up(ws.transport, cfg.project_root, ws.workdir, src, dst)
    if g.output != "text":
        render({"source": src, "target": rel, "bytes": size, "host": host.name}, g.output)
    else:
        g.ui.info(f"uploaded {src} ({human_size(size)}) to {host.name}:{rel}")


@app.command(
    "download",
    help=(
        "Copy a file or folder from the host (a path under the workdir, or absolute). DST "
        "defaults to the same relative path here. An existing local file that differs is "
        "kept and the host's copy written beside it as NAME.vp-remote, unless --force."
    ),
    epilog="Examples: vp download outputs/   |   vp download /data/ckpt.pt ckpts/",
)
def download_cmd(
    ctx: typer.Context,
    src: str = typer.Argument(..., help="Path on the host"),
    dst: str = typer.Argument(None, help="Local path (default: same relative path)"),
    force: bool = typer.Option(False, "-f", "--force", help="Overwrite local files"),
) -> None:
    g, ws = _connect(ctx)
    cfg, host = ws.cfg, ws.host
    name = posixpath.basename(src.rstrip("/"))
    if dst is None:
        rel = src.rstrip("/")
        local = Path.cwd() / (name if rel.startswith(("/", "~")) else rel)
    else:
        local = Path(dst)
        if dst.endswith("/") or (local.is_dir() and not local.is_symlink()):
            local = local / name
    from vp.run import control_files

    root = cfg.project_root.resolve()
    protected = {root / name for name in control_files(cfg)}
    result = copy_down(
        ws.transport, ws.workdir, src, local, force=force, protected=protected, warn=g.ui.warn
    )
    if g.output != "text":
        render(result.to_dict(), g.output)
        return
    for path in result.conflicts[:20]:
        shown = one_line(path)
        g.ui.warn(
            f"{shown} exists locally and differs: kept it; the host's is {shown}{REMOTE_SUFFIX}"
        )
    if len(result.conflicts) > 20:
        g.ui.warn(f"... and {len(result.conflicts) - 20} more (--force overwrites)")
    g.ui.info(
        f"downloaded {len(result.placed)} file(s) from {host.name} to {local}"
        + (f", {result.unchanged} already identical" if result.unchanged else "")
    )


# ---------------------------------------------------------------------------- sync


def _upload(ws: Workspace, ui: UI, say, yes: bool = False) -> dict:
    result = sync_up(ws, ui, yes=yes, say=say)
    return {
        "host": ws.host.name,
        "workdir": ws.workdir,
        "skipped": result.skipped,
        "files": result.files,
        "bytes": result.bytes,
        "deleted": result.deleted,
    }


def sync_status(cfg, state: State, host_name: str | None) -> dict:
    """What `vp sync` would move now: the walk against the last upload's manifest."""
    from vp.lifecycle import last_known
    from vp.sync.transfer import Manifest
    from vp.watch import plan_upload

    host = last_known(cfg, state, host_name)
    local = kind(cfg.platform) == "local"
    workdir = workdir_for(cfg, LocalTransport() if local else None)
    stored = state.manifest(host.key, str(cfg.project_root), workdir) if host else None
    plan = plan_upload(cfg.project_root, ignore_rules(cfg), Manifest.from_json(stored))
    return {"host": host.name if host else None, "workdir": workdir, **plan.to_dict()}


def _print_status(data: dict, root: Path) -> None:
    up, delete = data["upload"], data["delete"]
    where = f"{data['host']}:{data['workdir']}" if data["host"] else "a new host"
    lines = [f"to upload: {up['files']} file(s), {human_size(up['bytes'])} -> {where}"]
    sizes = []
    for p in up["paths"]:
        try:
            sizes.append((os.lstat(root / p).st_size, p))
        except OSError:
            continue
    for size, p in sorted(sizes, reverse=True)[:15]:
        lines.append(f"  + {p}  ({human_size(size)})")
    if up["files"] > 15:
        lines.append(f"  ... {up['files'] - 15} more (the largest are listed)")
    lines.append(f"to delete on the host: {delete['files']} file(s)")
    lines += [f"  - {p}" for p in delete["paths"][:15]]
    lines.append(f"unchanged: {data['unchanged']} file(s)")
    if not data["manifest_clean"]:
        lines.append("(the host may differ from the last upload: every file is re-checked)")
    sys.stdout.write("\n".join(lines) + "\n")


@app.command(
    "sync",
    help=(
        "Upload the workspace now (the same rules as `vp run`). --watch keeps uploading "
        "changes until Ctrl-C; --status shows what would move, moving nothing."
    ),
    epilog="Examples: vp sync --status   |   vp sync --watch",
)
def sync_cmd(
    ctx: typer.Context,
    watch: bool = typer.Option(False, "-w", "--watch", help="Upload on every local change"),
    status: bool = typer.Option(False, "--status", help="Dry run: what would be uploaded"),
) -> None:
    from vp.run import open_workspace
    from vp.sync.guard import check_root

    g = globals_of(ctx)
    if watch and status:
        raise UsageError("--watch and --status don't go together")
    cfg = g.load()
    check_root(cfg)
    state = State()
    if status:
        data = sync_status(cfg, state, g.host)
        if g.output == "text":
            _print_status(data, cfg.project_root)
        else:
            render(data, g.output)
        return
    ws = open_workspace(cfg, state, g.ui, g.host)
    data = _upload(ws, g.ui, g.ui.info, yes=g.yes)
    if not watch:
        if g.output != "text":
            render(data, g.output)
        elif data["skipped"]:
            g.ui.info(f"{ws.host.name}:{ws.workdir} is already up to date")
        return
    from vp.watch import plan_upload
    from vp.watch import watch as watch_loop

    def sync_changes() -> None:
        plan = plan_upload(ws.root, ws.rules(), ws.manifest())
        if plan.empty and plan.manifest_clean:
            return
        names = sorted(plan.upload) + [f"-{p}" for p in plan.delete]
        shown = ", ".join(names[:5]) + (f" (+{len(names) - 5})" if len(names) > 5 else "")
        g.ui.info(f"sync: {shown or 'checking the host'}")
        _upload(ws, g.ui, g.ui.debug, yes=g.yes)

    try:
        watch_loop(
            ws.root,
            ws.rules,
            sync_changes,
            ready=lambda: g.ui.note(
                f"watching {ws.root} -> {ws.host.name}:{ws.workdir} (Ctrl-C stops)"
            ),
            warn=g.ui.warn,
        )
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
