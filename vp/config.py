"""Layered configuration: defaults < user file < project file < environment < flags.

Every table is a frozen dataclass (vp's own below, each provider's in its module, see
vp/settings.py): its fields are the keys, types, defaults and range rules, written once. A typo
in any file is caught with the file, the key and the nearest valid key instead of being
silently ignored, and the loaded `Config` cannot be changed: a result is returned, never
written back into the config.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from vp import paths, settings
from vp.errors import ConfigError, UsageError
from vp.settings import STR_OR_LIST, Key, non_negative, positive, setting


@dataclass(frozen=True)
class ProjectTable:
    """[project]"""

    name: str | None = None  # labels the project's hosts; default: the folder's name


@dataclass(frozen=True)
class HostTable:
    """[host]: which platform, and what to create there."""

    # One platform, or a fallback list tried in order (vp/capacity.py).
    platform: str | tuple[str, ...] = setting("local", check="fallback_list")
    name: str | None = None
    # One GPU, or a fallback list tried in order on each platform.
    gpu: str | tuple[str, ...] | None = setting(check="fallback_list")
    gpus: int = non_negative(1)
    max_price: float | None = non_negative()
    disk_gb: int = positive(50)
    image: str | None = None
    spot: bool = False
    cpus: int | None = positive()
    memory_gb: int | None = positive()
    region: str | None = None
    idle_stop_minutes: float | None = non_negative()
    idle_stop_command: str | None = None
    ready_timeout: float = non_negative(600)
    # Hosts of this spec a run uses at once (vp/nodes.py; `vp --nodes N`).
    nodes: int = positive(1)
    # Retry the whole fallback list with backoff for this long ("30m") when nothing fits.
    wait_for_capacity: str | None = setting(check="duration")
    # A project host stopped longer than this is destroyed ("7d"; vp/guard.py).
    destroy_after_stopped: str | None = setting(check="duration")


@dataclass(frozen=True)
class RunTable:
    """[run]"""

    # A limit on every run's time, enforced on the host ("2h"; `vp --timeout` for one run).
    timeout: str | None = setting(check="duration")
    # A run whose host is preempted or destroyed starts again on a new host (vp/recover.py).
    recover: bool = False
    max_attempts: int = 3


@dataclass(frozen=True)
class BudgetTable:
    """[budget]: spend caps in USD for all of this machine's hosts (vp/spend.py). For a cap,
    the lowest value of any layer counts, not the last one: a project file may tighten the
    user's budget but never loosen it."""

    daily: float | None = setting(check="non_negative", merge="lowest")
    monthly: float | None = setting(check="non_negative", merge="lowest")
    min_minutes: float = non_negative(5)


@dataclass(frozen=True)
class SshTable:
    """[ssh]: the `ssh` platform's host and how long to wait for any host."""

    host: str | None = setting(check="ssh_target")
    # The machines a multi-node run uses, rank 0 first (`vp --nodes N` takes the first N).
    hosts: tuple[str, ...] = setting((), check="ssh_target")
    identity_file: str | None = None
    reconnect_timeout: float = non_negative(300)
    connect_timeout: int = positive(10)


@dataclass(frozen=True)
class SyncTable:
    """[sync]"""

    workdir: str = "/workspace"
    download: bool = True
    use_gitignore: bool = False
    extra_ignore: tuple[str, ...] = ()
    results: tuple[str, ...] = ()
    # Multi-node runs: whose results come back. "0": rank 0's, into the project;
    # "all": rank 0's there and every other rank's into nodes/RANK/.
    download_from: str = setting("0", check="download_from")
    # Ask before the first upload of a folder with neither vp.toml nor .git when it is
    # bigger than this (0: never ask).
    confirm_files: int = non_negative(10000)
    confirm_gb: float = non_negative(1)
    # A folder the run writes checkpoints to: pulled down during the run, at most every
    # checkpoint_interval, and uploaded again before a resumed attempt (vp/checkpoints.py).
    checkpoint_dir: str | None = setting(check="checkpoint_dir")
    checkpoint_interval: str = setting("60s", check="duration")


