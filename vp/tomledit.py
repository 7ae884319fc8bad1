"""Change one key of a TOML file in place: every other byte (comments, blank lines, order, quoting,
line endings) stays as the person wrote it.

`vp config set` used to parse and re-dump the whole file, which deleted every comment in a
project's vp.toml. There is no format-preserving TOML library among vp's dependencies, so this is
a small scanner that finds where each `key = value` statement and `[table]` header sits; the edit
is then a splice of one value, one new line, or a new table at the end. The result is parsed again
and must equal the old data with just that key changed, or nothing is written.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Any

from vp.errors import ConfigError

_KEY_PART = r"(?:\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'|[A-Za-z0-9_-]+)"
_DOTTED_KEY = re.compile(rf"[ \t]*({_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART})*)[ \t]*=[ \t]*")
_BARE = re.compile(r"[A-Za-z0-9_-]+")


@dataclass
class _Entry:
    table: tuple[str, ...]  # the [header] the statement sits under
    path: tuple[str, ...]  # table + dotted key
    value_start: int
    value_end: int
    line_end: int  # index of the newline ending the statement (or len(text))


def _key_path(dotted: str) -> tuple[str, ...]:
    parts = re.findall(_KEY_PART, dotted)
    return tuple(tomllib.loads(f"k = {p}")["k"] if p[0] in "\"'" else p for p in parts)


def _value_end(text: str, i: int) -> int:
    """Index just past the TOML value that starts at `i` (strings, arrays, inline tables)."""
    n, depth = len(text), 0
    while i < n:
        c = text[i]
        if text.startswith(('"""', "'''"), i):
            quote, j = text[i : i + 3], i + 3
            while True:
                k = text.find(quote, j)
                if k < 0:
                    return n
                slashes = len(text[j:k]) - len(text[j:k].rstrip("\\"))
                if quote == '"""' and slashes % 2:
                    j = k + 1
                    continue
                i = k + 3
                while i < n and text[i] == quote[0]:  # up to two quotes belong to the content
                    i += 1
                break
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] not in (c, "\n"):
                j += 2 if (c == '"' and text[j] == "\\") else 1
            i = j + 1
        elif c in "[{":
            depth += 1
            i += 1
            continue
        elif c in "]}":
            depth -= 1
            i += 1
        elif c == "#" and depth > 0:
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
            continue
        elif depth == 0 and c in "#\n":
            return len(text[:i].rstrip(" \t\r")) if i else i
        else:
            i += 1
            continue
        if depth == 0:
            return i
    return len(text.rstrip(" \t\r\n"))


def _scan(text: str) -> tuple[list[_Entry], dict[tuple[str, ...], int]]:
    """Every key/value statement, and for every [table] header the end of its line."""
    entries: list[_Entry] = []
    headers: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    pos, n = 0, len(text)
    while pos < n:
        eol = text.find("\n", pos)
        eol = n if eol < 0 else eol
        stripped = text[pos:eol].strip()
        if not stripped or stripped.startswith("#"):
            pos = eol + 1
            continue
        if stripped.startswith("[["):
            # an array of tables: its keys are never vp's; keep them out of any match
            table = ("[[", *_key_path(stripped.strip("[]# \t\r")))
            pos = eol + 1
            continue
        if stripped.startswith("["):
            name = stripped[1:].split("]", 1)[0]
            table = _key_path(name)
            headers[table] = eol
            pos = eol + 1
            continue
        m = _DOTTED_KEY.match(text, pos)
        if not m:
            raise ValueError(f"cannot read the statement at offset {pos}")
        start = m.end()
        end = _value_end(text, start)
        line_end = text.find("\n", end)
        line_end = n if line_end < 0 else line_end
        entries.append(_Entry(table, (*table, *_key_path(m.group(1))), start, end, line_end))
        pos = line_end + 1
    return entries, headers


def render_value(value: Any) -> str:
    """A value as TOML text; lists stay on one line like a person writes them."""
    if isinstance(value, list):
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    import tomli_w

    return tomli_w.dumps({"k": value})[len("k = ") :].rstrip("\n")


def _render_key(key: str) -> str:
    return key if _BARE.fullmatch(key) else render_value(key)


def set_key(text: str, table: tuple[str, ...], key: str, value: Any, source: str) -> str:
    """`text` with `table.key = value`: the value replaced where it stands, else a line added at
    the end of the table, else the table added at the end of the file."""
    try:
        before = tomllib.loads(text)
        entries, headers = _scan(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}", hint="fix the file first") from None
    newline = "\r\n" if "\r\n" in text else "\n"
    rendered = render_value(value)
    path = (*table, key)
    found = [e for e in entries if e.path == path]
    if found:
        e = found[-1]
        new = text[: e.value_start] + rendered + text[e.value_end :]
    elif table in headers:
        after = max([headers[table], *(e.line_end for e in entries if e.table == table)])
        line = f"{_render_key(key)} = {rendered}{newline}"
        if after >= len(text):
            new = text + newline + line
        else:
            new = text[: after + 1] + line + text[after + 1 :]
    else:
        header = ".".join(_render_key(p) for p in table)
        new = text
        if new and not new.endswith("\n"):
            new += newline
        if new.strip() and not new.endswith(newline * 2):
            new += newline
        new += f"[{header}]{newline}{_render_key(key)} = {rendered}{newline}"

    expected = before
    node = expected
    for part in table:
        node = node.setdefault(part, {})
    node[key] = value
    try:
        after_data = tomllib.loads(new)
    except tomllib.TOMLDecodeError:
        after_data = None
    if after_data != expected:
        raise ConfigError(
            f"{source}: cannot change {'.'.join(path)} without rewriting the file (it is written "
            "as an inline table or dotted keys)",
            hint=f"edit {source} by hand",
        )
    return new
