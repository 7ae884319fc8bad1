"""Provider registry. Every module in this package that defines `DECLARATION` is a provider:
adding one is adding its file. Modules are imported only when their declaration or platform is
first needed, and the cloud SDKs only inside the providers' methods, so `vp --help` stays fast.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Any

from vp.errors import UsageError
from vp.platforms.base import Platform
from vp.platforms.declare import Declaration
from vp.settings import of_table

# Modules of this package that are shared machinery, not providers.
_MACHINERY = {"base", "cloud", "common", "declare", "gpus"}

# The providers, in the order vp lists them: the embedded default first, then by kind.
_ORDER = ("local", "ssh", "vast", "runpod", "thunder", "aws", "gce")


def _discover() -> tuple[str, ...]:
    here = os.path.dirname(__file__)  # pkgutil would cost an import on every vp call
    found = [
        n[:-3]
        for n in os.listdir(here)
        if n.endswith(".py") and n[:-3].isidentifier() and n[:-3] not in _MACHINERY | {"__init__"}
    ]
    return tuple(sorted(found, key=lambda n: (_ORDER.index(n) if n in _ORDER else 99, n)))


PROVIDERS: tuple[str, ...] = _discover()
NAMES = (*PROVIDERS, "auto")


@functools.cache
def declaration(name: str) -> Declaration:
    """What provider `name` is. Imports its module (not its SDK)."""
    if name not in PROVIDERS:
        _unknown(name)
    module = _module(name)
    found = getattr(module, "DECLARATION", None)
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
