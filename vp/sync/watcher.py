"""A watcher of one project's directories (Linux inotify), so that a warm `vp CMD` in a big
project can learn "nothing changed since token T" in one round trip instead of `lstat`ing
every file (the way git's fsmonitor--daemon and watchman serve `git status`).

Stand-alone on purpose: the standard library only, no vp import, so the same file can run
on a host (`python3 watcher.py ROOT RUNDIR VERSION IDLE_S`).

The state is a token, (instance id, generation): every event in a watched directory moves the
generation; an overflowed event queue, or a restart, gives a new instance id. A client asks
"anything since T?" and gets the current token back. To be exact about ordering (an edit made
just before the client started must be counted), the client names a *cookie*, then creates
that file in the watcher's own `cookies/` directory, which is watched on the same inotify fd:
the kernel queues events in order, so once the watcher reads the cookie's event it has read
every event that happened before the question was asked, and only then answers.

A file with another name outside the project (a hard link) is watched itself: written
through that name, its directory here hears nothing. Known gaps, as for every inotify
watcher: a file that gains its other name outside the project after it was listed (the
kernel tells only the file, not its directory, of a new link) and is then written through
it, and writes through a shared memory mapping, make no event here; they do move the file's
ctime, which only the full check sees.

Which directories: the client says (`dirs`: the synced directories of its walk, relative to
the root). Each is watched; a directory created or moved into a watched one is watched at
once, with everything under it (its contents count as changed: the generation moves). The
answer carries `known`: the client's directories (named by `digest`) are exactly the ones it
last gave and all of them are watched. A client vouches a walk with a token only when its
walk started after the answer, its directories are the ones asked with, and `known` held.

Lifetime: one per root (a lock in RUNDIR), gone after IDLE_S seconds without a question,
when the root disappears, or when asked by a client of another VERSION.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import time

PROTOCOL = 1
RETRY_S = 600  # a watcher that could not add a watch exits after this, to be tried afresh

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
    | IN_EXCL_UNLINK
)
FILE_MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DONT_FOLLOW
_EVENT = struct.Struct("iIII")

# Filesystems whose changes can come from elsewhere (another machine, the host of a VM),
# which inotify never hears of: a watcher there would vouch for a stale walk.
REMOTE_FS = frozenset(
    [
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb3",
        "smbfs",
        "9p",
        "virtiofs",
        "ceph",
        "glusterfs",
        "lustre",
        "afs",
        "gpfs",
        "beegfs",
        "fuse",
        "fuseblk",
        "sshfs",
        "davfs",
        "vboxsf",
        "prl_fs",
        "vmhgfs",
        "drvfs",
    ]
)


def digest(dirs) -> str:
    """Names a set of relative directory paths (str or bytes), the same on both sides."""
    encoded = sorted(d if isinstance(d, bytes) else os.fsencode(d) for d in dirs)
    return hashlib.sha1(b"\0".join(encoded)).hexdigest()


def inotify_available() -> bool:
    return sys.platform.startswith("linux") and _libc() is not None


_LIBC: list = []


def _libc():
    if not _LIBC:
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)  # the libc python runs on
            libc.inotify_init1  # noqa: B018 - raises AttributeError when absent
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
            _LIBC.append(libc)
        except (OSError, AttributeError):
            _LIBC.append(None)
    return _LIBC[0]


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


class Inotify:
    """One inotify instance: add/remove watches, read the queued events."""

    def __init__(self) -> None:
        self.libc = _libc()
        if self.libc is None:
            raise OSError(errno.ENOSYS, "no inotify")
        fd = self.libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = _errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd

    def add(self, path: bytes, mask: int = WATCH_MASK) -> int:
        wd = self.libc.inotify_add_watch(self.fd, path, mask)
        if wd < 0:
            err = _errno()
            raise OSError(err, os.strerror(err), path)
        return wd

    def rm(self, wd: int) -> None:
        self.libc.inotify_rm_watch(self.fd, wd)  # EINVAL: gone already

    def read(self) -> list[tuple[int, int, int, bytes]]:
        try:
            buf = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        events, i = [], 0
        while i + _EVENT.size <= len(buf):
            wd, mask, cookie, length = _EVENT.unpack_from(buf, i)
            i += _EVENT.size
            name = buf[i : i + length].rstrip(b"\0")
            i += length
            events.append((wd, mask, cookie, name))
        return events

    def close(self) -> None:
        os.close(self.fd)


def fs_types() -> dict[int, str]:
    """st_dev -> filesystem type of every mount (from /proc/self/mountinfo)."""
    out: dict[int, str] = {}
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            for line in fh:
                left, _, right = line.partition(b" - ")
                major, _, minor = left.split()[2].partition(b":")
                out[os.makedev(int(major), int(minor))] = right.split()[0].decode()
    except (OSError, ValueError, IndexError):
        pass
    return out


def max_user_watches() -> int:
    """fs.inotify.max_user_watches (VP_WATCH_MAX_WATCHES pretends another, for tests)."""
    try:
        if os.environ.get("VP_WATCH_MAX_WATCHES"):
            return int(os.environ["VP_WATCH_MAX_WATCHES"])
        with open("/proc/sys/fs/inotify/max_user_watches") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 0


def remote_fs(fstype: str) -> bool:
    return fstype in REMOTE_FS or fstype.startswith("fuse.")


class Watcher:
    """The watches of one root and the token they move."""

    def __init__(self, root: bytes, cookies: bytes, log=lambda _m: None) -> None:
        self.root, self.cookies, self.log = root, cookies, log
        self.generation = 0
        self.instance = os.urandom(8).hex()
        self.ino = Inotify()
        self.cookies_wd = self.ino.add(cookies, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR)
        # The root's own IN_DELETE_SELF waits for its last user (a shell whose cwd it is):
        # its parent says at once that it was removed, renamed or replaced.
        self.parent_wd = -1
        parent, self.root_name = os.path.split(root.rstrip(b"/"))
        if parent and self.root_name:
            try:
                mask = IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_ONLYDIR
                self.parent_wd = self.ino.add(parent, mask)
            except OSError:
                pass
        self.paths: dict[int, bytes] = {}  # wd -> relative path (b"" is the root)
        self.files: dict[int, bytes] = {}  # wd -> relative path of a file with other names
        self.wds: dict[bytes, int] = {}
        self.given: list[bytes] = []
        self.given_digest = ""
        self.intact = False  # every given directory is watched
        self.refusal = ""  # why no answer can vouch (a remote filesystem, the watch limit)
        self.root_id = self._root_id()
        self.gone = False  # the root was removed or moved: time to exit
        self.failed = 0.0  # when a watch could not be added (then none is kept)
        self.fstypes = fs_types()

    def _root_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.root)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def token(self) -> list:
        return [self.instance, self.generation]

    def _abs(self, rel: bytes) -> bytes:
        return os.path.join(self.root, rel) if rel else self.root

    def _watch(self, rel: bytes) -> int | None:
        """Watch one directory; None when it is gone (that is a change already queued)."""
        try:
            st = os.lstat(self._abs(rel))
            if not stat.S_ISDIR(st.st_mode):
                return None
            fstype = self.fstypes.get(st.st_dev)
            if fstype is None:
                self.fstypes = fs_types()
                fstype = self.fstypes.get(st.st_dev, "")
            if remote_fs(fstype):
                self.refusal = f"{fstype} filesystem: its changes may come from elsewhere"
            wd = self.ino.add(self._abs(rel), WATCH_MASK if rel else WATCH_MASK & ~IN_DONT_FOLLOW)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            # ENOSPC: fs.inotify.max_user_watches reached (the user's, shared with every
            # other tool: give all of ours back); EACCES and others: no answer can vouch
            self.intact = False
            self.failed = self.failed or time.monotonic()
            self.refusal = f"cannot watch {os.fsdecode(rel) or '.'}: {e.strerror}"
            return None
        old = self.paths.get(wd)
        if old is not None and old != rel:
            self.wds.pop(old, None)
        self.paths[wd] = rel
        self.wds[rel] = wd
        return wd

    def _watch_file(self, rel: bytes, keep: set | None = None) -> None:
        """Watch a file with more than one name: written through a name outside the
        project, its directory here hears nothing, the file itself does."""
        try:
            wd = self.ino.add(self._abs(rel), FILE_MASK)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                self.intact = False
                self.failed = self.failed or time.monotonic()
                self.refusal = f"cannot watch {os.fsdecode(rel)}: {e.strerror}"
            return
        self.files[wd] = rel
        if keep is not None:
            keep.add(wd)

    def _maybe_linked(self, rel: bytes) -> None:
        """A file was made, moved in or linked to (its link count moved): watch it too if
        it has other names."""
        try:
            st = os.lstat(self._abs(rel))
        except OSError:
            return
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            self._watch_file(rel)

    def _scan(self, here: bytes, subdirs: list | None, keep: set | None = None) -> None:
        """List a watched directory: its files with other names get watches of their own;
        with `subdirs`, its subdirectories are added to it."""
        try:
            with os.scandir(self._abs(here)) as it:
                for entry in it:
                    child = os.path.join(here, entry.name) if here else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        if subdirs is not None:
                            subdirs.append(child)
                    elif entry.is_file(follow_symlinks=False):
                        if entry.stat(follow_symlinks=False).st_nlink > 1:
                            self._watch_file(child, keep)
        except OSError:
            pass

    def _watch_tree(self, rel: bytes) -> None:
        """A directory that appeared: watch it, then everything under it (in this order,
        so a subdirectory made meanwhile is either seen by the listing or by a watch)."""
        stack = [rel]
        while stack:
            here = stack.pop()
            if self._watch(here) is not None:
                self._scan(here, stack)

    def _forget(self, rel: bytes, remove: bool) -> None:
        """Drop the watches of `rel` and below (it was moved away or deleted)."""
        prefix = rel + b"/"
        for path in [p for p in self.wds if p == rel or p.startswith(prefix)]:
            wd = self.wds.pop(path)
            self.paths.pop(wd, None)
            if remove:
                self.ino.rm(wd)

    def set_dirs(self, dirs: list[bytes], rescan: bool = False) -> None:
        """Watch exactly `dirs` (and the root), dropping the watches of anything else. The
        files of a directory newly watched (all, with `rescan`) are looked at for other
        names; those of one watched already were, as they came (events)."""
        self.generation += 1
        self.refusal = ""
        self.intact = True
        self.fstypes = fs_types()
        limit = max_user_watches()
        if limit and len(dirs) > limit // 2:
            # The watches are the user's, shared with every other tool: take at most half.
            self.refusal = f"{len(dirs)} directories: more than half of the {limit} watches"
            self.failed = self.failed or time.monotonic()
            dirs = []
        keep: set[int] = set()
        keep_files: set[int] = set()
        before = dict(self.wds)
        for rel in dirs:
            wd = self._watch(rel)
            if wd is not None:
                keep.add(wd)
                if rescan or before.get(rel) != wd:
                    self._scan(rel, None, keep_files)
        watched = set(dirs)
        keep_files.update(w for w, f in self.files.items() if os.path.dirname(f) in watched)
        root_wd = self.wds.get(b"") if b"" in dirs else self._watch(b"")
        if root_wd is not None:
            keep.add(root_wd)
        for wd in [w for w in self.paths if w not in keep]:
            self.wds.pop(self.paths.pop(wd), None)
            self.ino.rm(wd)
        for wd in [w for w in self.files if w not in keep_files]:
            del self.files[wd]
            self.ino.rm(wd)
        self.given = list(dirs)
        self.given_digest = digest(dirs)
        self.root_id = self._root_id()
        self._give_up_if_refused()
        self.log(f"watching {len(self.paths)} directories ({self.refusal or 'ok'})")

    def _give_up_if_refused(self) -> None:
        """No answer of a refusing watcher vouches: hold no watches (they are the user's,
        shared with every other tool) but the root's (to exit when it goes)."""
        if not self.refusal:
            return
        root_wd = self.wds.get(b"")
        for wd in [w for w in self.paths if w != root_wd]:
            self.wds.pop(self.paths.pop(wd), None)
            self.ino.rm(wd)
        for wd in list(self.files):
            del self.files[wd]
            self.ino.rm(wd)

    def reset(self, why: str) -> None:
        """Events were lost: a new instance (every older token is stale), watches again."""
        self.log(f"reset: {why}")
        self.instance = os.urandom(8).hex()
        self.generation = 0
        self.set_dirs(self.given, rescan=True)

    def handle(self, events) -> list[bytes]:
        """Apply events; return the names of cookies seen (in order)."""
        cookies = []
        overflow = False
        for wd, mask, _cookie, name in events:
            if mask & IN_Q_OVERFLOW:
                overflow = True
                continue
            if wd == self.cookies_wd:
                if mask & (IN_CREATE | IN_MOVED_TO):
                    cookies.append(name)
                continue
            if wd == self.parent_wd:
                if name == self.root_name:  # removed, renamed, or replaced by another
                    self.gone = True
                continue
            if wd in self.files:
                if mask & IN_IGNORED:
                    del self.files[wd]
                else:
                    self.generation += 1
                continue
            rel = self.paths.get(wd)
            if mask & IN_IGNORED:
                if rel is not None:
                    self.paths.pop(wd, None)
                    if self.wds.get(rel) == wd:
                        del self.wds[rel]
                continue
            self.generation += 1
            if rel is None:
                continue
            if rel == b"" and mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
                self.gone = True
                continue
            if not name:
                continue
            child = os.path.join(rel, name) if rel else name
            if not mask & IN_ISDIR:
                if mask & (IN_CREATE | IN_MOVED_TO | IN_ATTRIB):
                    self._maybe_linked(child)
                continue
            if mask & (IN_MOVED_FROM | IN_DELETE):
                self._forget(child, remove=bool(mask & IN_MOVED_FROM))
            if mask & (IN_CREATE | IN_MOVED_TO):
                self._forget(child, remove=True)
                self._watch_tree(child)
        if overflow:
            self.reset("event queue overflow")
        elif self.refusal and (len(self.paths) > 1 or self.files):
            self.log(f"refusing: {self.refusal}")
            self._give_up_if_refused()
        return cookies

    def answer(self, request: dict) -> dict:
        since = request.get("since")
        root_id = request.get("root")
        known = (
            self.intact
            and not self.refusal
            and request.get("digest") == self.given_digest
            and isinstance(root_id, list)
            and tuple(root_id) == self.root_id
        )
        unchanged = known and since == self.token()
        return {
            "token": self.token(),
            "known": known,
            "unchanged": unchanged,
            "refusal": self.refusal,
        }


