"""`vp config set`: change one key in the project file (or the 0600 user file)."""

from __future__ import annotations

from pathlib import Path

from vp import config, paths
from vp.errors import UsageError
from vp.ui import UI


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
    section, key = config.parse_key(dotted)
    value = config.coerce_value(section, key, raw)
    if (section, key) in config.SECRET_KEYS and not user:
        raise UsageError(
            f"{dotted} is a secret; it belongs in the user file, not the project",
            hint=f"vp config set --user {dotted} VALUE",
        )
    if user:
        path = paths.user_config_file()
    else:
        found, root = config.find_project_file(Path.cwd())
        path = found or Path.cwd() / config.PROJECT_FILE
    data = config.read_toml(path) if path.exists() else {}
    if path.name == "pyproject.toml":
        table = data.setdefault("tool", {}).setdefault("vp", {})
    else:
        table = data
    table.setdefault(section, {})[key] = value
    config.validate(table, str(path))
    config.write_toml(path, data, private=user)
    shown = "****" if (section, key) in config.SECRET_KEYS else repr(value)
    ui.info(f"{path}: {dotted} = {shown}")
    return path
