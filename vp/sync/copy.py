"""`vp upload` / `vp download`: single files or folders outside the sync rules, over the
shared connection, with the download conflict rule (never clobber a local file)."""

from __future__ import annotations

import filecmp
import os
import posixpath
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vp.errors import UsageError, VpError
from vp.sync.transfer import REMOTE_SUFFIX, rsync_error
from vp.transport import Transport


def _remote_rsync_path(transport: Transport, workdir: str, rel: str) -> str:
    """rsync's path for `rel` on the host: absolute, ~/-relative, or under the workdir."""
    if rel.startswith("/"):
        return rel
    if rel == "~" or rel.startswith("~/"):
        return rel[2:] or "."
    return transport.rsync_workdir(workdir) + rel


def _remote_sh(transport: Transport, workdir: str, rel: str) -> str:
    """The same path as one quoted shell word."""
    if rel.startswith("/") or rel == "~" or rel.startswith("~/"):
        return transport.workdir_sh(rel)
    return transport.workdir_sh(workdir) + "/" + shlex.quote(rel)


def _rsync(transport: Transport, argv: list[str], what: str) -> None:
    transport.ensure()
    proc = subprocess.run(
        [*transport.rsync_argv(), *argv],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    if proc.returncode not in (0, 24):
        err = proc.stderr.decode(errors="replace")
        if what == "download" and proc.returncode == 23 and "No such file or directory" in err:
            raise VpError(f"nothing at {argv[-2].split(':', 1)[-1]} on {transport.label}")
        raise rsync_error(proc, transport.label, what)


def copy_up(
    transport: Transport, root: Path, workdir: str, src: str, dst: str | None
) -> tuple[str, int]:
    """Copy a local file or folder to the host, outside the sync rules. Relative DSTs are
    under the workdir; the default is SRC's path relative to the project (else its name).
    Returns the remote path and the bytes sent."""
    source = Path(src)
    if not os.path.lexists(source):
        raise UsageError(f"no such file or folder: {src}")
    absolute = Path(os.path.abspath(source))
    is_dir = absolute.is_dir() and not absolute.is_symlink()
    if dst is None:
        try:
            rel = absolute.relative_to(root).as_posix()
        except ValueError:
            rel = absolute.name
        if rel in ("", "."):
            raise UsageError("that is the whole project", hint="use `vp sync` for it")
    elif dst.endswith("/") and not is_dir:
        rel = dst.rstrip("/") + "/" + absolute.name if dst.strip("/") else absolute.name
        if dst.startswith("/") and not rel.startswith("/"):
            rel = "/" + rel
    else:
        rel = dst.rstrip("/") or dst
    target_dir = rel if is_dir else (posixpath.dirname(rel) or ".")
    argv = ["-a", "--protect-args"]
    if transport.is_local:
        Path(_remote_rsync_path(transport, workdir, target_dir)).mkdir(parents=True, exist_ok=True)
    else:
        mkdir = f"mkdir -p {_remote_sh(transport, workdir, target_dir)} && rsync"
        argv.append(f"--rsync-path={mkdir}")
    remote = _remote_rsync_path(transport, workdir, rel)
    if is_dir:
        argv += [str(absolute) + "/", transport.remote_path(remote.rstrip("/") + "/")]
        size = sum(f.stat().st_size for f in absolute.rglob("*") if f.is_file())
    else:
        argv += [str(absolute), transport.remote_path(remote)]
        size = absolute.lstat().st_size
    _rsync(transport, argv, "upload")
    return rel, size


@dataclass
class Fetched:
    placed: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # kept local; host's copy at NAME.vp-remote
    unchanged: int = 0

    def to_dict(self) -> dict:
        return {"fetched": self.placed, "conflicts": self.conflicts, "unchanged": self.unchanged}


def _same(a: Path, b: Path) -> bool:
    if a.is_symlink() or b.is_symlink():
        return a.is_symlink() and b.is_symlink() and os.readlink(a) == os.readlink(b)
    return a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False)


def place(src: Path, dest: Path, *, force: bool, result: Fetched, shown: Path) -> None:
    """Move the staged `src` to `dest` file by file (each rename is atomic). An existing,
    different local file is kept unless `force`; the host's copy lands as NAME.vp-remote."""
    if src.is_dir() and not src.is_symlink():
        if os.path.lexists(dest) and not (dest.is_dir() and not dest.is_symlink()):
            _conflict(src, dest, force=force, result=result, shown=shown)
            return
        dest.mkdir(parents=True, exist_ok=True)
        for child in sorted(src.iterdir()):
            place(child, dest / child.name, force=force, result=result, shown=shown / child.name)
        return
    if not os.path.lexists(dest):
        os.replace(src, dest)
        result.placed.append(str(shown))
    elif _same(src, dest):
        result.unchanged += 1
    else:
        _conflict(src, dest, force=force, result=result, shown=shown)


def _conflict(src: Path, dest: Path, *, force: bool, result: Fetched, shown: Path) -> None:
    if force:
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(src, dest)
        result.placed.append(str(shown))
        return
    side = dest.with_name(dest.name + REMOTE_SUFFIX)
    if side.is_dir() and not side.is_symlink():
        shutil.rmtree(side)
    os.replace(src, side)
    result.conflicts.append(str(shown))


def copy_down(
    transport: Transport,
    workdir: str,
    src: str,
    dst: Path,
    *,
    force: bool,
) -> Fetched:
    """Fetch a file or folder from the host into `dst`, never clobbering a local file unless
    `force`: rsync writes a staging dir beside `dst`, then each file is renamed into place."""
    rel = src.rstrip("/") or src
    if not rel:
        raise UsageError("download what?", hint="e.g. vp download outputs/")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".vp-dl-", dir=dst.parent))
    try:
        remote = _remote_rsync_path(transport, workdir, rel)
        _rsync(
            transport,
            ["-a", "--protect-args", transport.remote_path(remote), str(staging) + "/"],
            "download",
        )
        fetched = staging / posixpath.basename(remote.rstrip("/"))
        if not os.path.lexists(fetched):
            entries = list(staging.iterdir())
            if len(entries) != 1:
                raise VpError(f"nothing at {rel} on {transport.label}")
            fetched = entries[0]
        result = Fetched()
        place(fetched, dst, force=force, result=result, shown=Path(dst.name))
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)
