"""Test prerequisites: skipped with the reason on a developer's machine, a failure in CI.

CI (CI=true) promises every tool and package the suite drives (scripts/test installs them);
there a missing one is a broken environment, and a skip would turn the tests that need it
green without running them. Elsewhere a missing prerequisite skips, saying what to install.

    pytestmark = requires(shutil.which("ip") is not None, "needs iproute2")   # module / test
    vastai = require_module("vastai")                                          # module level
    require(proc.returncode == 0, f"cannot mount a tmpfs: {proc.stderr}")      # in a test
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

MARKER = "vp_requires"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere; usable in a test, a fixture or at module level."""
    if in_ci():
        pytest.fail(f"required test dependency missing in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(condition: object, reason: str) -> None:
    """`missing(reason)` unless `condition` holds."""
    if not condition:
        missing(reason)


def require_module(name: str, reason: str | None = None) -> ModuleType:
    """Import `name`, or `missing(...)`: the CI-strict `pytest.importorskip`."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(reason or f"{name} is not installed ({exc})")


def requires(condition: object, reason: str) -> pytest.MarkDecorator:
    """A mark (for a test, a class or `pytestmark`) checked at setup by tests/conftest.py."""
    return getattr(pytest.mark, MARKER)(bool(condition), reason=reason)


def check_marks(item: pytest.Item) -> None:
    """Apply every `requires(...)` mark on `item` (called from pytest_runtest_setup)."""
    for mark in item.iter_markers(name=MARKER):
        require(mark.args[0], mark.kwargs["reason"])