@dataclass(frozen=True)
class DockerTable:
    """[docker]"""

    enabled: bool = False
    dockerfile: str = "Dockerfile"
    image: str | None = None
    build_on: str = "local"
    gpus: bool | None = None
    registry: str | None = setting(check="registry")
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class SetupTable:
    """[setup]: installs the project's dependencies on a host, once per change (vp/setup.py)."""

    run: str | None = None
    inputs: tuple[str, ...] | None = None  # unset: vp/setup.py's own list


@dataclass(frozen=True)
class SecretsTable:
    """[secrets]: names only; the values come from the environment or `vp secret set`
    (vp/secretstore.py)."""

    required: tuple[str, ...] = setting((), check="secret_names")
    optional: tuple[str, ...] = setting((), check="secret_names")


@dataclass(frozen=True)
class UiTable:
    """[ui]: `vp ui`'s apps on the host, proxied at /apps/NAME/ (name -> port on the host)."""

    apps: Mapping[str, int] = setting(MappingProxyType({}), check="app_ports")


# vp's own tables; each provider adds its own (`Declaration.settings`), see `tables()`.
CORE_TABLES: dict[str, type] = {
    "project": ProjectTable,
    "host": HostTable,
    "run": RunTable,
    "budget": BudgetTable,
    "ssh": SshTable,
    "sync": SyncTable,
    "docker": DockerTable,
    "setup": SetupTable,
    "secrets": SecretsTable,
    "ui": UiTable,
}
# Sections whose keys name free-form variables.
FREE_SECTIONS = {"env"}


@functools.cache
def tables() -> dict[str, type]:
    """Every table a config file may hold, by name. Imports the provider modules (not their
    SDKs), so it is asked when a config is loaded, not when vp starts."""
    from vp.platforms import declarations

    providers = {d.name: d.settings for d in declarations() if settings.keys(d.settings)}
    return {**CORE_TABLES, **providers}


def table_keys(section: str) -> dict[str, Key]:
    """The keys of a table (none for a free section such as [env])."""
    if section in FREE_SECTIONS:
        return {}
    table = _table(section)
    if table is None:
        raise KeyError(section)
    return settings.keys(table)


@functools.cache
def _table(section: str) -> type | None:
    """The table class of one section, importing only its provider's module (if it is one):
    loading a config imports the providers its files and environment name, not all of them."""
    from vp.platforms import PROVIDERS, declaration

    if section in PROVIDERS:
        found = declaration(section).settings
        if settings.keys(found):
            return found
    return CORE_TABLES.get(section)


def _known(section: str) -> bool:
    return section in FREE_SECTIONS or _table(section) is not None


@functools.cache
def _default(section: str) -> Any:
    """A provider's table with every key at its default, built when first asked for."""
    table = _table(section)
    return settings.NoSettings() if table is None else settings.build(table, {})


def section_names() -> list[str]:
    return [*CORE_TABLES, *FREE_SECTIONS, *(n for n in tables() if n not in CORE_TABLES)]


@functools.cache
def _declared(sections: frozenset[str] | None = None) -> tuple[set, dict, dict]:
    """What the providers' declarations add: secrets, endpoint keys, endpoint variables; of
    the providers among `sections` (None: all of them)."""
    from vp.platforms import PROVIDERS, declaration, declarations

    if sections is None:
        decls = declarations()
    else:
        decls = [declaration(s) for s in sorted(sections) if s in PROVIDERS]
    secret = {("docker", "password"), *((d.name, key) for d in decls for key in d.secrets)}
    user_only = {
        **{(d.name, d.endpoint_key): d.endpoint_env for d in decls if d.endpoint_key},
        ("docker", "registry"): "VP_REGISTRY",
        ("docker", "username"): "VP_REGISTRY_USER",
    }
    endpoint_env = {d.name: d.endpoint_env for d in decls if d.endpoint_env}
    return secret, user_only, endpoint_env


