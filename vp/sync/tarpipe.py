"""The fallback when a host has no rsync (common on vast.ai and RunPod container images):
the same NUL-separated file lists, carried by `tar` over one ssh session each way.
`Transport.copy` decides when.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vp.errors import ConnectionFailed, VpError
from vp.sync.place import DirWalker, Unsafe, link_contained, lstat_at
from vp.sync.rsync import files_from
from vp.transport import Transport

if TYPE_CHECKING:
    import tarfile


def _payload(names: list[str]) -> bytes:
    return files_from(names)  # `./NAME`: no name is read as a tar option


def _feed(stream, data: bytes) -> None:
    """Write the name list from a thread: tar reads it while its output is being consumed."""

    def write() -> None:
        try:
            stream.write(data)
            stream.close()
        except (BrokenPipeError, ValueError):
            pass

    threading.Thread(target=write, daemon=True).start()


def _check(proc: subprocess.CompletedProcess[bytes], transport: Transport, what: str) -> None:
    if proc.returncode == 0:
        return
    err = proc.stderr.decode(errors="replace").strip()
    detail = err.splitlines()[-1] if err else f"exit {proc.returncode}"
    if "No space left on device" in err:
        raise VpError(
            f"{what} to {transport.label} failed: the host's disk is full",
            hint="free space on the host, or raise [host] disk_gb",
        )
    if proc.returncode == 255:
        raise ConnectionFailed(f"{what} to {transport.label} failed: connection lost ({detail})")
    raise VpError(f"{what} with {transport.label} (tar) failed: {detail}")


class Receiver:
    """The host's side of a first upload, opened before vp walks the tree: its ssh session's
    set-up (a raw `ssh true`'s worth: a channel, the login shell's start-up files) overlaps
    the walk. It does nothing until told to go: `read` (a builtin, which never reads past
    its line) waits for `go`, and only then is the workdir made and `tar` exec'd on the rest
    of stdin. Closed unused, it exits having touched nothing."""

    def __init__(self, transport: Transport, workdir: str):
        wd = transport.workdir_sh(workdir)
        script = f'read -r vp_go && [ "$vp_go" = go ] && {_RECEIVE.format(wd=wd)}'
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            transport.exec_argv(script),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def take(self) -> subprocess.Popen[bytes] | None:
        """The session, told to go: what follows on its stdin is the tar stream."""
        proc, self.proc = self.proc, None
        if proc is not None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(b"go\n")
                proc.stdin.flush()
            except BrokenPipeError:
                pass
        return proc

    def close(self) -> None:
        """End it unused: its `read` sees the end of stdin and the session exits."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.communicate(timeout=30)


_RECEIVE = "mkdir -p {wd} && cd {wd} && exec tar -x -p -f -"


