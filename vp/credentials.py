"""One resolver for every provider's API credential, so the order the README documents is the
order every provider uses, and an error can say which source a rejected key came from.

The order, first found wins: the provider's own environment variable (`VAST_API_KEY`), vp's
`VP_<PROVIDER>_<KEY>`, the user file's `[provider] key` (`vp config set --user vast.api_key -`),
then the files the provider's own CLI writes (`~/.config/vastai/vast_api_key`). The environment
wins because it is what a person sets for one shell or one command, over what is stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vp import paths
from vp.errors import VpError

if TYPE_CHECKING:
    from vp.platforms.cloud import Declaration


@dataclass(frozen=True)
class CredentialFile:
    """A file the provider's own CLI keeps the credential in. `path` may start with `~/` or
    `$XDG_CONFIG_HOME/` (default `~/.config`); `.json`/`.toml` files are read at `field`."""

    path: str
    field: tuple[str, ...] = ()

    def resolve_path(self) -> Path:
        if self.path.startswith("$XDG_CONFIG_HOME/"):
            base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
            return Path(base) / self.path.removeprefix("$XDG_CONFIG_HOME/")
        return Path(self.path).expanduser()

    def read(self) -> str | None:
        path = self.resolve_path()
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            text = path.read_text()
            if not self.field:
                return text.strip() or None
            data: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
            for part in self.field:
                data = data.get(part)
            return str(data).strip() or None if data else None
        return None


@dataclass(frozen=True)
class Credential:
    """Where a provider's credential may come from (beyond the user file's `[name] key`)."""

    key: str  # the key in the provider's config table: "api_key", "token"
    env: str  # the provider's own environment variable: "VAST_API_KEY"
    what: str = "API key"
    files: tuple[CredentialFile, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Resolved:
    """A credential and the words naming where it came from ("VAST_API_KEY from the
    environment"). The value never appears in its repr."""

    value: str = field(repr=False)
    source: str


def _tilde(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home) :] if text.startswith(home + "/") else text


def store_command(provider: str, cred: Credential) -> str:
    """The command that stores the credential in the user file, reading it from stdin."""
    return f"vp config set --user {provider}.{cred.key} -"


def resolve(decl: Declaration, settings: Any, environ: Mapping[str, str] | None = None) -> Resolved:
    """`decl`'s credential in the documented order (`settings`: its config table, an instance
    of `decl.settings`), or a one-line error saying how to set it."""
    cred, provider = _credential(decl), decl.name
    environ = os.environ if environ is None else environ
    vp_env = f"VP_{provider.upper()}_{cred.key.upper()}"
    for name in (cred.env, vp_env):
        if environ.get(name):
            return Resolved(environ[name].strip(), f"{name} from the environment")
    # The config layer put VP_<PROVIDER>_<KEY> into settings too; it was handled above, so a
    # value here is the user file's (project files may not hold secrets).
    stored = getattr(settings, cred.key)
    if stored:
        where = _tilde(paths.user_config_file())
        return Resolved(str(stored), f"[{provider}] {cred.key} in {where}")
    for f in cred.files:
        value = f.read()
        if value:
            return Resolved(value, _tilde(f.resolve_path()))
    first = cred.files[0].path.replace("$XDG_CONFIG_HOME", "~/.config") if cred.files else ""
    also = f"; {first} is read too" if first else ""
    raise VpError(
        f"no {decl.provider} {cred.what} found",
        hint=f"run `{store_command(provider, cred)}` (reads it from stdin) "
        f"or export {cred.env}{also}",
    )


def rejected(decl: Declaration, used: Resolved, detail: str = "") -> VpError:
    """The provider refused the credential: name the source it came from (never the value)."""
    cred, provider = _credential(decl), decl.name
    if used.source.endswith("from the environment"):
        name = used.source.split()[0]
        hint = (
            f"the environment wins over stored keys: fix or unset {name}; "
            f"to store one run `{store_command(provider, cred)}`"
        )
    else:
        hint = f"replace it: run `{store_command(provider, cred)}` (reads it from stdin)"
    tail = f": {detail}" if detail else ""
    return VpError(f"{used.source} was rejected by {decl.provider}{tail}", hint=hint)


def _credential(decl: Declaration) -> Credential:
    if decl.credential is None:
        raise TypeError(f"{decl.name} declares no credential")
    return decl.credential