def __getattr__(name: str) -> Any:
    """The tables that depend on the providers' declarations, computed on first use so that
    importing vp.config (every command does) imports no provider module.

    SECRET_KEYS: keys whose values are secrets: masked by `vp config show`, refused in project
    files. USER_ONLY_KEYS: keys that decide where the user's credentials are sent (an API
    endpoint receives the API key, a registry the registry login); a project file is someone
    else's text (a cloned repo), so only the user file or the environment may set them;
    key -> the environment variable that also does. ENDPOINT_ENV: API endpoints the environment
    can set per platform (ARCHITECTURE.md §3: how tests point vp at emulators).
    """
    which = ("SECRET_KEYS", "USER_ONLY_KEYS", "ENDPOINT_ENV")
    if name in which:
        return _declared()[which.index(name)]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# [env] variables whose values `masked` hides too (HF_TOKEN, WANDB_API_KEY, DB_PASSWORD, ...).
SECRET_ENV_NAME = re.compile(r"(?i)key|token|secret|passw|pwd|credential|auth|private")
# Values that are tokens whatever their name: the prefixes providers put on their keys.
SECRET_VALUE_PREFIX = re.compile(
    r"^(hf_|sk-|sk_live_|rk_live_|pk_live_|ghp_|gho_|ghu_|ghs_|ghr_|github_pat_|glpat-|xox[abpr]-"
    r"|AKIA|ASIA|AIza|ya29\.|npm_|pypi-|dop_v1_|rpa_|SG\.|eyJ)[A-Za-z0-9._/+=-]{8,}$"
)

# Cloud users end up in cloud-init (`useradd NAME`) and ssh argv: the portable useradd form only.
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

# Environment variables that map onto config keys (VP_<SECTION>_<KEY> also works for every key).
ENV_ALIASES = {
    "VP_PLATFORM": ("host", "platform"),
    "VP_WORKDIR": ("sync", "workdir"),
    "VP_PROJECT": ("project", "name"),
    "VP_REGISTRY": ("docker", "registry"),
}

