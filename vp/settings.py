"""A config table is a frozen dataclass: its fields are the table's keys, types and defaults.

vp's own tables live in vp/config.py, each provider's in its own module (its `Declaration`
names the class), so a key, its type, its default and its range rule are written once. The
validation table, unknown-key suggestions, `vp config show` and the `VP_SECTION_KEY`
environment variables are all derived from these classes (`keys`).

Field metadata carries the rule a value is held to beyond its type (`check`): a timeout that
must not be negative, a user name that reaches cloud-init, an endpoint that receives an API key.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

# The rules `config.check_value` knows, by name.
Check = Literal["positive", "non_negative", "user_name", "endpoint", "registry", "ssh_target"]


def setting(default: Any = None, check: Check | None = None) -> Any:
    """A field with a rule beyond its type (`poll_interval: float | None = setting(check=...)`)."""
    if isinstance(default, list):
        raise TypeError("a list default is mutable: use a tuple")
    return dataclasses.field(default=default, metadata={"check": check} if check else {})


def positive(default: Any = None) -> Any:
    """A number that must be greater than 0 (intervals, sizes)."""
    return setting(default, "positive")


def non_negative(default: Any = None) -> Any:
    """A number that must be 0 or more (durations where 0 means "now" or "off")."""
    return setting(default, "non_negative")


class Key(NamedTuple):
    """One key of a table as the loader checks it."""

    expected: type | tuple[type, ...]  # what isinstance must accept; `list` for a string list
    default: Any
    check: Check | None


@functools.cache
def keys(table: type) -> dict[str, Key]:
    """The keys of a table class, in declaration order."""
    hints = typing.get_type_hints(table)
    return {
        f.name: Key(_expected(hints[f.name]), f.default, f.metadata.get("check"))
        for f in dataclasses.fields(table)
    }


def _expected(hint: Any) -> type | tuple[type, ...]:
    """`str | None` -> str, `float` -> (int, float), `tuple[str, ...]` -> list (TOML's arrays)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"a config key has one type besides None, not {hint}")
        hint = args[0]
    if hint is float:
        return (int, float)
    if typing.get_origin(hint) is tuple:
        return list
    if hint in (str, int, bool):
        return hint
    raise TypeError(f"config keys are str, int, float, bool or tuple[str, ...], not {hint}")


def build(table: type, values: Mapping[str, Any]) -> Any:
    """An instance of `table` from checked values (lists become tuples: the table is frozen)."""
    return table(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def of_table(table: type, given: Any) -> Any:
    """`given` as an instance of `table`. The config passes one; tests and scripts that make a
    platform directly may pass a dict of the keys they set."""
    if given is None:
        return table()
    if isinstance(given, Mapping):
        return build(table, {k: v for k, v in given.items() if v is not None})
    if not isinstance(given, table):
        raise TypeError(f"expected {table.__name__}, got {type(given).__name__}")
    return given


def as_dict(section: Any) -> dict[str, Any]:
    """A table as plain data (`vp config show`, `--output json`): tuples back to lists."""
    return {
        f.name: list(v) if isinstance(v := getattr(section, f.name), tuple) else v
        for f in dataclasses.fields(section)
    }


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """The table of a provider with nothing to set (`local`, and `ssh`, whose [ssh] is vp's)."""
