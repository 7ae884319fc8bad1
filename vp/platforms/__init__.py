"""Provider registry. Modules are imported only when a platform is used: `vp --help` stays fast."""

from __future__ import annotations

import importlib
from typing import Any

from vp.errors import UsageError
from vp.platforms.base import Platform

# name -> "module:factory". Each factory takes the platform's settings table from the user
# config (e.g. `[vast]`, possibly empty) and returns a Platform.
REGISTRY: dict[str, str] = {
    "local": "vp.platforms.local:create_platform",
    "ssh": "vp.platforms.ssh:create_platform",
    "vast": "vp.platforms.vast:create_platform",
    "runpod": "vp.platforms.runpod:create_platform",
    "thunder": "vp.platforms.thunder:create_platform",
    "aws": "vp.platforms.aws:create_platform",
    "gce": "vp.platforms.gce:create_platform",
}

CLOUDS = ("vast", "runpod", "thunder", "aws", "gce")
NAMES = (*REGISTRY, "auto")


def get_platform(name: str, settings: dict[str, Any] | None = None) -> Platform:
    if name not in REGISTRY:
        import difflib

        near = difflib.get_close_matches(name, NAMES, n=1)
        hint = f"did you mean '{near[0]}'?" if near else f"choose one of: {', '.join(NAMES)}"
        raise UsageError(f"unknown platform '{name}'", hint=hint)
    module_name, factory = REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("vp."):
            raise UsageError(f"platform '{name}' is not available in this build of vp") from exc
        raise
    return getattr(module, factory)(settings or {})
