"""Layered configuration: defaults < user file < project file < environment < flags.

Every key is declared in SCHEMA, so a typo in any file is caught with the file, the key and the
nearest valid key instead of being silently ignored.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vp import paths
from vp.errors import ConfigError, UsageError

# section -> key -> (type, default). `dict` sections ([env]) accept any identifier key.
SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "project": {"name": (str, None)},
    "host": {
        "platform": (str, "local"),
        "name": (str, None),
        "gpu": (str, None),
        "gpus": (int, 1),
        "max_price": ((int, float), None),
        "disk_gb": (int, 50),
        "image": (str, None),
        "spot": (bool, False),
        "cpus": (int, None),
        "memory_gb": (int, None),
        "region": (str, None),
        "idle_stop_minutes": ((int, float), None),
        "idle_stop_command": (str, None),
        "ready_timeout": ((int, float), 600),
    },
    "ssh": {
        "host": (str, None),
        "identity_file": (str, None),
        "reconnect_timeout": ((int, float), 300),
        "connect_timeout": (int, 10),
    },
    "sync": {
        "workdir": (str, "/workspace"),
        "download": (bool, True),
        "use_gitignore": (bool, False),
        "extra_ignore": (list, []),
        "include": (list, []),
        # Ask before the first upload of a folder with neither vp.toml nor .git when it is
        # bigger than this (0: never ask).
        "confirm_files": (int, 10000),
        "confirm_gb": ((int, float), 1),
    },
    "docker": {
        "enabled": (bool, False),
        "dockerfile": (str, "Dockerfile"),
        "image": (str, None),
        "build_on": (str, "local"),
        "gpus": (bool, None),
        "username": (str, None),
        "password": (str, None),
    },
    "env": {},
    "vast": {
        "api_key": (str, None),
        "url": (str, None),
        "image": (str, None),
        "user": (str, None),
        "poll_interval": ((int, float), None),
    },
    "runpod": {
        "api_key": (str, None),
        "image": (str, None),
        "cloud_type": (str, None),
        "container_disk_gb": (int, None),
        "user": (str, None),
        "poll_interval": ((int, float), None),
    },
    "thunder": {
        "token": (str, None),
        "url": (str, None),
        "template": (str, None),
        "mode": (str, None),
        "user": (str, None),
        "poll_interval": ((int, float), None),
    },
    "aws": {
        "region": (str, None),
        "profile": (str, None),
        "user": (str, None),
        "data_volume_gb": (int, None),
        "keep_data_volume": (bool, False),
        "ami": (str, None),
        "poll_interval": ((int, float), None),
        "api_timeout": ((int, float), None),
    },
    "gce": {
        "project": (str, None),
        "zone": (str, None),
        "user": (str, None),
        "image": (str, None),
        "poll_interval": ((int, float), None),
        "create_timeout": ((int, float), None),
    },
}

# Sections whose keys name free-form variables.
FREE_SECTIONS = {"env"}
# Keys whose values are secrets: masked by `vp config show`, refused in project files.
SECRET_KEYS = {
    ("vast", "api_key"),
    ("runpod", "api_key"),
    ("thunder", "token"),
    ("docker", "password"),
}

# [env] variables whose values `masked` hides too (HF_TOKEN, WANDB_API_KEY, DB_PASSWORD, ...).
SECRET_ENV_NAME = re.compile(r"(?i)key|token|secret|passw|pwd|credential|auth|private")

# Keys that must not be negative (a limit, a size).
NON_NEGATIVE = {("sync", "confirm_files"), ("sync", "confirm_gb")}

# Environment variables that map onto config keys (VP_<SECTION>_<KEY> also works for every key).
ENV_ALIASES = {
    "VP_PLATFORM": ("host", "platform"),
    "VP_WORKDIR": ("sync", "workdir"),
    "VP_PROJECT": ("project", "name"),
}

PROJECT_FILE = "vp.toml"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Config:
    """The merged configuration plus where it came from."""

    data: dict[str, dict[str, Any]]
    project_root: Path  # directory that is synced (where vp.toml / pyproject.toml lives, else cwd)
    project_file: Path | None = None
    sources: list[Path] = field(default_factory=list)

    def get(self, section: str, key: str) -> Any:
        return self.data.get(section, {}).get(key)

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.data.get(name, {}))

    @property
    def project(self) -> str:
        name = self.get("project", "name") or self.project_root.name or "project"
        return re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-") or "project"

    @property
    def platform(self) -> str:
        return self.get("host", "platform")


def defaults() -> dict[str, dict[str, Any]]:
    return {
        section: {k: copy.deepcopy(v[1]) for k, v in keys.items()}
        for section, keys in SCHEMA.items()
    }


def _nearest(word: str, choices: list[str]) -> str | None:
    near = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return near[0] if near else None


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    names[list] = "a list"
    if isinstance(t, tuple):
        return "a number"
    return names.get(t, t.__name__)


def validate(raw: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Check a parsed file against SCHEMA; return it. Errors name the file, key and fix."""
    out: dict[str, dict[str, Any]] = {}
    for section, table in raw.items():
        if section not in SCHEMA:
            near = _nearest(section, list(SCHEMA))
            hint = f"did you mean [{near}]?" if near else f"valid sections: {', '.join(SCHEMA)}"
            raise ConfigError(f"{source}: unknown section [{section}]", hint=hint)
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: '{section}' must be a table, like [{section}]")
        out[section] = {}
        for key, value in table.items():
            if section in FREE_SECTIONS:
                if not _ENV_NAME.match(key):
                    raise ConfigError(
                        f"{source}: [{section}] {key!r} is not a valid environment variable name"
                    )
                if not isinstance(value, str | int | float | bool):
                    raise ConfigError(f"{source}: [{section}] {key} must be a string or number")
                out[section][key] = str(value).lower() if isinstance(value, bool) else str(value)
                continue
            keys = SCHEMA[section]
            if key not in keys:
                near = _nearest(key, list(keys))
                hint = f"did you mean '{near}'?" if near else f"valid keys: {', '.join(keys)}"
                raise ConfigError(f"{source}: unknown key '{key}' in [{section}]", hint=hint)
            expected = keys[key][0]
            bad_bool = isinstance(value, bool) and expected is not bool
            if bad_bool or not isinstance(value, expected):
                raise ConfigError(
                    f"{source}: [{section}] {key} must be {_type_name(expected)}, got {value!r}"
                )
            if expected is list and not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{source}: [{section}] {key} must be a list of strings")
            if (section, key) in NON_NEGATIVE and value < 0:
                raise ConfigError(
                    f"{source}: [{section}] {key} must be 0 or more, got {value!r}",
                    hint="0 turns the check off",
                )
            out[section][key] = value
    return out


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib puts "(at line N, column M)" in the message; keep it, it is the useful part.
        raise ConfigError(f"{path}: invalid TOML: {exc}", hint="fix the line named above") from None