def upload(
    transport: Transport,
    root: Path,
    workdir: str,
    send: list[str],
    deleted: list[str],
    *,
    on_bytes: Callable[[int], None] | None = None,
    receiver: Receiver | None = None,
) -> bool:
    """tar `send` (paths under `root`) into the workdir; remove `deleted` there. False when
    the host has no tar (nothing was written: the caller falls back to rsync).

    Each file's parent directories travel too (before their contents), so they arrive
    with their own modes and times, as rsync's implied directories do."""
    wd = transport.workdir_sh(workdir)
    transport.ensure()
    opened = receiver.take() if receiver is not None and send else None
    if send:
        local = subprocess.Popen(
            ["tar", "-C", str(root), "--no-recursion", "--null", "-T", "-", "-c", "-f", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert local.stdin and local.stdout
        script = _RECEIVE.format(wd=wd)
        if on_bytes is None and opened is None:
            remote = subprocess.Popen(
                transport.exec_argv(script),
                stdin=local.stdout,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            local.stdout.close()  # the remote side owns it now
        else:
            remote = opened or subprocess.Popen(
                transport.exec_argv(script),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            stdin, remote.stdin = remote.stdin, None  # the pump owns it, not communicate()
            _pump(local.stdout, stdin, on_bytes or (lambda _n: None))
        local_err: list[bytes] = []
        drain = threading.Thread(
            target=lambda: local_err.append(local.stderr.read()),  # type: ignore[union-attr]
            daemon=True,
        )
        drain.start()
        _feed(local.stdin, _payload(with_parents(send)))
        out, err = remote.communicate()
        local.wait()
        drain.join(timeout=5)
        if remote.returncode == 127 and b"tar" in err:
            return False  # `exec tar` failed: no tar on the host
        _check(subprocess.CompletedProcess([], remote.returncode, out, err), transport, "upload")
        # tar skips a file it cannot read and goes on: fail rather than record it as sent.
        # Exit 1 (changed while read) and files deleted since the walk are rsync's exit 24.
        lines = b"".join(local_err).decode(errors="replace").strip().splitlines()
        failed = [ln for ln in lines if "No such file" not in ln and "Exiting with" not in ln]
        if local.returncode not in (0, 1) and (failed or not lines):
            detail = failed[0] if failed else f"tar exited {local.returncode}"
            raise VpError(f"upload to {transport.label} (tar) failed: {detail}")
    if deleted:
        proc = subprocess.run(
            transport.exec_argv(f"cd {wd} && xargs -0 rm -f --"),
            input=_payload(deleted),
            capture_output=True,
            start_new_session=True,
        )
        _check(proc, transport, "upload")
    return True


def with_parents(names: list[str]) -> list[str]:
    """`names` with every parent directory listed once, before the first name under it."""
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in seen:
                seen.add(parent)
                out.append(parent)
        out.append(name)
    return out


def _pump(src, dst, on_bytes: Callable[[int], None]) -> None:
    """Copy local tar's output to the ssh session from a thread, counting bytes for a
    progress bar."""

    def copy() -> None:
        done = 0
        try:
            while chunk := src.read1(1 << 16):
                dst.write(chunk)
                done += len(chunk)
                on_bytes(done)
        except (BrokenPipeError, ValueError, OSError):
            pass
        finally:
            for stream in (dst, src):
                with contextlib.suppress(OSError, ValueError):
                    stream.close()

    threading.Thread(target=copy, daemon=True).start()


def download(transport: Transport, workdir: str, names: list[str], staging: Path) -> None:
    """tar `names` from the workdir into `staging` (missing names are skipped).

    The archive is unpacked here by Python, not by the local `tar`: only regular files
    (permission bits only, sparse regions kept as holes), contained links and directories
    are written, nothing is followed, no owner comes from the host. A full local disk
    raises `LocalDiskFull` after keeping every member written whole so far."""
    import tarfile  # only downloads from a host without rsync need it

    wd = transport.workdir_sh(workdir)
    transport.ensure()
    remote = subprocess.Popen(
        transport.exec_argv(f"cd {wd} && tar --null -T - -c -f - --ignore-failed-read"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert remote.stdin and remote.stdout and remote.stderr
    _feed(remote.stdin, _payload(names))
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(remote.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        unpack(remote.stdout, staging)
    except LocalDiskFull:
        remote.kill()
        raise
    except tarfile.TarError as exc:
        remote.kill()
        remote.wait()
        if remote.returncode == 255:
            raise ConnectionFailed(
                f"download from {transport.label} failed: connection lost"
            ) from None
        raise VpError(f"download from {transport.label} (tar) failed: {exc}") from None
    finally:
        remote.stdout.close()
        remote.wait()
        reader.join(timeout=5)
    if remote.returncode == 255:
        raise ConnectionFailed(f"download from {transport.label} failed: connection lost")


class LocalDiskFull(Exception):
    """The local disk filled while writing a fetched file."""


def unpack(stream, staging: Path) -> None:
    """Unpack a tar stream into `staging` with the rules in `download`."""
    import tarfile

    with tarfile.open(fileobj=stream, mode="r|*") as archive, DirWalker(staging) as dirs:
        for member in archive:
            name = posixpath.normpath(member.name.lstrip("/")) if member.name else ""
            parts = name.split("/")
            if not name or name == "." or ".." in parts:
                continue
            try:
                if member.isdir():
                    dirs.parent(parts, create=True)
                    continue
                fd = dirs.parent(parts[:-1], create=True)
                base = parts[-1]
                if member.issym():
                    if link_contained(name, member.linkname) and lstat_at(fd, base) is None:
                        os.symlink(member.linkname, base, dir_fd=fd)
                elif member.isfile():
                    _write(archive.extractfile(member), fd, base, member)
                elif member.islnk():  # a hard link to a file earlier in this archive
                    src = posixpath.normpath(member.linkname.lstrip("/")).split("/")
                    if ".." in src:
                        continue
                    src_fd = dirs.parent(src[:-1], create=False)
                    flags = os.O_RDONLY | os.O_NOFOLLOW
                    with os.fdopen(os.open(src[-1], flags, dir_fd=src_fd), "rb") as fh:
                        _write(fh, fd, base, member)
                # devices, fifos, sockets: never written
            except Unsafe:
                continue
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise LocalDiskFull() from None
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
                    continue
                raise


def _write(src, fd: int, base: str, member: tarfile.TarInfo) -> None:
    """Write one member beside its final name, then rename: a file appears whole or not at
    all. All-zero blocks become holes, so a sparse file stays sparse."""
    if src is None:
        return
    tmp = f".{base}.vp-part"
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600, dir_fd=fd)
    try:
        size = 0
        block = 1 << 16
        while chunk := src.read(block):
            if chunk.count(0) == len(chunk):
                os.lseek(out, len(chunk), os.SEEK_CUR)
            else:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
            size += len(chunk)
        os.ftruncate(out, size)
        os.fchmod(out, member.mode & 0o777)
        os.utime(out, (member.mtime, member.mtime))
    except BaseException:
        os.close(out)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=fd)
        raise
    os.close(out)
    os.replace(tmp, base, src_dir_fd=fd, dst_dir_fd=fd)
