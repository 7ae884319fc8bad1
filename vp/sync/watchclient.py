"""vp's side of the project watcher (vp/sync/watcher.py): where it lives, when to start it,
and the one question a warm call asks it.

A big project (vp/sync/walkcache.py `WATCH_MIN_FILES` synced files or more in the walk
cache; `VP_WATCH_MIN_FILES` overrides) gets a watcher started in the background by the warm
call that finds none; from then on a warm call asks it "anything changed since the token
this walk cache was vouched with?" and, on "no", skips the `lstat` of every file. Anything
else — a change, no watcher, a watcher of another version, a reset after lost events, no
answer within `TIMEOUT` — is the check of vp/sync/walkcache.py, as before. `VP_NO_WATCH=1`
turns it off.

The watcher's files (socket, lock, cookies, log) are in a directory of vp's private runtime
dir (`vp.paths.control_dir()`: 0700, owner checked), one per project root.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

TIMEOUT = 0.3  # s: a watcher that cannot answer by then is slower than the check it saves
IDLE_S = 1800  # a watcher nobody asked for this long exits
RETRY_S = 600  # after a watcher could not start, the next try waits this long


def enabled() -> bool:
    if os.environ.get("VP_NO_WATCH", "") not in ("", "0"):
        return False
    return sys.platform.startswith("linux") and os.path.isdir("/proc/sys/fs/inotify")


def rundir(root: Path, create: bool = True) -> Path | None:
    """The watcher's directory for `root`, or None when vp's runtime dir is unusable."""
    from vp import paths
    from vp.errors import VpError

    digest = hashlib.sha1(os.fsencode(os.path.abspath(root))).hexdigest()[:16]
    try:
        path = paths.control_dir() / f"w-{digest}"
        if create:
            path.mkdir(mode=0o700, exist_ok=True)
    except (OSError, VpError):
        return None
    return path


class Answer:
    """The watcher's reply: `token` now; `unchanged` since the token asked about; `known`:
    the directories asked about are the ones it watches, all of them; `refused`: it cannot
    watch this tree (a network filesystem, the watch limit)."""

    def __init__(self, token: list, unchanged: bool, known: bool, refused: bool = False):
        self.token, self.unchanged, self.known, self.refused = token, unchanged, known, refused


class NoWatcher(Exception):
    """Nothing listens for this root: start one."""


WATCHER = Path(__file__).with_name("watcher.py")


def version() -> str:
    """vp's version and the watcher's code: a watcher of any other exits when asked."""
    from vp import __version__

    try:
        return f"{__version__}+{os.stat(WATCHER).st_mtime_ns}"
    except OSError:
        return __version__


def _request(path: Path, message: dict, cookie: str | None, wait: bool = True) -> dict | None:
    message = {"protocol": 1, "version": version(), **message}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:  # VP_WATCH_TIMEOUT_S: for tests that hold the watcher up on purpose
        sock.settimeout(float(os.environ.get("VP_WATCH_TIMEOUT_S") or TIMEOUT))
    except ValueError:
        sock.settimeout(TIMEOUT)
    try:
        try:
            sock.connect(str(path / "sock"))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise NoWatcher from e
        sock.sendall(json.dumps(message).encode() + b"\n")
        if cookie is not None:
            # After the question: the watcher answers once it reads this file's creation,
            # so it has read every event queued before it.
            fd = os.open(path / "cookies" / cookie, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
        if not wait:
            return None
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
        reply = json.loads(data)
        return reply if isinstance(reply, dict) else None
    except (OSError, ValueError):
        return None
    finally:
        sock.close()


def ask(root: Path, since: list | None, dirs_digest: str) -> Answer | None:
    """Ask the root's watcher; None when it did not answer (no watcher: `NoWatcher`)."""
    path = rundir(root)
    if path is None:
        return None
    try:
        st = os.stat(root)
    except OSError:
        return None
    cookie = f"c{os.getpid()}-{os.urandom(6).hex()}"
    message = {
        "op": "query",
        "cookie": cookie,
        "since": since,
        "digest": dirs_digest,
        "root": [st.st_dev, st.st_ino],
    }
    reply = _request(path, message, cookie)
    if reply is None or "token" not in reply:
        return None
    return Answer(
        list(reply["token"]),
        reply.get("unchanged") is True,
        reply.get("known") is True,
        bool(reply.get("refusal")),
    )