def find_project_file(start: Path) -> tuple[Path | None, Path]:
    """Walk up from `start` to the nearest vp.toml, or pyproject.toml with [tool.vp]."""
    for directory in (start, *start.parents):
        candidate = directory / PROJECT_FILE
        if candidate.is_file():
            return candidate, directory
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            try:
                data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError):
                data = {}
            if isinstance(data.get("tool"), dict) and "vp" in data["tool"]:
                return pyproject, directory
    return None, start


def _load_project(path: Path) -> dict[str, Any]:
    raw = read_toml(path)
    if path.name == "pyproject.toml":
        raw = raw.get("tool", {}).get("vp", {})
        source = f"{path} [tool.vp]"
    else:
        source = str(path)
    data = validate(raw, source)
    for section, key in SECRET_KEYS:
        if key in data.get(section, {}):
            raise ConfigError(
                f"{source}: [{section}] {key} is a secret and must not live in the project "
                "(it would be synced and committed)",
                hint=f"move it to {paths.user_config_file()} or the environment",
            )
    return data


def _coerce(raw: str, expected: type | tuple[type, ...], name: str) -> Any:
    if expected is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise UsageError(f"{name}={raw!r}: expected true or false")
    if expected is int:
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"{name}={raw!r}: expected an integer") from None
    if isinstance(expected, tuple):
        try:
            return float(raw)
        except ValueError:
            raise UsageError(f"{name}={raw!r}: expected a number") from None
    if expected is list:
        return [p for p in raw.split(",") if p]
    return raw


