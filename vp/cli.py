"""The `vp` command line: parses, calls the pipeline or a command module, renders. No logic here.

Anything that is not a known subcommand is a command to run remotely: `vp python train.py`
is `vp run -- python train.py`. Global options go before a command to run (what follows it is
the command's own), and before or after a vp subcommand (`vp runs -o json`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from vp.errors import EXIT_INTERRUPTED, EXIT_USAGE, UsageError, VpError
from vp.fastpath import SUBCOMMANDS, Globals, near_subcommand, run_command  # noqa: F401
from vp.platforms import NAMES
from vp.ui import UI

app = typer.Typer(
    add_completion=True,
    no_args_is_help=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help=(
        "Run any command on a GPU host as if it ran locally.\n\n"
        "  vp python train.py --epochs 3     sync, run remotely, stream, sync results back\n\n"
        '  vp "cd sub && make"               one string runs through the remote shell\n\n'
        "  vp -p runpod nvidia-smi           global options come before a command to run\n\n"
        "  vp runs -o json                   ... and before or after a subcommand\n\n"
        "Anything that is not a subcommand below is a command to run (`vp run -- CMD` "
        "forces that)."
    ),
)
config_app = typer.Typer(help="Show, read and change configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

VALUE_OPTIONS = {
    "-p",
    "--platform",
    "--host",
    "-o",
    "--output",
    "--config",
    "--tunnel",
    "--timeout",
    "--nodes",
}
# The global options a subcommand also accepts after its name (`vp offers -p vast`), unless it
# has an option of the same name itself (`vp init --platform`). Run-only options (--detach,
# --tunnel, ...) stay where they are: after a subcommand they would be silently meaningless.
HOISTED_VALUE_OPTIONS = {"-p", "--platform", "--host", "-o", "--output", "--config"}
HOISTED_FLAG_OPTIONS = {"-v", "--verbose", "-q", "--quiet", "--over-budget"}
FLAG_OPTIONS = {
    "--no-sync",
    "--sync-only",
    "--no-download",
    "--docker",
    "--no-docker",
    "--detach",
    "--recover",
    "--all-logs",
    "--yes",
    "--over-budget",
    "-v",
    "--verbose",
    "-q",
    "--quiet",
    "-h",
    "--help",
    "--version",
    "--install-completion",
    "--show-completion",
}


def _globals(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Globals) else Globals()


def _version(value: bool) -> None:
    if value:
        from vp import __version__

        print(f"vp {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main_options(
    ctx: typer.Context,
    platform: str = typer.Option(None, "-p", "--platform", help=" | ".join(NAMES)),
    host: str = typer.Option(None, "--host", help="Host name or id (ssh: alias or user@host:port)"),
    no_sync: bool = typer.Option(False, "--no-sync", help="Skip uploading and downloading"),
    sync_only: bool = typer.Option(False, "--sync-only", help="Upload the workspace; run nothing"),
    no_download: bool = typer.Option(False, "--no-download", help="Don't fetch results"),
    docker: bool = typer.Option(None, "--docker/--no-docker", help="Run inside the project image"),
    detach: bool = typer.Option(False, "--detach", help="Start the run and print its id"),
    output: str = typer.Option("text", "-o", "--output", help="text | json | yaml | table"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Say more"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Say only warnings and errors"),
    config: Path = typer.Option(None, "--config", help="Project config file to use"),
    tunnel: list[str] = typer.Option(
        None,
        "--tunnel",
        metavar="REMOTE[:LOCAL]",
        help="Forward a host port while the run lasts: REMOTE[:LOCAL], repeatable "
        "(Jupyter 8888, TensorBoard 6006)",
    ),
    yes: bool = typer.Option(
        False,
        "--yes",
        help="Don't ask: upload a big folder with no vp.toml and no .git, create a host "
        "with no max_price",
    ),
    over_budget: bool = typer.Option(
        False, "--over-budget", help="Go past the [budget] caps this once"
    ),
    timeout: str = typer.Option(
        None, "--timeout", metavar="DURATION", help="End the run after 90s, 30m, 2h, 1d (exit 124)"
    ),
    nodes: int = typer.Option(
        None,
        "--nodes",
        metavar="N",
        help="Run on N hosts at once for torchrun / Ray (rank, addresses in the environment)",
    ),
    all_logs: bool = typer.Option(
        False, "--all-logs", help="With --nodes: show every node's output, prefixed [nodeR]"
    ),
    recover: bool = typer.Option(
        False,
        "--recover",
        help="If the provider preempts or destroys the host, run again on a new one "
        "([run] recover, max_attempts)",
    ),
    version: bool = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version"
    ),
) -> None:
    from vp.output import FORMATS

    if output not in FORMATS:
        raise UsageError(f"--output {output!r}: choose one of {', '.join(FORMATS)}")
    ctx.obj = Globals(
        platform=platform,
        host=host,
        no_sync=no_sync,
        sync_only=sync_only,
        no_download=no_download,
        docker=docker,
        detach=detach,
        output=output,
        verbose=verbose,
        quiet=quiet,
        config=config,
        tunnel=list(tunnel or []),
        yes=yes,
        recover=recover,
        over_budget=over_budget,
        timeout=timeout,
        nodes=nodes,
        all_logs=all_logs,
    )
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help="Run COMMAND on the project's host: sync up, run, stream output, sync results back.",
    epilog="Examples: vp run -- python train.py   |   vp --detach python train.py",
)
def run(ctx: typer.Context, command: list[str] = typer.Argument(None)) -> None:
    g = _globals(ctx)
    argv = list(command or []) + list(ctx.args)
    if not argv and not g.sync_only:
        raise UsageError("no command given", hint="e.g. vp python train.py")
    raise typer.Exit(run_command(g, argv))


@app.command(help="Write vp.toml and .vpignore for this project (and optionally more).")
def init(
    ctx: typer.Context,
    platform: str = typer.Option(None, "--platform", help="Platform to write into vp.toml"),
    docker: bool = typer.Option(False, "--docker", help="Also write a GPU Dockerfile"),
    make: bool = typer.Option(False, "--make", help="Append the vp Makefile snippet"),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files"),
) -> None:
    from vp.commands.init import init_project

    g = _globals(ctx)
    init_project(
        Path.cwd(), platform=platform or g.platform, docker=docker, make=make, force=force, ui=g.ui
    )


@config_app.command("show", help="Print the merged configuration (secrets masked).")
def config_show(ctx: typer.Context) -> None:
    from vp import config as cfgmod
    from vp.output import render

    g = _globals(ctx)
    cfg = g.load()
    data = cfgmod.masked(cfg)
    if g.output == "text":
        import tomli_w

        clean = {s: {k: v for k, v in t.items() if v is not None} for s, t in data.items()}
        sources = ", ".join(str(p) for p in cfg.sources) or "defaults only"
        sys.stdout.write(f"# project: {cfg.project} (root {cfg.project_root})\n")
        sys.stdout.write(f"# from: {sources}\n")
        sys.stdout.write(tomli_w.dumps({s: t for s, t in clean.items() if t}))
    else:
        render(data, g.output)


@config_app.command("get", help="Print one value (SECTION.KEY: `vp config get host.gpu`).")
def config_get(ctx: typer.Context, key: str) -> None:
    from vp import config as cfgmod

    g = _globals(ctx)
    section, name = cfgmod.parse_key(key)
    cfg = g.load()
    value = cfgmod.masked(cfg).get(section, {}).get(name)
    if value is None:
        raise typer.Exit(1)
    typer.echo(str(value).lower() if isinstance(value, bool) else str(value))


@config_app.command(
    "set",
    help="Set a value in vp.toml; --user: in the user file (API keys).",
)
def config_set(
    ctx: typer.Context,
    key: str,
    value: str = typer.Argument(
        ..., help="The value; - reads it from stdin (keep keys out of argv)"
    ),
    user: bool = typer.Option(False, "--user", help="Write the user file (0600) instead"),
) -> None:
    from vp.commands.config import read_secret, set_value
    from vp.config import coerce_value, is_secret, parse_key

    ui = _globals(ctx).ui
    if value == "-":
        value = read_secret(key)
    elif is_secret(*parse_key(key), coerce_value(*parse_key(key), value)):
        ui.warn(f"{key} given as an argument is now in your shell history; next time use: -")
    set_value(key, value, user=user, ui=ui)


@app.command("runs", help="Run history: id, command, host, start, duration, exit code, cost.")
def runs_cmd(
    ctx: typer.Context,
    all_projects: bool = typer.Option(False, "--all", help="Every project, not just this one"),
    limit: int = typer.Option(20, "-n", "--limit", help="How many"),
) -> None:
    from vp.commands.runs import list_runs

    g = _globals(ctx)
    list_runs(g, all_projects=all_projects, limit=limit)


LATEST_HELP = "Run id or a unique prefix (default: the project's latest run; --host/--all widen)"


@app.command("logs", help="Print a run's output; -f follows it until it ends.")
def logs_cmd(
    ctx: typer.Context,
    run_id: str = typer.Argument(None, help=LATEST_HELP),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep streaming until it ends"),
    all_projects: bool = typer.Option(False, "--all", help="Latest run of any project"),
    node: int = typer.Option(None, "--node", metavar="R", help="A multi-node run's rank R"),
) -> None:
    from vp.commands.runs import show_logs

    g = _globals(ctx)
    raise typer.Exit(
        show_logs(g, run_id, follow=follow, attach=False, all_projects=all_projects, node=node)
    )


@app.command("attach", help="Follow a detached run (Ctrl-C interrupts it), then fetch results.")
def attach_cmd(
    ctx: typer.Context,
    run_id: str = typer.Argument(None, help=LATEST_HELP),
    all_projects: bool = typer.Option(False, "--all", help="Latest run of any project"),
) -> None:
    from vp.commands.runs import show_logs

    g = _globals(ctx)
    raise typer.Exit(show_logs(g, run_id, follow=True, attach=True, all_projects=all_projects))


@app.command("kill", help="Stop a run (SIGTERM to its process group, then SIGKILL).")
def kill_cmd(ctx: typer.Context, run_id: str = typer.Argument(..., help="Run id")) -> None:
    from vp.commands.runs import kill_run

    kill_run(_globals(ctx), run_id)


# Every subcommand name, so dispatch can tell `vp ls` from `vp python ...` without importing
# the command modules (the run path skips them). tests/test_local.py keeps this list honest.


def normalize_argv(argv: list[str]) -> list[str]:
    """Turn `vp [GLOBAL...] CMD ARGS...` into `vp [GLOBAL...] run -- CMD ARGS...`."""
    subcommands = SUBCOMMANDS
    out: list[str] = []
    saw_run = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest = argv[i + 1 :]
            return [*out, "run", "--", *rest] if rest or not saw_run else [*out, "run"]
        if arg in VALUE_OPTIONS:
            out += argv[i : i + 2]
            i += 2
            continue
        if arg.startswith("--") and "=" in arg and arg.split("=", 1)[0] in VALUE_OPTIONS:
            out.append(arg)
            i += 1
            continue
        if arg in FLAG_OPTIONS:
            out.append(arg)
            i += 1
            continue
        if arg.startswith("-") and len(arg) > 1:
            if saw_run:
                return [*out, "run", "--", *argv[i:]]
            return out + argv[i:]  # unknown option: let the parser name it
        if arg == "run" and not saw_run:
            saw_run = True
            i += 1
            continue
        if arg in subcommands and not saw_run:
            return out + argv[i:]
        return [*out, "run", "--", *argv[i:]]
    # `vp --sync-only` alone is a run with nothing to run
    return [*out, "run"] if saw_run or "--sync-only" in out else out


def hoist_globals(args: list[str], root) -> list[str]:
    """Move global options written after a subcommand in front of it: `vp runs -o json` is
    `vp -o json runs`. `root` is the click group; the subcommand's own options (and their
    values) and everything after `--` are left alone, so `vp ssh -- cmd -o x` keeps its `-o`."""
    head: list[str] = []
    i = 0
    while i < len(args) and args[i].startswith("-"):  # the globals already in front
        step = 2 if args[i] in VALUE_OPTIONS else 1
        head += args[i : i + step]
        i += step
    command = root
    path: list[str] = []
    while i < len(args) and hasattr(command, "commands"):
        sub = command.commands.get(args[i])  # type: ignore[attr-defined]
        if sub is None:
            return args
        path.append(args[i])
        command = sub
        i += 1
    if not path:
        return args
    own_value: set[str] = set()
    own: set[str] = set()
    for param in command.params:
        names = [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
        own.update(names)
        is_option = getattr(param, "param_type_name", "") == "option"
        if is_option and not getattr(param, "is_flag", True):
            own_value.update(names)
    moved: list[str] = []
    rest: list[str] = []
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if arg == "--":
            rest += args[i:]
            break
        if name in own:
            step = 2 if arg in own_value else 1
            rest += args[i : i + step]
            i += step
        elif arg in HOISTED_VALUE_OPTIONS and i + 1 < len(args):
            moved += args[i : i + 2]
            i += 2
        elif arg in HOISTED_FLAG_OPTIONS or name in HOISTED_VALUE_OPTIONS:
            moved.append(arg)
            i += 1
        else:
            rest.append(arg)
            i += 1
    return [*head, *moved, *path, *rest]


def _is_run(args: list[str]) -> bool:
    """Does `args` (normalized) invoke `run`? Then the other commands need not be loaded."""
    i = 0
    while i < len(args):
        if args[i] in VALUE_OPTIONS:
            i += 2
        elif args[i].startswith("-"):
            if args[i] in ("-h", "--help", "--install-completion", "--show-completion"):
                return False
            i += 1
        else:
            return args[i] == "run"
    return False


def registered_commands() -> list[str]:
    names = [c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands]
    names += [g.name for g in app.registered_groups if g.name]
    return names


def main(argv: list[str] | None = None) -> None:
    """Entry point: render every failure as one line (plus a hint), never a traceback."""
    try:  # typer >= 0.20 vendors click privately; older releases use click itself
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover
        from click import exceptions as click_exc  # type: ignore[no-redef]

    ui = UI(verbose="-v" in sys.argv or "--verbose" in sys.argv)
    try:
        args = normalize_argv(list(sys.argv[1:] if argv is None else argv))
        if not _is_run(args):
            from vp import commands  # noqa: F401  - registers the lifecycle and access commands

        command = typer.main.get_command(app)
        if not _is_run(args):
            args = hoist_globals(args, command)
        code = command.main(args=args, prog_name="vp", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except click_exc.UsageError as exc:
        where = f" (vp {exc.ctx.info_name})" if exc.ctx and exc.ctx.parent else ""
        ui.error(f"{exc.format_message()}{where}", hint="see vp --help")
        code = EXIT_USAGE
    except typer.Abort:
        ui.error("aborted")
        code = EXIT_INTERRUPTED
    except click_exc.ClickException as exc:
        ui.error(exc.format_message())
        code = exc.exit_code
    except VpError as exc:
        ui.error(exc.message, hint=exc.hint)
        code = exc.exit_code
    except KeyboardInterrupt:
        ui.error("interrupted")
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        code = 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if os.environ.get("VP_DEBUG"):
            raise
        ui.error(
            f"internal error: {type(exc).__name__}: {exc}",
            hint="rerun with VP_DEBUG=1 for a traceback, and please report it",
        )
        code = 1
    sys.stdout.flush()
    sys.exit(code if isinstance(code, int) else 0)
