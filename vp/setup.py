"""`[setup]`: install a project's dependencies on a host once per change, not on every run.

The digest of the setup command and of its inputs' contents (the lockfiles and requirement
files it reads) is computed here, from the files vp syncs; the host keeps the digest of the last
setup that succeeded in `~/.vp/setup/<workdir key>`, so a new host (or another workdir) runs it
once. The comparison happens inside the run's own wrapper (vp.remote.SetupStep): a run whose
setup is current costs no extra ssh session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from vp.sync.ignore import IgnoreRules

# What a setup typically reads: Python, conda, Node, Rust, Go and Ruby dependency files.
DEFAULT_INPUTS = [
    "requirements*.txt",
    "requirements/*.txt",
    "constraints*.txt",
    "pyproject.toml",
    "poetry.lock",
    "uv.lock",
    "pdm.lock",
    "Pipfile",
    "Pipfile.lock",
    "setup.py",
    "setup.cfg",
    "environment.yml",
    "environment.yaml",
    "conda-lock.yml",
    "package.json",
    "package-lock.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "Cargo.lock",
    "go.sum",
    "Gemfile.lock",
]


def inputs(cfg) -> list[str]:
    configured = cfg.setup.inputs
    return list(DEFAULT_INPUTS if configured is None else configured)


def input_files(patterns: list[str], synced: Iterable[str]) -> list[str]:
    """The synced paths (posix, relative) that the gitignore-style `patterns` match."""
    if not patterns:
        return []
    rules = IgnoreRules(patterns, "[setup] inputs")
    return sorted(p for p in synced if rules.ignored(p))


def digest(command: str, root: Path, files: Iterable[str], image: str = "") -> str:
    """sha256 over the command, the image it runs in (Docker) and each input's path and bytes."""
    h = hashlib.sha256(b"vp-setup-1\0")
    for part in (command, image):
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    for rel in files:
        try:
            data = (root / rel).read_bytes()
        except OSError:  # vanished since the sync, or a link to a directory
            continue
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def workdir_key(workdir: str) -> str:
    """Names the host's record for one workdir (a path is no file name)."""
    return hashlib.sha256(workdir.encode("utf-8", "surrogateescape")).hexdigest()[:24]
