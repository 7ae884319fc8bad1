"""The `vp` command line: parses, calls the pipeline or a command module, renders. No logic here.

Anything that is not a known subcommand is a command to run remotely: `vp python train.py`
is `vp run -- python train.py`. Global options go before a command to run (what follows it is
the command's own), and before or after a vp subcommand (`vp runs -o json`).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

import typer
from typer.core import TyperGroup

from vp import options
from vp.commands import COMMANDS, SUBCOMMANDS
from vp.commands.context import Globals, globals_of
from vp.errors import EXIT_INTERRUPTED, EXIT_USAGE, UsageError, report
from vp.fastpath import near_subcommand, run_command  # noqa: F401
from vp.platforms import NAMES
from vp.ui import UI


def load_command(name: str):
    """The click command `name` from the module the registry names, imported now."""
    module = importlib.import_module(COMMANDS[name].module)
    return typer.main.get_group(module.app).commands[name]


class LazyGroup(TyperGroup):
    """The root command: knows every subcommand's name, module and summary from the registry
    (vp.commands.COMMANDS) and imports a module only when one of its commands is invoked or
    its own help is shown. `vp --help` lists the summaries without importing any of them."""

    def get_command(self, ctx, cmd_name: str):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in COMMANDS:
            cmd = load_command(cmd_name)
            self.add_command(cmd, cmd_name)
        return cmd

    def list_commands(self, ctx) -> list[str]:
        own = super().list_commands(ctx)
        return [*own, *(name for name in COMMANDS if name not in own)]

    def format_commands(self, ctx, formatter) -> None:
        rows = [("run", self.commands["run"].get_short_help_str(60))]
        rows += [(name, e.summary) for name, e in COMMANDS.items() if not e.hidden]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    cls=LazyGroup,
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

# Which words are global options, from the one table (vp.options.OPTIONS) the fast path reads.
VALUE_OPTIONS = set(options.VALUE_NAMES)
# The global options a subcommand also accepts after its name (`vp offers -p vast`), unless it
# has an option of the same name itself (`vp init --platform`). Run-only options (--detach,
# --tunnel, ...) stay where they are: after a subcommand they would be silently meaningless.
HOISTED_VALUE_OPTIONS = {n for n in options.VALUE_NAMES if options.BY_NAME[n][0].after}
HOISTED_FLAG_OPTIONS = {n for n in options.FLAG_NAMES if options.BY_NAME[n][0].after}
FLAG_OPTIONS = set(options.FLAG_NAMES) | {
    "-h",
    "--help",
    "--version",
    "--install-completion",
    "--show-completion",
}


def _version(value: bool) -> None:
    if value:
        from vp import __version__

        print(f"vp {__version__}")
        raise typer.Exit()


def _typer_option(o: options.Option):
    """The typer declaration of one row of vp.options.OPTIONS."""
    names = [f"{o.flags[0]}/{o.off[0]}"] if o.off else list(o.flags)
    extra = {"metavar": o.metavar} if o.metavar else {}
    return typer.Option(o.default, *names, help=o.help.format(platforms=" | ".join(NAMES)), **extra)


_ANNOTATIONS = {"flag": bool, "value": str, "int": int, "path": Path, "list": list[str]}


def main_options(ctx: typer.Context, **values) -> None:
    """The root callback: its parameters are the rows of vp.options.OPTIONS (set below)."""
    from vp.output import FORMATS

    values.pop("version", None)  # handled by its eager callback
    if values["output"] not in FORMATS:
        raise UsageError(f"--output {values['output']!r}: choose one of {', '.join(FORMATS)}")
    for o in options.OPTIONS:
        if o.kind == "list":  # typer gives () or None when it is not given
            values[o.dest] = list(values[o.dest] or [])
    ctx.obj = Globals(**values)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


def _signature() -> inspect.Signature:
    """`main_options(ctx, *, platform=typer.Option(...), ...)` as typer reads it."""
    keyword, positional = inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("ctx", positional, annotation=typer.Context)]
    for o in options.OPTIONS:
        ann = _ANNOTATIONS[o.kind]
        params.append(inspect.Parameter(o.dest, keyword, default=_typer_option(o), annotation=ann))
    version = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version"
    )
    params.append(inspect.Parameter("version", keyword, default=version, annotation=bool))
    return inspect.Signature(params)


main_options.__signature__ = _signature()  # type: ignore[attr-defined]
main_options.__annotations__ = {
    p.name: p.annotation
    for p in main_options.__signature__.parameters.values()  # type: ignore[attr-defined]
}
app.callback(invoke_without_command=True)(main_options)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help="Run COMMAND on the project's host: sync up, run, stream output, sync results back.",
    epilog="Examples: vp run -- python train.py   |   vp --detach python train.py",
)
def run(ctx: typer.Context, command: list[str] = typer.Argument(None)) -> None:
    g = globals_of(ctx)
    argv = list(command or []) + list(ctx.args)
    if not argv and not g.sync_only:
        raise UsageError("no command given", hint="e.g. vp python train.py")
    raise typer.Exit(run_command(g, argv))


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
    while i < len(args) and hasattr(command, "get_command"):
        sub = command.get_command(None, args[i])  # type: ignore[attr-defined]
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
    """Does `args` (normalized) invoke `run`? Then what follows it is the command's own: no
    global option is hoisted out of it."""
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
    """Every subcommand the command modules define (importing them all), plus `run`."""
    names = ["run"]
    for module in sorted({e.module for e in COMMANDS.values()}):
        names += list(typer.main.get_group(importlib.import_module(module).app).commands)
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
    except (Exception, KeyboardInterrupt) as exc:
        code = report(exc, ui)
    sys.stdout.flush()
    sys.exit(code if isinstance(code, int) else 0)
