"""Provider registry. Every module in this package that defines `DECLARATION` is a provider:
adding one is adding its file. Modules are imported only when their declaration or platform is
first needed, and the cloud SDKs only inside the providers' methods, so `vp --help` stays fast.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

from vp.errors import UsageError
from vp.idle import VM_SHUTDOWN
from vp.platforms.base import Platform
from vp.platforms.cloud import CloudSettings, Declaration, Ownership
from vp.settings import of_table, positive, setting

# Modules of this package that are shared machinery, not providers.
_MACHINERY = {"base", "cloud", "common", "gpus"}


@dataclass(frozen=True)
class ThunderSettings(CloudSettings):
    """[thunder]"""

    token: str | None = None
    url: str | None = setting(check="endpoint")  # user file or TNR_API_URL only
    template: str | None = None
    mode: str | None = None
    user: str | None = setting(check="user_name")
    snapshot_timeout: float = positive(1800)  # seconds a `vp clone` waits for its snapshot


# Until thunder.py declares itself (it is being reworked), its declaration lives here.
_PENDING_DECLARATIONS = {
    "thunder": Declaration(
        name="thunder",
        kind="vm",
        ownership=Ownership.STATE,  # no labels on Thunder: only what vp's state recorded making
        settings=ThunderSettings,
        secrets=("token",),
        idle_stop=VM_SHUTDOWN,
        honours=frozenset({"gpu", "gpus", "max_price", "disk_gb", "cpus"}),
        endpoint_env="TNR_API_URL",
        endpoint_key="url",
        noun="Thunder Compute instance",
        provider="Thunder Compute",
        destroy_words=("delete", "deleted"),
    )
}

# The providers, in the order vp lists them: the embedded default first, then by kind.
_ORDER = ("local", "ssh", "vast", "runpod", "thunder", "aws", "gce")


def _discover() -> tuple[str, ...]:
    found = [m.name for m in pkgutil.iter_modules(__path__) if m.name not in _MACHINERY]
    return tuple(sorted(found, key=lambda n: (_ORDER.index(n) if n in _ORDER else 99, n)))


PROVIDERS: tuple[str, ...] = _discover()
NAMES = (*PROVIDERS, "auto")


@functools.cache
def declaration(name: str) -> Declaration:
    """What provider `name` is. Imports its module (not its SDK)."""
    if name not in PROVIDERS:
        _unknown(name)
    module = _module(name)
    found = getattr(module, "DECLARATION", None) or _PENDING_DECLARATIONS.get(name)
    if not isinstance(found, Declaration):
        raise TypeError(f"vp.platforms.{name} defines no DECLARATION")
    return found


def declarations() -> list[Declaration]:
    return [declaration(name) for name in PROVIDERS]


def kind(name: str) -> str:
    """ "local", "ssh", "vm" or "container"; `auto` picks among the clouds, so "cloud"."""
    return "cloud" if name == "auto" else declaration(name).kind


def clouds() -> tuple[str, ...]:
    """The providers that rent hosts (not `local`, not `ssh`)."""
    return tuple(d.name for d in declarations() if d.kind in ("vm", "container"))


def _unknown(name: str) -> None:
    import difflib

    near = difflib.get_close_matches(name, NAMES, n=1)
    hint = f"did you mean '{near[0]}'?" if near else f"choose one of: {', '.join(NAMES)}"
    raise UsageError(f"unknown platform '{name}'", hint=hint)


def _module(name: str) -> Any:
    try:
        return importlib.import_module(f"vp.platforms.{name}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("vp."):
            raise UsageError(f"platform '{name}' is not available in this build of vp") from exc
        raise


def get_platform(name: str, settings: Any = None) -> Platform:
    """Provider `name`, set up from its config table (`Config.section(name)`; a dict of the
    keys to set also does, for tests and scripts)."""
    if name not in PROVIDERS:
        _unknown(name)
    decl = declaration(name)
    table = settings if decl.kind == "ssh" else of_table(decl.settings, settings)
    return _module(name).create_platform(table)


def __getattr__(attr: str) -> Any:
    if attr == "CLOUDS":  # computed on first use: it imports every provider module
        return clouds()
    raise AttributeError(attr)
