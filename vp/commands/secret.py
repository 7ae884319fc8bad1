"""`vp secret set|ls|rm` and `vp setup`: what a project's runs need before the command.

Secret values only ever come in on stdin (a masked prompt on a terminal) and are never
printed; `vp secret ls` shows names and where each would come from.
"""

from __future__ import annotations

import os
import sys

import typer

from vp import secretstore
from vp.commands.context import command_app, globals_of
from vp.errors import UsageError

app = command_app()
secret_app = typer.Typer(
    rich_markup_mode=None,
    help="Tokens your runs need (HF_TOKEN...), kept on this machine; see [secrets] in vp.toml.",
    no_args_is_help=True,
)
app.add_typer(secret_app, name="secret")


def _read_value(name: str) -> str:
    """From stdin: typed without echo on a terminal, else everything piped in (one trailing
    newline dropped, so `echo TOKEN | vp secret set NAME` and multi-line keys both work)."""
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"{name} (input hidden): ")
    else:
        data = sys.stdin.buffer.read()
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"the value for {name} on stdin is not UTF-8 text") from None
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
    if not value:
        hint = f"printf %s VALUE | vp secret set {name}"
        raise UsageError(f"no value for {name} on stdin", hint=hint)
    return value


@secret_app.command("set", help="Store a secret; the value is read from stdin, never argv.")
def secret_set(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Variable name the run sees, e.g. HF_TOKEN"),
) -> None:
    secretstore.check_name(name, "vp secret set")
    value = _read_value(name)
    where = secretstore.set_secret(name, value)
    globals_of(ctx).ui.info(f"stored {name} in {where}")


@secret_app.command("ls", help="Secret names and where each comes from (never the values).")
def secret_ls(ctx: typer.Context) -> None:
    from vp.output import render

    g = globals_of(ctx)
    stored = secretstore.stored()
    required: list[str] = []
    optional: list[str] = []
    try:
        required, optional = secretstore.project_names(g.load())
    except UsageError as exc:  # outside a project, or a bad vp.toml: still list the store
        g.ui.debug(f"no project secrets: {exc.message}")
    rows = []
    for name in dict.fromkeys([*required, *optional, *sorted(stored)]):
        sources = []
        if name in os.environ:
            sources.append("environment")
        if name in stored:
            sources.append(stored[name])
        use = "required" if name in required else "optional" if name in optional else ""
        source = sources[0] if sources else "MISSING" if use == "required" else "not set"
        if len(sources) > 1:
            source += " (overrides the store)"
        rows.append({"name": name, "source": source, "project": use})
    if g.output == "text" and not rows:
        g.ui.info("no secrets (store one with: vp secret set NAME)")
        return
    render(rows, "table" if g.output == "text" else g.output, ["name", "source", "project"])


@secret_app.command("rm", help="Forget a stored secret.")
def secret_rm(ctx: typer.Context, name: str = typer.Argument(..., help="Secret name")) -> None:
    if not secretstore.remove(name):
        raise UsageError(f"no stored secret named {name}", hint="see: vp secret ls")
    globals_of(ctx).ui.info(f"removed {name}")


@app.command(
    "setup",
    help="Run the project's [setup] on its host now if its inputs changed (--force: anyway).",
)
def setup_cmd(
    ctx: typer.Context,
    force: bool = typer.Option(False, "--force", help="Run it even if the host is up to date"),
) -> None:
    from vp.run import RunOptions, execute

    g = globals_of(ctx)
    cfg = g.load()
    opts = RunOptions(
        argv=[],
        sync=not g.no_sync,
        download=False,
        yes=g.yes,
        docker=g.docker,
        host_name=g.host if cfg.platform != "ssh" else None,
        setup_only=True,
        force_setup=force,
    )
    raise typer.Exit(execute(cfg, opts, g.ui))
