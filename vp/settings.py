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
Check = Literal[
    "positive",
    "non_negative",
    "user_name",
    "endpoint",
    "registry",
    "ssh_target",
    "secret_names",
    "app_ports",
    "download_from",
    "duration",
    "fallback_list",
    "checkpoint_dir",
    "cloud_zone",
    "cloud_id",
]
# What a key holding one name or a fallback list of names accepts (`gpu = ["H100", "A100"]`).
STR_OR_LIST = (str, list)
# How layers combine for a key: the last one set wins, or the lowest value of any layer (a
# cap a project file may tighten but never loosen).
Merge = Literal["last", "lowest"]


def setting(default: Any = None, check: Check | None = None, merge: Merge = "last") -> Any:
    """A field with a rule beyond its type (`poll_interval: float | None = setting(check=...)`)."""
    if isinstance(default, list | dict):
        raise TypeError("a list or dict default is mutable: use a tuple or a MappingProxyType")
    metadata = {"check": check, "merge": merge}
    if isinstance(default, Mapping):  # a table of its own ([ui] apps): read-only, one per use
        frozen = dict(default)
        return dataclasses.field(
            default_factory=lambda: types.MappingProxyType(frozen), metadata=metadata
        )
    return dataclasses.field(default=default, metadata=metadata)


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
    merge: Merge = "last"


@functools.cache
def keys(table: type) -> dict[str, Key]:
    """The keys of a table class, in declaration order."""
    hints = typing.get_type_hints(table)
    return {
        f.name: Key(
            _expected(hints[f.name]),
            _default(f),
            f.metadata.get("check"),
            f.metadata.get("merge", "last"),
        )
        for f in dataclasses.fields(table)
    }


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _expected(hint: Any) -> type | tuple[type, ...]:
    """`str | None` -> str, `float` -> (int, float), `tuple[str, ...]` -> list (TOML's arrays),
    `Mapping[str, int]` -> dict (an inline table)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 2 and str in args and any(typing.get_origin(a) is tuple for a in args):
            return STR_OR_LIST  # `str | tuple[str, ...]`: one name or a list of them
        if len(args) != 1:
            raise TypeError(f"a config key has one type besides None, not {hint}")
        hint = args[0]
    if hint is float:
        return (int, float)
    if typing.get_origin(hint) is tuple:
        return list
    if typing.get_origin(hint) in (Mapping, dict):
        return dict
    if hint in (str, int, bool):
        return hint
    raise TypeError(f"config keys are str, int, float, bool, tuple or Mapping, not {hint}")


def build(table: type, values: Mapping[str, Any]) -> Any:
    """An instance of `table` from checked values. Lists become tuples and tables read-only
    mappings: the table is frozen all the way down."""
    return table(**{k: _frozen(v) for k, v in values.items()})


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return types.MappingProxyType(dict(value))
    return value


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
    return {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """The table of a provider with nothing to set (`local`, and `ssh`, whose [ssh] is vp's)."""
