"""`vp upload` / `vp download`: single files or folders outside the sync rules, over the
shared connection, with the download conflict rule (never clobber a local file).

Both go by rsync or, on a host without it, by tar (`Transport.copy` chooses, as for sync); a
download lands in staging either way and is placed by the same rules."""

from __future__ import annotations

import os
import posixpath
import shlex
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vp.errors import UsageError, VpError
from vp.sync import tarpipe
from vp.sync.place import DirWalker, Unsafe, lstat_at, same_at, sanitize_staged
from vp.sync.transfer import REMOTE_SUFFIX, SAFE_FETCH, rsync_error
from vp.transport import Transport
from vp.ui import one_line


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


def _copy(transport: Transport, argv: list[str], what: str, tar: Callable[[], None]) -> None:
    transport.ensure()

    def rsync() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*transport.rsync_argv(), *argv],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    proc = transport.copy(rsync, tar)
    if proc is not None and proc.returncode not in (0, 24):
        err = proc.stderr.decode(errors="replace")
        if what == "download" and proc.returncode == 23 and "No such file or directory" in err:
            raise VpError(f"nothing at {argv[-2].split(':', 1)[-1]} on {transport.label}")
        raise rsync_error(proc, transport.label, what)


def _tar_up(transport: Transport, source: Path, arcname: str, dest_sh: str) -> None:
    """`source` (a file or a folder's contents: arcname ".") into the host's `dest_sh`."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            transport.exec_argv(f"mkdir -p {dest_sh} && cd {dest_sh} && tar -x -p -f -"),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        assert proc.stdin is not None
        try:
            with tarfile.open(fileobj=proc.stdin, mode="w|") as archive:
                archive.add(source, arcname=arcname)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        proc.wait()
        err.seek(0)
        detail = err.read().decode(errors="replace").strip()
    if proc.returncode != 0:
        last = detail.splitlines()[-1] if detail else f"exit {proc.returncode}"
        raise VpError(f"upload to {transport.label} (tar) failed: {last}")


def _tar_down(transport: Transport, workdir: str, rel: str, staging: Path) -> None:
    """`rel` (as `vp download` reads it) into `staging`, unpacked by tarpipe's safe rules."""
    if rel.startswith("/") or rel == "~" or rel.startswith("~/"):
        parent = posixpath.dirname(rel) or "/"
    else:
        parent = posixpath.join(workdir, posixpath.dirname(rel)).rstrip("/") or workdir
    try:
        tarpipe.download(transport, parent, [posixpath.basename(rel)], staging)
    except VpError:
        probe = transport.run(f"test -e {_remote_sh(transport, workdir, rel)}", timeout=60)
        if probe.returncode == 1:  # tar had nothing to read: say so, as rsync's path does
            raise VpError(f"nothing at {rel} on {transport.label}") from None
        raise


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
    dest_sh = _remote_sh(transport, workdir, target_dir)
    if transport.is_local:
        Path(_remote_rsync_path(transport, workdir, target_dir)).mkdir(parents=True, exist_ok=True)
    else:
        mkdir = f"mkdir -p {dest_sh} && rsync"
        argv.append(f"--rsync-path={mkdir}")
    remote = _remote_rsync_path(transport, workdir, rel)
    if is_dir:
        argv += [str(absolute) + "/", transport.remote_path(remote.rstrip("/") + "/")]
        size = sum(f.stat().st_size for f in absolute.rglob("*") if f.is_file())
    else:
        argv += [str(absolute), transport.remote_path(remote)]
        size = absolute.lstat().st_size
    arcname = "." if is_dir else posixpath.basename(rel)
    _copy(transport, argv, "upload", lambda: _tar_up(transport, absolute, arcname, dest_sh))
    return rel, size


@dataclass
class Fetched:
    placed: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # kept local; host's copy at NAME.vp-remote
    control: list[str] = field(default_factory=list)  # vp's control files: host's at .vp-remote
    unchanged: int = 0

    def to_dict(self) -> dict:
        return {
            "fetched": self.placed,
            "conflicts": self.conflicts + self.control,
            "unchanged": self.unchanged,
        }


def _sanitize_tree(top: Path, warn: Callable[[str], None]) -> None:
    """Make a fetched tree safe before anything moves: only regular files (permission bits
    only, ours) and links that stay inside; anything else is removed from staging."""
    entries = [(top, top.name)]
    if top.is_dir() and not top.is_symlink():
        entries = []
        for dirpath, dirnames, filenames in os.walk(top):
            rel = os.path.relpath(dirpath, top.parent)
            for name in filenames + [d for d in dirnames if os.path.islink(Path(dirpath, d))]:
                entries.append((Path(dirpath, name), posixpath.join(rel, name)))
    for path, name in entries:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            sanitize_staged(fd, path.name, name)
        except Unsafe as exc:
            warn(one_line(f"{name}: {exc}; skipped"))
            os.unlink(path.name, dir_fd=fd)
        finally:
            os.close(fd)


