"""Which files are synced: gitignore rules (via pathspec) from built-in defaults, `.gitignore`
(when `sync.use_gitignore`), `.vpignore` and `sync.extra_ignore`, in that order, last match wins.

Rules are applied as one ordered spec rather than a set of `--exclude`s, so `!` negation works,
and ignored directories are pruned while walking, so a 2 GB `.venv` costs nothing.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pathspec

from vp.errors import ConfigError

# What no one wants shipped to a GPU box: VCS metadata, environments, caches, and secrets.
DEFAULT_RULES = [
    ".git/",
    ".hg/",
    ".svn/",
    ".venv/",
    "venv/",
    ".tox/",
    ".nox/",
    "__pycache__/",
    "*.pyc",
    "*.pyo",
    "node_modules/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".ipynb_checkpoints/",
    ".DS_Store",
    ".vp/",
    ".vp-dl-*/",
    "*.vp-remote",
    # secrets: listed explicitly with `!name` in .vpignore if you really mean to sync them
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_ed25519*",
    "id_ecdsa*",
    ".netrc",
    ".pypirc",
    ".aws/",
    ".ssh/",
    ".docker/config.json",
    "credentials.json",
    "*.tfstate",
]

# Directory names pruned on the host when listing what a run changed (cheap `find -prune`).
PRUNE_DIRS = [".git", ".hg", ".svn", ".venv", "node_modules", "__pycache__", ".mypy_cache"]


@dataclass(frozen=True)
class Entry:
    size: int
    mtime_ns: int
    is_link: bool

    def as_list(self) -> list:
        return [self.size, self.mtime_ns, int(self.is_link)]


class IgnoreRules:
    def __init__(self, lines: Iterable[str], source: str = "ignore rules"):
        self.lines = [line for line in lines]
        try:
            self.spec = pathspec.GitIgnoreSpec.from_lines(self.lines)
        except Exception:  # noqa: BLE001 - pathspec raises ValueError or re.error
            raise _bad_line(self.lines, source) from None
        self._any = _any_exclude(self.spec)

    def _match(self, path: str) -> bool:
        """`spec.match_file`, behind a one-regex prefilter: a path no excluding pattern
        matches cannot be ignored, and that is most paths (10k files: 96 -> 51 ms)."""
        return (
            self._any is not None
            and self._any.match(path) is not None
            and (self.spec.match_file(path))
        )

    @classmethod
    def for_project(
        cls, root: Path, extra: Iterable[str] = (), use_gitignore: bool = False
    ) -> IgnoreRules:
        lines = list(DEFAULT_RULES)
        sources = [".gitignore"] if use_gitignore else []
        sources.append(".vpignore")
        for name in sources:
            path = root / name
            if path.is_file():
                rules = read_rules(path)
                cls(rules, str(path))  # name the file and line of a bad pattern
                lines += rules
        lines += cls(extra, "[sync] extra_ignore").lines
        return cls(lines + _own_dirs(root))

    def ignored(self, relpath: str, is_dir: bool = False) -> bool:
        """Is `relpath` (posix, relative to the root) excluded, itself or through a parent dir?"""
        parts = relpath.split("/")
        for i in range(1, len(parts)):
            if self._match("/".join(parts[:i]) + "/"):
                return True
        return self._match(relpath + ("/" if is_dir else ""))

    def walk(self, root: Path) -> dict[str, Entry]:
        """Every synced file and symlink under `root`, pruning ignored directories."""
        out: dict[str, Entry] = {}
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            directory = os.path.join(root, rel_dir) if rel_dir else str(root)
            try:
                entries = list(os.scandir(directory))
            except (PermissionError, FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if not self._match(rel + "/"):
                        stack.append(rel)
                elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    if not self._match(rel):
                        out[rel] = Entry(st.st_size, st.st_mtime_ns, stat.S_ISLNK(st.st_mode))
        return out


def _bad_line(lines: list[str], source: str) -> ConfigError:
    for number, line in enumerate(lines, 1):
        try:
            pathspec.GitIgnoreSpec.from_lines([line])
        except Exception:  # noqa: BLE001
            return ConfigError(
                f"{source}: line {number}: invalid pattern {line!r}",
                hint="use gitignore syntax: a lone ! or a trailing backslash is not a pattern",
            )
    return ConfigError(f"{source}: invalid patterns")


def _own_dirs(root: Path) -> list[str]:
    """vp's own state, data and config folders when they sit inside the project (a project at
    $HOME): never synced, and last so no `!` rule can bring them back. The local platform's
    workspace lives there, so syncing it would copy the project into itself."""
    from vp import paths

    rules = []
    resolved = root.resolve()
    for own in (paths.state_dir(), paths.data_dir(), paths.config_dir()):
        try:
            rel = own.resolve().relative_to(resolved)
        except ValueError:
            continue
        if rel.parts:
            rules.append("/" + glob_escape(rel.as_posix()) + "/")
    return rules


def glob_escape(text: str) -> str:
    """A literal path as a gitignore pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def _any_exclude(spec: pathspec.GitIgnoreSpec) -> re.Pattern[str] | None:
    """One regex matching whatever any excluding (non-`!`) pattern matches."""
    parts = []
    for pattern in spec.patterns:
        regex = getattr(pattern, "regex", None)
        if pattern.include and regex is not None:
            parts.append("(?:" + re.sub(r"\(\?P<\w+>", "(?:", regex.pattern) + ")")
    return re.compile("|".join(parts)) if parts else None


def read_rules(path: Path) -> list[str]:
    """Lines of an ignore file. Undecodable bytes are replaced, not fatal: it's a filter."""
    return path.read_bytes().decode("utf-8", errors="replace").splitlines()