class Server:
    """The socket side: questions wait for their cookie's event, then get the token."""

    def __init__(self, rundir: bytes, watcher: Watcher, version: str, idle_s: float, log) -> None:
        self.rundir, self.watcher, self.version, self.idle_s = rundir, watcher, version, idle_s
        self.log = log
        self.sel = selectors.DefaultSelector()
        path = os.path.join(rundir, b"sock")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.sel.register(self.sock, selectors.EVENT_READ, "accept")
        self.sel.register(watcher.ino.fd, selectors.EVENT_READ, "inotify")
        self.pending: dict[bytes, tuple[socket.socket, dict, float]] = {}
        # cookies whose event was read before their question (both were ready at once)
        self.seen: dict[bytes, None] = {}
        self.buffers: dict[socket.socket, bytes] = {}
        self.last = time.monotonic()
        self.stop = ""
        self.unchanged_answers = 0
        self.answers = 0

    def _close(self, conn: socket.socket) -> None:
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        self.buffers.pop(conn, None)
        conn.close()

    def _reply(self, conn: socket.socket, reply: dict) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(1)
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass
        self._close(conn)

    def _request(self, conn: socket.socket, request: dict) -> None:
        self.last = time.monotonic()
        if request.get("protocol") != PROTOCOL or request.get("version") != self.version:
            self._reply(conn, {"error": "another vp version: exiting"})
            self.stop = f"asked by another version ({request.get('version')})"
            return
        op = request.get("op")
        if op == "query":
            cookie = os.fsencode(str(request.get("cookie", "")))
            if not cookie or b"/" in cookie or cookie.startswith(b"."):
                self._reply(conn, {"error": "bad cookie"})
                return
            self.sel.unregister(conn)
            self.pending[cookie] = (conn, request, time.monotonic())
            if self.seen.pop(cookie, 0) is None:
                self._cookie(cookie)
        elif op == "dirs":
            dirs = [os.fsencode(d) for d in request.get("dirs", []) if isinstance(d, str)]
            self.watcher.set_dirs(dirs)
            self._reply(conn, {"ok": True})
        elif op == "status":
            w = self.watcher
            self._reply(
                conn,
                {
                    "pid": os.getpid(),
                    "token": w.token(),
                    "watches": len(w.paths) + len(w.files),
                    "refusal": w.refusal,
                    "answers": self.answers,
                    "unchanged_answers": self.unchanged_answers,
                },
            )
        else:
            self._reply(conn, {"error": f"unknown op {op!r}"})

    def _readable(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        buf = self.buffers.get(conn, b"") + data
        if b"\n" not in buf:
            if len(buf) > 64 << 20:
                self._close(conn)
            else:
                self.buffers[conn] = buf
            return
        self.buffers.pop(conn, None)
        try:
            request = json.loads(buf.partition(b"\n")[0])
            if not isinstance(request, dict):
                raise ValueError(request)
        except ValueError:
            self._reply(conn, {"error": "bad request"})
            return
        self._request(conn, request)

    def _cookie(self, name: bytes) -> None:
        try:
            os.unlink(os.path.join(self.rundir, b"cookies", name))
        except OSError:
            pass
        waiting = self.pending.pop(name, None)
        if waiting is None:
            self.seen[name] = None
            while len(self.seen) > 1000:
                del self.seen[next(iter(self.seen))]
            return
        conn, request, _asked = waiting
        reply = self.watcher.answer(request)
        self.answers += 1
        if reply["unchanged"]:
            self.unchanged_answers += 1
        self._reply(conn, reply)

    def run(self) -> str:
        while not self.stop:
            left = self.idle_s - (time.monotonic() - self.last)
            if left <= 0:
                return f"idle for {self.idle_s:g} s"
            for key, _ in self.sel.select(timeout=min(left, 10)):
                if key.data == "accept":
                    try:
                        conn, _ = self.sock.accept()
                    except OSError:
                        continue
                    if not _same_user(conn):
                        conn.close()
                        continue
                    conn.setblocking(False)
                    self.sel.register(conn, selectors.EVENT_READ, "conn")
                elif key.data == "inotify":
                    gen = self.watcher.instance
                    for name in self.watcher.handle(self.watcher.ino.read()):
                        self._cookie(name)
                    if self.watcher.instance != gen:  # reset: whatever waited may be lost
                        for name in list(self.pending):
                            self._cookie(name)
                        self.seen.clear()
                else:
                    self._readable(key.fileobj)  # type: ignore[arg-type]
            if self.watcher.gone or self.watcher._root_id() is None:
                return "the root is gone"
            stale = time.monotonic() - 60
            for name in [n for n, (_c, _r, asked) in self.pending.items() if asked < stale]:
                self._close(self.pending.pop(name)[0])  # its cookie never came
            failed = self.watcher.failed
            if failed and time.monotonic() - failed > RETRY_S:
                return f"could not watch for {RETRY_S} s (a later call starts afresh)"
        return self.stop


def _same_user(conn: socket.socket) -> bool:
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return False
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def serve(root: bytes, rundir: bytes, version: str, idle_s: float) -> int:
    """Watch `root` until idle, gone or replaced; one per `rundir` (its lock)."""
    lock_fd = os.open(os.path.join(rundir, b"lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    for _ in range(20):  # a watcher that was told to exit may still hold it for a moment
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(0.05)
    else:
        return 0  # another watcher has this root
    log_path = os.path.join(rundir, b"log")

    def log(message: str) -> None:
        try:
            if os.path.getsize(log_path) > 1 << 20:
                os.replace(log_path, log_path + b".1")
        except OSError:
            pass
        with open(log_path, "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {message}\n")

    cookies = os.path.join(rundir, b"cookies")
    os.makedirs(cookies, mode=0o700, exist_ok=True)
    for name in os.listdir(cookies):
        try:
            os.unlink(os.path.join(cookies, name))
        except OSError:
            pass
    try:
        watcher = Watcher(root, cookies, log)
    except OSError as e:  # no inotify instance left (fs.inotify.max_user_instances)
        log(f"cannot watch: {e}")
        with open(os.path.join(rundir, b"failed"), "w") as fh:  # no new try for RETRY_S
            fh.write(f"{e}\n")
        return 1
    dirs_file = os.path.join(rundir, b"dirs")
    try:
        with open(dirs_file, "rb") as fh:
            dirs = sorted(set(fh.read().split(b"\0")))
        os.unlink(dirs_file)
    except OSError:
        dirs = [b""]
    log(f"started for {os.fsdecode(root)} (vp {version})")

    def terminate(_sig, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    why = "terminated"
    try:
        # Listening first: a call meanwhile waits for the answer rather than starting
        # another watcher; the answer comes after the watches are in place.
        server = Server(rundir, watcher, version, idle_s, log)
        watcher.set_dirs(dirs)
        with open(os.path.join(rundir, b"pid"), "w") as fh:
            fh.write(f"{os.getpid()}\n")
        why = server.run()
    finally:
        log(f"exiting: {why}")
        for path in (b"sock", b"pid"):
            try:
                os.unlink(os.path.join(rundir, path))
            except OSError:
                pass
    return 0


def main(argv: list[str]) -> int:
    root, rundir, version, idle = argv
    os.chdir("/")  # hold no directory of the user's busy
    return serve(os.fsencode(root), os.fsencode(rundir), version, float(idle))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
