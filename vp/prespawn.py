"""The warm run's ssh session, opened before vp imports the rest of itself.

A warm `vp CMD` spends most of its local time importing and checking (~80-110 ms here), and
its session's set-up (a channel on the shared master, then the host's login shell reading
its start-up files) takes about as long as a raw `ssh host true`. `vp.transport.EarlySession`
already overlaps that set-up with the no-change check; this module starts it a step earlier,
right after the interpreter, from what the previous run in the same folder used: so the
set-up overlaps vp's imports and config too.

The guess is only a guess: `start` spawns `sh -s` on the master the last run used when the
folder, every config file that could apply, vp's environment and the trust store are as they
were then, the master's socket answers and a session slot is free. Nothing is written to that
session until the full pipeline, after all its checks, asks for a session with exactly the
same argv (`claim`); anything else ends it unused (`discard`), and `sh -s` with an empty
script runs nothing. A session on an existing master opens no new connection, so a guess can
never reach a host vp would not connect to now. `VP_NO_PRESPAWN=1` turns it off.

Only the standard library's cheapest modules are imported here (no pathlib, json, hashlib):
this runs before everything else.
"""

from __future__ import annotations

import os
import sys

VERSION = 2
_ENV = ("HOME", "PATH", "USER", "LOGNAME", "SSH_AUTH_SOCK")
# Words in a variable's name that make its value a secret (vp.config.SECRET_ENV_NAME's).
_SECRET_WORDS = ("key", "token", "secret", "passw", "pwd", "credential", "auth", "private")

_key: tuple | None = None  # this call's key, computed by `start` (None: not a plain run)
_early: tuple | None = None  # (argv, proc, slot fd, master socket) spawned by `start`


def _xdg(var: str, fallback: str) -> str:
    """vp.paths._xdg without pathlib."""
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return value
    return os.path.join(os.path.expanduser("~"), fallback)


def _entry_file(cwd: str) -> str:
    import zlib

    state = os.path.join(_xdg("XDG_STATE_HOME", ".local/state"), "vp")
    return os.path.join(state, "dispatch", f"{zlib.crc32(cwd.encode()):08x}")


def _sig(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def _key_for(cwd: str) -> tuple:
    """Everything the previous run's choice of host could have depended on, cheaply: the
    folder, the project and pyproject files from here up, the user's config and trust store,
    and the environment variables vp reads."""
    # Names only for credentials (VP_REGISTRY_PASSWORD, API keys): nothing derived from a
    # secret may land in a file, and a new key value does not move the host anyway.
    env = tuple(
        (k, None if any(w in k.lower() for w in _SECRET_WORDS) else v)
        for k, v in sorted(os.environ.items())
        if k.startswith(("VP_", "XDG_")) or k in _ENV
    )
    files: list = []
    d = cwd
    while True:
        files.append(_sig(os.path.join(d, "vp.toml")))
        files.append(_sig(os.path.join(d, "pyproject.toml")))
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    config = os.path.join(_xdg("XDG_CONFIG_HOME", ".config"), "vp", "config.toml")
    trusted = os.path.join(_xdg("XDG_STATE_HOME", ".local/state"), "vp", "trusted.json")
    files += [_sig(config), _sig(trusted)]
    return (VERSION, sys.executable, cwd, env, tuple(files))


def _master_answers(socket_path: str) -> bool:
    import _socket  # socket.py costs ~3 ms more, before the spawn

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.connect(socket_path)
    except OSError:
        return False
    finally:
        s.close()
    return True


def free_slot(base: str, master: int, slots: int) -> int | None:
    """A session slot on master `master` of the masters at `base` that no vp holds, locked
    for this process (the fd), or None. vp.ssh.SshTransport keeps its slots the same way."""
    import fcntl

    for s in range(slots):
        fd = os.open(f"{base}.m{master}s{s}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return fd
    return None


def start(argv: list[str]) -> None:
    """Open the session the previous run here used, if `argv` is a plain `vp CMD ...` and
    nothing it could depend on has changed. Never raises: a miss costs a few stats."""
    global _key, _early
    if not argv or argv[0].startswith("-") or os.environ.get("VP_NO_PRESPAWN"):
        return
    try:
        cwd = os.getcwd()
        _key = _key_for(cwd)
        import marshal

        with open(_entry_file(cwd), "rb") as f:
            entry = marshal.loads(f.read())
        key, ssh_argv, subcommands, base, slots = entry
        if key != _key or argv[0] in subcommands or not _master_answers(base):
            return
        fd = free_slot(base, 0, slots)
        if fd is None:
            return
        import subprocess

        try:
            proc = subprocess.Popen(
                list(ssh_argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError:
            os.close(fd)
            return
        _early = (list(ssh_argv), proc, fd, base)
    except Exception:  # a missing, foreign or corrupt entry: the normal path
        return


def slot_for(base: str) -> int | None:
    """The session slot `start` holds on the master at `base`, handed over to its transport
    (which then holds it for the rest of the process)."""
    global _early
    if _early is None or _early[3] != base or _early[2] < 0:
        return None
    argv, proc, fd, _ = _early
    _early = (argv, proc, -1, base)
    return fd


def claim(argv: list[str]):
    """The session `start` opened, if it runs exactly `argv`; else it is ended and None."""
    global _early
    early, _early = _early, None
    if early is not None and early[0] == argv:
        return early[1]
    if early is not None:
        _end(early)
    return None


def discard() -> None:
    """End an unclaimed early session (the call did not run, or its master was replaced)."""
    global _early
    early, _early = _early, None
    if early is not None:
        _end(early)


def _end(early: tuple) -> None:
    _, proc, fd, _ = early
    end_session(proc)
    if fd >= 0:
        os.close(fd)


def end_session(proc) -> None:
    """End an `sh -s` session that got no script: the mux client goes, and the master closes
    the channel."""
    import subprocess

    proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def remember(ssh_argv: list[str], base: str, slots: int) -> None:
    """Record the session this run opened, for the next run from the same folder. Written
    only when it differs from what is there (a warm call that hit writes nothing)."""
    if _key is None:
        return
    try:
        import marshal

        from vp.commands import SUBCOMMANDS

        data = marshal.dumps((_key, tuple(ssh_argv), tuple(sorted(SUBCOMMANDS)), base, slots))
        path = _entry_file(_key[2])
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return
        except OSError:
            pass
        folder = os.path.dirname(path)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except Exception:  # a cache: never worth failing a run for
        return