def place(
    src: Path,
    walker: DirWalker,
    parts: list[str],
    *,
    force: bool,
    result: Fetched,
    shown: Path,
    protected: Callable[[list[str]], bool] = lambda _p: False,
    warn: Callable[[str], None] = lambda _m: None,
) -> None:
    """Move the staged `src` to `parts` below the walker's root file by file (each rename is
    atomic), never through a link. An existing, different local file is kept unless
    `force`; the host's copy lands as NAME.vp-remote. A control file is never replaced."""
    try:
        fd = walker.parent(parts[:-1], create=True)
    except Unsafe as exc:
        warn(one_line(f"{shown}: not placed: {exc}; skipped"))
        return
    base = parts[-1]
    st = os.lstat(src)
    cur = lstat_at(fd, base)
    if stat.S_ISDIR(st.st_mode):
        if cur is not None and not stat.S_ISDIR(cur.st_mode):
            _conflict(src, walker, parts, fd, cur, force=force, result=result, shown=shown)
            return
        for child in sorted(src.iterdir()):
            place(
                child,
                walker,
                [*parts, child.name],
                force=force,
                result=result,
                shown=shown / child.name,
                protected=protected,
                warn=warn,
            )
        return
    if cur is None and not protected(parts):
        os.replace(src, base, dst_dir_fd=fd)
        result.placed.append(str(shown))
    elif cur is not None and same_at(None, str(src), fd, base):  # type: ignore[arg-type]
        result.unchanged += 1
    elif protected(parts):
        _conflict(src, walker, parts, fd, cur, force=False, result=result, shown=shown)
        result.control.append(result.conflicts.pop())
        warn(
            f"{one_line(str(shown))} is vp's own control file: the host's version was not "
            f"used; it is {one_line(str(shown))}{REMOTE_SUFFIX}"
        )
    else:
        _conflict(src, walker, parts, fd, cur, force=force, result=result, shown=shown)


def _conflict(
    src: Path,
    walker: DirWalker,
    parts: list[str],
    fd: int,
    cur: os.stat_result | None,
    *,
    force: bool,
    result: Fetched,
    shown: Path,
) -> None:
    base = parts[-1]
    if force:
        if cur is not None and stat.S_ISDIR(cur.st_mode):
            walker.forget(parts)
            shutil.rmtree(base, dir_fd=fd)
        os.replace(src, base, dst_dir_fd=fd)
        result.placed.append(str(shown))
        return
    side = base + REMOTE_SUFFIX
    side_st = lstat_at(fd, side)
    if side_st is not None and stat.S_ISDIR(side_st.st_mode):
        walker.forget([*parts[:-1], side])
        shutil.rmtree(side, dir_fd=fd)
    elif side_st is not None and stat.S_ISDIR(os.lstat(src).st_mode):
        os.unlink(side, dir_fd=fd)
    os.replace(src, side, dst_dir_fd=fd)
    result.conflicts.append(str(shown))


def copy_down(
    transport: Transport,
    workdir: str,
    src: str,
    dst: Path,
    *,
    force: bool,
    protected: set[Path] | frozenset[Path] = frozenset(),
    warn: Callable[[str], None] = lambda _m: None,
) -> Fetched:
    """Fetch a file or folder from the host into `dst`, never clobbering a local file unless
    `force`: rsync writes a staging dir beside `dst`, then each file is renamed into place.

    The host is not trusted: only regular files and contained links land, nothing is
    written through a link below `dst`, and the `protected` paths (vp's control files) are
    never replaced, --force or not."""
    rel = src.rstrip("/") or src
    if not rel:
        raise UsageError("download what?", hint="e.g. vp download outputs/")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".vp-dl-", dir=dst.parent))
    try:
        remote = _remote_rsync_path(transport, workdir, rel)
        _copy(
            transport,
            ["-a", *SAFE_FETCH, "--protect-args", transport.remote_path(remote), f"{staging}/"],
            "download",
            lambda: _tar_down(transport, workdir, rel, staging),
        )
        fetched = staging / posixpath.basename(remote.rstrip("/"))
        if not os.path.lexists(fetched):
            entries = list(staging.iterdir())
            if len(entries) != 1:
                raise VpError(f"nothing at {rel} on {transport.label}")
            fetched = entries[0]
        _sanitize_tree(fetched, warn)
        result = Fetched()
        if not os.path.lexists(fetched):
            return result
        base = Path(os.path.realpath(dst.parent))
        with DirWalker(base) as walker:
            place(
                fetched,
                walker,
                [dst.name],
                force=force,
                result=result,
                shown=Path(dst.name),
                protected=lambda parts: base.joinpath(*parts) in protected,
                warn=warn,
            )
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)