PROJECT_FILE = "vp.toml"
_UNSET = object()
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Config:
    """The merged configuration, typed per table, plus where it came from. Read-only: a
    result is returned to whoever needs it, never written back here."""

    project_root: Path  # directory that is synced (where vp.toml / pyproject.toml lives, else cwd)
    project_file: Path | None = None
    sources: tuple[Path, ...] = ()
    host: HostTable = HostTable()
    run: RunTable = RunTable()
    budget: BudgetTable = BudgetTable()
    ssh: SshTable = SshTable()
    sync: SyncTable = SyncTable()
    docker: DockerTable = DockerTable()
    setup: SetupTable = SetupTable()
    secrets: SecretsTable = SecretsTable()
    ui: UiTable = field(default_factory=UiTable)
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Every table by name, the providers' included (`section("vast").api_key`).
    tables: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # "section.key" of every value that only the project file set (no environment variable
    # or flag overrode it): someone else's choice, which vp/trust.py holds back where it
    # decides a destination.
    from_project: frozenset[str] = frozenset()
    # Flags for this one invocation: `--yes` (no questions), `--over-budget` (pass the caps).
    yes: bool = False
    over_budget: bool = False

    def section(self, name: str) -> Any:
        """A table by name: `section("vast")` is the [vast] settings. A provider without
        settings (`local`) gets an empty table."""
        found = self.tables.get(name)
        if found is None:
            found = _default(name)
        return found

    def replace(self, section: str, **changes: Any) -> Config:
        """A new Config with some keys of one table changed; this one stays as it was."""
        table = replace(self.section(section), **changes)
        tables = MappingProxyType({**self.tables, section: table})
        typed = {section: table} if section in _TYPED else {}
        # a value set here is no longer the project file's
        ours = self.from_project - {f"{section}.{key}" for key in changes}
        return replace(self, tables=tables, from_project=ours, **typed)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Plain data, every table and [env] (`vp config show`)."""
        out = {name: settings.as_dict(self.section(name)) for name in tables()}
        out["env"] = dict(self.env)
        return out

    @property
    def project(self) -> str:
        name = self.section("project").name or self.project_root.name or "project"
        return re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-") or "project"

    @property
    def platform(self) -> str:
        """The platform (the first of a fallback list: what `vp ls`, `stop`, `down` ask)."""
        return self.platforms[0]

    @property
    def platforms(self) -> tuple[str, ...]:
        """`[host] platform` as a list: one name, or the fallback list in order."""
        value = self.host.platform or "local"
        return value if isinstance(value, tuple) else (value,)

    @property
    def gpus_wanted(self) -> tuple[str | None, ...]:
        """`[host] gpu` as a list: one name (or None: any GPU), or the fallback list."""
        value = self.host.gpu
        return value if isinstance(value, tuple) else (value,)


# The tables Config has as attributes (`cfg.host`); [project] is `section("project")`, since
# `cfg.project` is the project's name as vp uses it.
_TYPED = ("host", "run", "budget", "ssh", "sync", "docker", "setup", "secrets", "ui")


def _build(data: dict[str, dict[str, Any]], **where: Any) -> Config:
    """The read-only Config from merged, validated values (absent keys keep their default)."""
    names = [*CORE_TABLES, *(s for s in data if s not in CORE_TABLES and s not in FREE_SECTIONS)]
    built = {name: settings.build(_table(name), data.get(name, {})) for name in names}
    return Config(
        **where,
        **{name: built[name] for name in _TYPED},
        env=MappingProxyType(dict(data.get("env", {}))),
        tables=MappingProxyType(built),
    )


def _nearest(word: str, choices: list[str]) -> str | None:
    import difflib  # only when a word is unknown

    near = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return near[0] if near else None


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    names[list] = "a list"
    names[dict] = "a table"
    if t == STR_OR_LIST:
        return "a string or a list of strings"
    if isinstance(t, tuple):
        return "a number"
    return names.get(t, t.__name__)


# Keys vp once accepted and no longer has: (section, key) -> the hint that says what to do
# instead. `[sync] include` was accepted and never read (issue #11): ignore rules already
# re-include with `!`, so a second mechanism would only be a second place to look.
REMOVED_KEYS = {
    ("sync", "include"): (
        "to upload files an ignore rule skips, add a `!pattern` line to .vpignore "
        "(or to sync.extra_ignore): later rules win"
    ),
}


def validate(raw: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Check a parsed file against the tables; return it. Errors name the file, key and fix."""
    out: dict[str, dict[str, Any]] = {}
    for section, table in raw.items():
        if not _known(section):
            sections = section_names()
            near = _nearest(section, sections)
            hint = f"did you mean [{near}]?" if near else f"valid sections: {', '.join(sections)}"
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
            keys = table_keys(section)
            if (section, key) in REMOVED_KEYS:
                raise ConfigError(
                    f"{source}: [{section}] {key} is not a setting (it was never read)",
                    hint=REMOVED_KEYS[section, key],
                )
            if key not in keys:
                near = _nearest(key, list(keys))
                hint = f"did you mean '{near}'?" if near else f"valid keys: {', '.join(keys)}"
                raise ConfigError(f"{source}: unknown key '{key}' in [{section}]", hint=hint)
            expected = keys[key].expected
            bad_bool = isinstance(value, bool) and expected is not bool
            if bad_bool or not isinstance(value, expected):
                raise ConfigError(
                    f"{source}: [{section}] {key} must be {_type_name(expected)}, got {value!r}"
                )
            if isinstance(value, list) and not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{source}: [{section}] {key} must be a list of strings")
            check_value(section, key, value, source)
            out[section][key] = value
    return out


