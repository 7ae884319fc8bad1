"""`vp config show|get|set`: print the merged configuration, or change one key in the project
file (or the 0600 user file)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from vp import config, paths, tomledit
from vp.commands.context import command_app, globals_of
from vp.errors import ConfigError, UsageError
from vp.ui import UI

app = command_app()
config_app = typer.Typer(
    help="Show, read and change configuration.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(config_app, name="config")


def read_secret(key: str) -> str:
    """A value from stdin: typed without echo on a terminal, else the first line piped in.
    API keys given as arguments land in shell history and in every process listing."""
    import sys

    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"{key}: ")
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise UsageError(f"no value for {key} on stdin")
    return value


def set_value(dotted: str, raw: str, *, user: bool, ui: UI) -> Path:
    """Edit the one key in place (comments and layout kept, see vp/tomledit.py). A secret never
    goes into a project file, which is synced and committed, and is never printed."""
    section, key = config.parse_key(dotted)
    value = config.coerce_value(section, key, raw)
    secret = config.is_secret(section, key, value)
    if user:
        path = paths.user_config_file()
    else:
        found, _root = config.find_project_file(Path.cwd())
        path = found or Path.cwd() / config.PROJECT_FILE
    if secret and not user:
        raise UsageError(
            f"{path}: {dotted} looks like a secret; it belongs in your user file, not the "
            "project (which is synced and committed)",
            hint=f"vp config set --user {dotted} -   (reads the value from stdin)",
        )
    if not user and (section, key) in config.USER_ONLY_KEYS:
        raise UsageError(
            f"{path}: {dotted} decides where your credentials are sent; only your user file or "
            "the environment may set it",
            hint=f"vp config set --user {dotted} VALUE",
        )
    text = config.read_toml_text(path) if path.exists() else ""
    table = ("tool", "vp", section) if path.name == "pyproject.toml" else (section,)
    new = tomledit.set_key(text, table, key, value, str(path))
    data = tomledit.tomllib.loads(new)
    config.validate(data.get("tool", {}).get("vp", {}) if len(table) == 3 else data, str(path))
    _write(path, new, private=user)
    if not user and section == "ssh" and key in ("host", "hosts"):
        from vp import trust

        # typed by the user on this machine: their own choice, not a cloned repo's
        trust.record_at(path.parent, [value] if isinstance(value, str) else list(value))
    shown = "****" if secret else repr(value)
    ui.info(f"{path}: {dotted} = {shown}")
    return path


def _write(path: Path, text: str, private: bool) -> None:
    """Atomically, keeping the file's mode; the user file is 0600 because it holds API keys."""
    mode = 0o600 if private else 0o644
    if path.exists() and not private:
        mode = path.stat().st_mode & 0o777
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.vp-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write ({exc.strerror})") from None


@config_app.command("show", help="Print the merged configuration (secrets masked).")
def config_show(ctx: typer.Context) -> None:
    from vp import config as cfgmod
    from vp.output import render

    g = globals_of(ctx)
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

    g = globals_of(ctx)
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
    from vp.config import coerce_value, is_secret, parse_key

    ui = globals_of(ctx).ui
    if value == "-":
        value = read_secret(key)
    elif is_secret(*parse_key(key), coerce_value(*parse_key(key), value)):
        ui.warn(f"{key} given as an argument is now in your shell history; next time use: -")
    set_value(key, value, user=user, ui=ui)