def _from_env(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        for key, (expected, _) in keys.items():
            name = f"VP_{section.upper()}_{key.upper()}"
            if name in environ:
                out.setdefault(section, {})[key] = _coerce(environ[name], expected, name)
    for name, (section, key) in ENV_ALIASES.items():
        if name in environ:
            expected = SCHEMA[section][key][0]
            out.setdefault(section, {})[key] = _coerce(environ[name], expected, name)
    return out


def merge(base: dict[str, dict[str, Any]], layer: dict[str, dict[str, Any]]) -> None:
    for section, table in layer.items():
        base.setdefault(section, {}).update(table)


def load(
    cwd: Path | None = None,
    config_path: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Build the merged config for a project found from `cwd` (or the explicit `config_path`)."""
    environ = dict(os.environ if environ is None else environ)
    cwd = (cwd or Path.cwd()).resolve()
    data = defaults()
    sources: list[Path] = []

    user_file = paths.user_config_file()
    if user_file.is_file():
        merge(data, validate(read_toml(user_file), str(user_file)))
        sources.append(user_file)

    if config_path is not None:
        config_path = config_path.expanduser().resolve()
        if not config_path.is_file():
            raise UsageError(f"--config {config_path}: no such file")
        project_file, root = config_path, config_path.parent
    else:
        project_file, root = find_project_file(cwd)
    if project_file is not None:
        merge(data, _load_project(project_file))
        sources.append(project_file)

    merge(data, _from_env(environ))
    if overrides:
        merge(data, overrides)

    cfg = Config(data=data, project_root=root, project_file=project_file, sources=sources)
    check(cfg)
    return cfg


def check(cfg: Config) -> None:
    """Cross-key rules that a per-key type check cannot express."""
    from vp.platforms import NAMES

    platform = cfg.platform
    if platform not in NAMES:
        near = _nearest(platform, list(NAMES))
        hint = f"did you mean '{near}'?" if near else f"choose one of: {', '.join(NAMES)}"
        raise UsageError(f"unknown platform '{platform}'", hint=hint)
    if cfg.get("docker", "build_on") not in ("local", "remote"):
        raise ConfigError('[docker] build_on must be "local" or "remote"')
    for section, key in sorted(NON_NEGATIVE):  # values from the environment or flags
        value = cfg.get(section, key)
        if value is not None and value < 0:
            raise ConfigError(f"[{section}] {key} must be 0 or more, got {value!r}")
    workdir = cfg.get("sync", "workdir")
    if not workdir or "\0" in workdir or "\n" in workdir:
        raise ConfigError("[sync] workdir must be a non-empty path")


def masked(data: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A copy safe to print: secrets replaced by a short marker."""
    out = copy.deepcopy(data)
    for section, key in SECRET_KEYS:
        if out.get(section, {}).get(key):
            out[section][key] = "****"
    for name, value in out.get("env", {}).items():
        if value and SECRET_ENV_NAME.search(name):
            out["env"][name] = "****"
    return out


def parse_key(dotted: str) -> tuple[str, str]:
    """'host.gpu' -> ('host', 'gpu'), validated against SCHEMA."""
    if "." not in dotted:
        raise UsageError(f"'{dotted}' is not a config key", hint="use SECTION.KEY, e.g. host.gpu")
    section, key = dotted.split(".", 1)
    validate({section: {key: _placeholder(section, key)}}, "key")
    return section, key


def _placeholder(section: str, key: str) -> Any:
    if section in FREE_SECTIONS or section not in SCHEMA or key not in SCHEMA[section]:
        return ""
    expected = SCHEMA[section][key][0]
    return {bool: False, int: 0, list: []}.get(expected, 0.0 if isinstance(expected, tuple) else "")


def coerce_value(section: str, key: str, raw: str) -> Any:
    if section in FREE_SECTIONS:
        return raw
    return _coerce(raw, SCHEMA[section][key][0], f"{section}.{key}")


def write_toml(path: Path, data: dict[str, Any], private: bool = False) -> None:
    """Write atomically; the user file is created 0600 because it holds API keys."""
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        tomli_w.dump(data, fh)
    if private:
        os.chmod(tmp, 0o600)
    os.replace(tmp, path)