def check_value(section: str, key: str, value: Any, source: str) -> None:
    """Range and shape rules for one value. A file's text reaches cloud-init, ssh argv and
    sleep loops, so a user name that is shell text or a negative timeout stops here."""
    where = f"{source}: [{section}] {key}"
    if value is None or value == "":
        return  # unset: the platform's own default applies
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    rule = table_keys(section)[key].check if section not in FREE_SECTIONS else None
    if rule == "positive" and value <= 0:
        raise ConfigError(f"{where} must be greater than 0, got {value!r}")
    if rule == "non_negative" and value < 0:
        raise ConfigError(f"{where} must be 0 or more, got {value!r}")
    if rule == "duration":
        from vp.clock import parse_duration

        parse_duration(value, where)
    if rule == "user_name" and not USER_NAME.match(value):
        raise ConfigError(
            f"{where} {value!r} is not a valid user name",
            hint="lower-case letters, digits, '_' and '-', starting with a letter or '_'",
        )
    if rule == "fallback_list" and isinstance(value, list):
        if not value or len(set(value)) != len(value) or not all(v.strip() for v in value):
            raise ConfigError(
                f"{where} must be a non-empty list of different names, got {value!r}",
                hint='e.g. gpu = ["H100", "A100-80GB"], platform = ["runpod", "vast"]',
            )
    if rule == "checkpoint_dir":
        from vp.checkpoints import check_dir

        check_dir(value, where)
    if rule == "ssh_target":
        from vp.ssh import parse_target

        for one in value if isinstance(value, list) else [value]:
            try:
                parse_target(one)
            except UsageError as exc:
                raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None
    if rule == "cloud_zone" and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", value):
        raise ConfigError(
            f"{where} {value!r} is not a region or zone name",
            hint="lower-case letters, digits and '-', e.g. us-east-1 or us-central1-a",
        )
    if rule == "cloud_id" and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.:_-]{0,99}", value):
        # it goes into API paths: no '/', '?', '#' or spaces
        raise ConfigError(f"{where} {value!r} is not a valid id", hint="e.g. my-project-123")
    if rule == "download_from" and value not in ("0", "all"):
        raise ConfigError(
            f'{where} must be "0" (rank 0\'s results) or "all" (every rank\'s), got {value!r}'
        )
    if rule == "endpoint":
        check_endpoint(value, where)
    if rule == "secret_names":
        from vp.secretstore import check_names

        check_names(value, where)
    if rule == "app_ports":
        for name, port in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name):
                raise ConfigError(
                    f"{where}: app name {name!r} may hold only letters, digits, '_' and '-'"
                )
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ConfigError(
                    f"{where}: {name} = {port!r} is not a port",
                    hint="a port on the host from 1 to 65535, e.g. apps = { jupyter = 8888 }",
                )
    if rule == "registry":
        if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d{1,5})?", value):
            raise ConfigError(
                f"{where} must be a registry host such as ghcr.io or 127.0.0.1:5000, got {value!r}"
            )


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, where: str) -> None:
    """An API endpoint receives the API key on every call: https, or plain http to this machine
    only (emulators and local proxies)."""
    parts = urlsplit(url.strip())
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        host = None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"{where} {url!r} is not an http(s) URL", hint="e.g. https://host/path")
    if parts.scheme == "http" and not _loopback(host):
        raise ConfigError(
            f"{where} {url!r} would send your API key unencrypted: use https "
            "(plain http only to localhost)"
        )


def check_platform_endpoint(platform: str, environ: dict[str, str] | None = None) -> None:
    """The environment's endpoint override for `platform`, held to the same rule as a file's."""
    name = _declared(frozenset([platform]))[2].get(platform)
    value = (os.environ if environ is None else environ).get(name or "")
    if name and value:
        check_endpoint(value, name)


def looks_secret(value: str) -> bool:
    """A token by its shape: a provider prefix (hf_, sk-, ghp_, AKIA...) or a long random string.
    Used to keep such values out of project files and off the terminal."""
    value = value.strip()
    if SECRET_VALUE_PREFIX.match(value):
        return True
    if len(value) < 20 or any(c.isspace() for c in value) or "/" in value:
        return False
    classes = sum(any(test(c) for c in value) for test in (str.islower, str.isupper, str.isdigit))
    if classes < 2:
        return False
    counts = Counter(value)
    entropy = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return entropy >= 3.5


