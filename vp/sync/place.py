"""Moving files fetched from an untrusted host into the user's tree without following links.

A host can leave anything in its workdir: links to `~/.ssh`, `..` links, a link in one run and
a directory of the same name in the next, setuid files, fifos, files owned by other users.
Everything lands in a fresh staging dir first; this module then walks both trees one
component at a time with `O_NOFOLLOW` directory fds, so a link anywhere in a destination's
parents (or the staged source's) is refused instead of followed, and only regular files
(permission bits only, owned by us) and links that stay inside the tree are renamed in.
"""

from __future__ import annotations

import errno
import functools
import os
import posixpath
import stat
from collections.abc import Iterator

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class Unsafe(Exception):
    """This name is not placed: the reason, said to the user as a warning."""


def link_contained(name: str, target: str) -> bool:
    """Does a link at `name` (relative to the tree root) pointing at `target` stay inside?

    Only relative targets whose `..` steps all come first qualify: those climb through the
    link's own parents (real directories, checked) and never through another link."""
    if not target or target.startswith("/") or "\0" in target:
        return False
    depth = name.count("/")
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    return ups <= depth and ".." not in parts[ups:]


class DirWalker:
    """Directory fds below one root, opened without following links, cached per path."""

    def __init__(self, root: str | os.PathLike[str]):
        self._fds: dict[tuple[str, ...], int] = {(): os.open(root, _DIR_FLAGS)}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> DirWalker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def parent(self, parts: list[str], *, create: bool) -> int:
        """The fd of the directory `parts` (relative to the root), made when `create`."""
        key: tuple[str, ...] = ()
        fd = self._fds[key]
        for part in parts:
            key = (*key, part)
            cached = self._fds.get(key)
            if cached is not None:
                fd = cached
                continue
            if create:
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise Unsafe(f"{'/'.join(key)} is missing") from None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise Unsafe(f"{'/'.join(key)} is a link or a file here") from None
                raise
            self._fds[key] = fd
        return fd

    def forget(self, parts: list[str]) -> None:
        """Drop cached fds at and below `parts` (that directory was replaced)."""
        key = tuple(parts)
        for k in [k for k in self._fds if k[: len(key)] == key and k]:
            os.close(self._fds.pop(k))


def lstat_at(fd: int, base: str) -> os.stat_result | None:
    try:
        return os.lstat(base, dir_fd=fd)
    except FileNotFoundError:
        return None


@functools.cache
def local_umask() -> int:
    """This process's umask: what comes back gets the modes a file made here would get."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # no /proc: read it by setting it (once, before any thread runs)
    os.umask(old)
    return old


def sanitize_staged(fd: int, base: str, name: str) -> os.stat_result:
    """Make the staged `base` safe to place, or raise Unsafe: a regular file keeps only its
    permission bits (no setuid/setgid/sticky); a link must stay inside the tree; both
    become ours. Devices, fifos and sockets are refused."""
    st = os.lstat(base, dir_fd=fd)
    mine = (os.geteuid(), os.getegid())
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(base, dir_fd=fd)
        if not link_contained(name, target):
            raise Unsafe(f"a link to {target} (outside the project) was not brought back")
    elif stat.S_ISREG(st.st_mode):
        mode = stat.S_IMODE(st.st_mode) & 0o777 & ~local_umask()
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(base, mode, dir_fd=fd, follow_symlinks=False)
    else:
        raise Unsafe("not a regular file or link: not brought back")
    if (st.st_uid, st.st_gid) != mine:
        try:
            os.chown(base, *mine, dir_fd=fd, follow_symlinks=False)
        except PermissionError:
            pass  # not root: what we created is ours already
    return os.lstat(base, dir_fd=fd)


def same_at(fd_a: int, a: str, fd_b: int, b: str) -> bool:
    """Two regular files with equal bytes, or two links to the same target (no following)."""
    sa, sb = lstat_at(fd_a, a), lstat_at(fd_b, b)
    if sa is None or sb is None:
        return False
    if stat.S_ISLNK(sa.st_mode) or stat.S_ISLNK(sb.st_mode):
        return (
            stat.S_ISLNK(sa.st_mode)
            and stat.S_ISLNK(sb.st_mode)
            and os.readlink(a, dir_fd=fd_a) == os.readlink(b, dir_fd=fd_b)
        )
    if not (stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode)) or sa.st_size != sb.st_size:
        return False
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fa = os.open(a, flags, dir_fd=fd_a)
    try:
        fb = os.open(b, flags, dir_fd=fd_b)
        try:
            with os.fdopen(fa, "rb", closefd=False) as ra, os.fdopen(fb, "rb", closefd=False) as rb:
                while True:
                    x, y = ra.read(1 << 20), rb.read(1 << 20)
                    if x != y:
                        return False
                    if not x:
                        return True
        finally:
            os.close(fb)
    finally:
        os.close(fa)


def staged_names(root: str | os.PathLike[str]) -> Iterator[str]:
    """Every file and link under a staging dir, as posix paths (links are not followed)."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            yield name if rel == "." else posixpath.join(rel.replace(os.sep, "/"), name)