def tell_dirs(root: Path, dirs) -> bool:
    """Tell the root's watcher which directories to watch (the walk's); False when none
    listens. Changing its watches is a change to it (a new generation): no token it gave
    before vouches for anything."""
    path = rundir(root)
    if path is None:
        return True
    try:
        _request(path, {"op": "dirs", "dirs": sorted(dirs)}, None, wait=False)
    except NoWatcher:
        return False
    return True


def start(root: Path, dirs) -> None:
    """Start a watcher for `root` in the background (its own session, no terminal, nothing
    inherited), told to watch `dirs`. If one runs already, the new one exits at its lock."""
    path = rundir(root)
    if path is None:
        return
    try:  # the last one could not watch at all (no inotify instance left): not again yet
        if os.stat(path / "failed").st_mtime > time.time() - RETRY_S:
            return
    except OSError:
        pass
    tmp = path / f".dirs.{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(b"\0".join(os.fsencode(d) for d in sorted(dirs)))
        os.replace(tmp, path / "dirs")
        import subprocess

        idle = os.environ.get("VP_WATCH_IDLE_S") or str(IDLE_S)
        subprocess.Popen(
            [sys.executable, "-I", "-S", str(WATCHER), str(root), str(path), version(), idle],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    except OSError:
        pass


def status(root: Path) -> dict | None:
    """The watcher's own account (pid, token, watches, answers that vouched); for tests and
    `vp doctor`-like diagnostics."""
    path = rundir(root, create=False)
    if path is None:
        return None
    try:
        return _request(path, {"op": "status"}, None)
    except NoWatcher:
        return None


class Check:
    """One warm call's dealings with the root's watcher, around the walk cache's check."""

    def __init__(self, root: Path, dirs: dict) -> None:
        self.root, self.dirs = root, dirs
        self.answer: Answer | None = None
        self.asked = ""
        self.listening = True

    def unchanged_since(self, watch: list | None) -> bool:
        """Does the watcher say nothing changed since `watch` ([instance, generation, digest
        of the cached directories]), having read every event queued before this question?"""
        try:
            if watch:
                self.asked = watch[2]
            else:
                from vp.sync.watcher import digest

                self.asked = digest(self.dirs)
            self.answer = ask(self.root, watch[:2] if watch else None, self.asked)
        except NoWatcher:
            self.listening = False
        except Exception:  # noqa: BLE001 - a watcher never breaks a call: the full check runs
            self.answer = None
        return self.answer is not None and self.answer.unchanged

    def token_for(self, dirs: dict) -> list | None:
        """After the full check: the token to vouch its walk (`dirs`) with — the answer's,
        if this walk started after it and walked exactly the directories asked about, all of
        them watched. Else the watcher is told the walk's directories (a later call's walk,
        once they are watched, can be vouched), or started."""
        from vp.sync.watcher import digest

        try:
            if not self.listening:
                start(self.root, dirs)
                return None
            answer = self.answer
            if answer is None:  # no answer in time: the next call asks again
                return None
            now = digest(dirs)
            if answer.known and now == self.asked:
                return [*answer.token, now]
            if not answer.refused:
                tell_dirs(self.root, dirs)
        except Exception:  # noqa: BLE001 - as above
            pass
        return None

    def tell(self, dirs: dict) -> None:
        """After a walk without a cache: the watcher watches its directories from now on."""
        try:
            if not tell_dirs(self.root, dirs):
                start(self.root, dirs)
        except Exception:  # noqa: BLE001 - as above
            pass