def is_secret(section: str, key: str, value: Any) -> bool:
    """Is this value a secret that must stay out of project files, logs and the terminal?"""
    if (section, key) in _declared(frozenset([section]))[0]:
        return True
    if section not in FREE_SECTIONS or not isinstance(value, str):
        return False
    if looks_secret(value):
        return True
    plain = value.strip().lower() in ("", "true", "false", "0", "1", "yes", "no", "on", "off")
    return bool(SECRET_ENV_NAME.search(key)) and not plain and len(value) >= 8


def read_toml_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def read_toml(path: Path) -> dict[str, Any]:
    text = read_toml_text(path)
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
    secret_keys, user_only_keys, _ = _declared(frozenset(data))
    for section, key in secret_keys:
        if key in data.get(section, {}):
            raise ConfigError(
                f"{source}: [{section}] {key} is a secret and must not live in the project "
                "(it would be synced and committed)",
                hint=f"move it to {paths.user_config_file()} or the environment",
            )
    for (section, key), env_name in user_only_keys.items():
        if key in data.get(section, {}):
            raise ConfigError(
                f"{source}: [{section}] {key} decides where your credentials are sent, so a "
                "project file may not set it; it belongs in your user file or the environment",
                hint=f"vp config set --user {section}.{key} VALUE (or {env_name}=VALUE)",
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
    if expected == STR_OR_LIST:  # "vast" or "runpod,vast"
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        return parts if len(parts) > 1 else raw.strip()
    if isinstance(expected, tuple):
        try:
            return float(raw)
        except ValueError:
            raise UsageError(f"{name}={raw!r}: expected a number") from None
    if expected is list:
        return [p for p in raw.split(",") if p]
    if expected is dict:  # NAME=PORT,NAME=PORT
        pairs = [p.partition("=") for p in raw.split(",") if p]
        return {k.strip(): int(v) if v.strip().isdigit() else v for k, _, v in pairs}
    return raw


def _from_env(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    from vp.platforms import PROVIDERS

    named = [p for p in PROVIDERS if any(k.startswith(f"VP_{p.upper()}_") for k in environ)]
    for section in dict.fromkeys([*CORE_TABLES, *named]):
        if _table(section) is None:
            continue
        for key, spec in table_keys(section).items():
            name = f"VP_{section.upper()}_{key.upper()}"
            if name in environ:
                out.setdefault(section, {})[key] = _coerce(environ[name], spec.expected, name)
    for name, (section, key) in ENV_ALIASES.items():
        if name in environ:
            expected = table_keys(section)[key].expected
            out.setdefault(section, {})[key] = _coerce(environ[name], expected, name)
    for section, table in out.items():
        for key, value in table.items():
            check_value(section, key, value, "environment")
    return out


def merge(base: dict[str, dict[str, Any]], layer: dict[str, dict[str, Any]]) -> None:
    for section, table in layer.items():
        base.setdefault(section, {}).update(table)


def load(
    cwd: Path | None = None,
    config_path: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    environ: dict[str, str] | None = None,
    *,
    yes: bool = False,
    over_budget: bool = False,
) -> Config:
    """Build the merged config for a project found from `cwd` (or the explicit `config_path`)."""
    environ = dict(os.environ if environ is None else environ)
    cwd = (cwd or Path.cwd()).resolve()
    data: dict[str, dict[str, Any]] = {}
    sources: list[Path] = []

    layers: list[dict[str, dict[str, Any]]] = []
    user_layer: dict[str, dict[str, Any]] = {}
    user_file = paths.user_config_file()
    if user_file.is_file():
        user_layer = validate(read_toml(user_file), str(user_file))
        layers.append(user_layer)
        merge(data, layers[-1])
        sources.append(user_file)

    if config_path is not None:
        config_path = config_path.expanduser().resolve()
        if not config_path.is_file():
            raise UsageError(f"--config {config_path}: no such file")
        project_file, root = config_path, config_path.parent
    else:
        project_file, root = find_project_file(cwd)
    project_layer: dict[str, dict[str, Any]] = {}
    if project_file is not None:
        project_layer = _load_project(project_file)
        layers.append(project_layer)
        merge(data, layers[-1])
        sources.append(project_file)

    layers.append(_from_env(environ))
    merge(data, layers[-1])
    if overrides:
        merge(data, overrides)
    later = [layers[-1], overrides or {}]
    from_project = frozenset(
        f"{section}.{key}"
        for section, table in project_layer.items()
        for key, value in table.items()
        if not any(key in layer.get(section, {}) for layer in later)
        and user_layer.get(section, {}).get(key, _UNSET) != value  # the user's own value too
    )
    for section in [s for s in data if s not in FREE_SECTIONS]:
        for key, spec in table_keys(section).items():
            if spec.merge == "lowest":
                found = [
                    v for layer in layers if (v := layer.get(section, {}).get(key)) is not None
                ]
                if found:
                    data[section][key] = min(found)

    cfg = _build(
        data,
        project_root=root,
        project_file=project_file,
        sources=tuple(sources),
        from_project=from_project,
        yes=yes,
        over_budget=over_budget,
    )
    check(cfg)
    return cfg


def check(cfg: Config) -> None:
    """Cross-key rules that a per-key type check cannot express."""
    from vp.platforms import NAMES

    for platform in cfg.platforms:
        if platform not in NAMES:
            near = _nearest(platform, list(NAMES))
            hint = f"did you mean '{near}'?" if near else f"choose one of: {', '.join(NAMES)}"
            raise UsageError(f"unknown platform '{platform}'", hint=hint)
    if len(cfg.platforms) > 1:
        from vp.platforms import clouds

        others = [p for p in cfg.platforms if p not in clouds()]
        if others:
            raise ConfigError(
                f"[host] platform: a fallback list holds only cloud platforms, not {others[0]}",
                hint=f"choose among: {', '.join(clouds())}",
            )
    if cfg.docker.build_on not in ("local", "remote"):
        raise ConfigError('[docker] build_on must be "local" or "remote"')
    if cfg.sync.results:
        from vp.sync.ignore import IgnoreRules

        IgnoreRules(list(cfg.sync.results), "[sync] results")  # a bad pattern names its line
    if cfg.setup.inputs:
        from vp.sync.ignore import IgnoreRules

        IgnoreRules(list(cfg.setup.inputs), "[setup] inputs")
    workdir = cfg.sync.workdir
    if not workdir or "\0" in workdir or "\n" in workdir:
        raise ConfigError("[sync] workdir must be a non-empty path")


def masked(cfg: Config) -> dict[str, dict[str, Any]]:
    """The config as plain data, safe to print: secrets replaced by a short marker."""
    out = cfg.as_dict()
    for section, key in _declared()[0]:
        if out.get(section, {}).get(key):
            out[section][key] = "****"
    for name, value in out.get("env", {}).items():
        if value and (SECRET_ENV_NAME.search(name) or looks_secret(str(value))):
            out["env"][name] = "****"
    return out


def parse_key(dotted: str) -> tuple[str, str]:
    """'host.gpu' -> ('host', 'gpu'), validated against the tables."""
    if "." not in dotted:
        raise UsageError(f"'{dotted}' is not a config key", hint="use SECTION.KEY, e.g. host.gpu")
    section, key = dotted.split(".", 1)
    validate({section: {key: _placeholder(section, key)}}, "key")
    return section, key


def _placeholder(section: str, key: str) -> Any:
    if section in FREE_SECTIONS or section not in tables() or key not in table_keys(section):
        return ""
    expected = table_keys(section)[key].expected
    if expected == STR_OR_LIST:
        return ""
    return {bool: False, int: 1, list: []}.get(expected, 1.0 if isinstance(expected, tuple) else "")


def coerce_value(section: str, key: str, raw: str) -> Any:
    if section in FREE_SECTIONS:
        return raw
    return _coerce(raw, table_keys(section)[key].expected, f"{section}.{key}")


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
