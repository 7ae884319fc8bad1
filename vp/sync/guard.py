"""Is this folder really a project? vp uploads the folder it finds, so run from `/` or `$HOME`
it would ship the whole disk, or every key on the machine, to a host someone else runs.

`/` and `$HOME` (or a folder above it) are refused unless a vp.toml (or `--config`) there says
otherwise, and the first upload of a big folder that is neither configured nor a git checkout
asks first.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from vp.config import Config
from vp.errors import UsageError
from vp.output import human_size


def check_root(cfg: Config) -> None:
    """Refuse `/`, `$HOME` (and any folder holding it) as the synced folder unless a project
    file is there."""
    if cfg.project_file is not None:
        return
    root = cfg.project_root.resolve()
    home = Path.home().resolve()
    if root == Path(root.anchor):
        what = f"{root}: it is the whole disk, not a project"
    elif root == home:
        what = f"{root}: it is your home folder, not a project"
    elif home.is_relative_to(root):
        what = f"{root}: it holds your home folder ({home}), not a project"
    else:
        return
    raise UsageError(
        f"refusing to sync {what}",
        hint="cd into the project folder (or run `vp init` there to write a vp.toml)",
    )


def _is_checkout(root: Path) -> bool:
    """A git checkout, or a folder inside one (a home that is a dotfiles repo doesn't count)."""
    home = Path.home().resolve()
    for directory in (root, *root.parents):
        if directory == home and directory != root:
            return False
        if (directory / ".git").exists():
            return True
    return False


def confirm_first_upload(cfg: Config, files: int, nbytes: int, *, assume_yes: bool) -> None:
    """Ask before the first upload of a big folder with neither vp.toml nor .git; with no
    terminal to ask, refuse and name the command that says yes."""
    if assume_yes or cfg.project_file is not None:
        return
    max_files = cfg.sync.confirm_files
    max_gb = cfg.sync.confirm_gb
    big = (max_files and files > max_files) or (max_gb and nbytes > max_gb * 1e9)
    root = cfg.project_root.resolve()
    if not big or _is_checkout(root):
        return
    what = f"{files} files ({human_size(nbytes)}) from {root}"
    why = "it has no vp.toml and no .git, so it may not be a project"
    retry = "vp --yes " + shlex.join(sys.argv[1:])
    hint = f"cd into the project folder, or upload it anyway with: {retry}"
    if not sys.stdin.isatty():
        raise UsageError(f"not uploading {what} unasked: {why}", hint=hint)
    import typer

    sys.stderr.write(f"vp: about to upload {what}; {why}.\n")
    if not typer.confirm("Upload it?", default=False, err=True):
        raise UsageError(f"not uploading {what}", hint=hint)
