"""How vp reaches a host: run a shell script there, the rsync arguments to copy files, and
whether a copy goes by rsync or by tar.

`LocalTransport` (the `local` platform) and `vp.ssh.SshTransport` have the same surface, so
the pipeline in `vp.run` is written once and behaves the same on both.

Many container images (vast.ai, RunPod) have no rsync. Every copy path (sync up, sync down,
`vp upload`, `vp download`) asks `Transport.copy` to choose: rsync, unless the host is known
to lack it; the first rsync that fails for that reason is remembered under vp's state dir
(so only the first transfer to such a host pays for it) and the copy goes by tar instead.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

from vp import paths


class Transport:
    """Base: a host we can run `sh -s` on and rsync to."""

    label = "host"
    is_local = False
    # Shell expression for the directory holding run logs and exit codes on the host.
    runs_dir_sh = '"$HOME"/.vp/runs'

    def ensure(self) -> None:
        """Make sure a connection is up (ssh: the shared ControlMaster)."""

    def shell_argv(self) -> list[str]:
        """argv that runs `sh -s` on the host, reading the script from stdin."""
        raise NotImplementedError

    def take_extra_slot(self) -> bool:
        """Hold a second session slot on our master, if one is free right now: an upload can
        then run beside an open session instead of ending it."""
        return False

    def release_extra_slot(self) -> None:
        """Give back the slot `take_extra_slot` took."""

    def shared_master(self) -> tuple[str, int] | None:
        """(socket, session slots) of the first shared master, when this process holds one
        of its slots: where vp.prespawn may open the next run's session early."""
        return None

    def exec_argv(self, script: str) -> list[str]:
        """argv that runs `script` (no secrets: it is in argv) with stdin free for data."""
        raise NotImplementedError

    def rsync_argv(self) -> list[str]:
        """`rsync` plus the options that route it to this host (`-e ssh ...`)."""
        return ["rsync"]

    def remote_path(self, path: str) -> str:
        """rsync's notation for `path` on the host."""
        return path

    def workdir_sh(self, workdir: str) -> str:
        """`workdir` as a quoted shell word; relative and ~ paths are under the remote home."""
        if workdir.startswith("~/"):
            workdir = workdir[2:]
        elif workdir == "~":
            return '"$HOME"'
        if workdir.startswith("/"):
            return shlex.quote(workdir)
        return '"$HOME"/' + shlex.quote(workdir)

    def rsync_workdir(self, workdir: str) -> str:
        """Workdir as rsync sees it: relative paths are relative to the login home already."""
        if workdir.startswith("~/"):
            workdir = workdir[2:]
        return workdir.rstrip("/") + "/"

    def run(
        self, script: str, *, timeout: float | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a short script, capturing its output."""
        from vp import prespawn

        prespawn.discard()  # one session at a time on our slot: an early one waiting goes
        self.ensure()
        return subprocess.run(
            self.shell_argv(),
            input=script.encode(),
            capture_output=True,
            timeout=timeout,
            start_new_session=True,
        )

    def popen(
        self, script: str, session: subprocess.Popen[bytes] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long script (the run follower); the caller reads stdout as it comes.
        `session`: one `EarlySession` opened already, to run it in."""
        proc = session or subprocess.Popen(
            self.shell_argv(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # the terminal's Ctrl-C reaches vp, which decides
        )
        assert proc.stdin is not None
        try:
            proc.stdin.write(script.encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        return proc

    def interactive_argv(self, command: str | None = None) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        """Drop the shared connection (ssh -O exit)."""

    # rsync or tar ---------------------------------------------------------------
    def _no_rsync_marker(self) -> Path:
        digest = hashlib.sha1(self.label.encode()).hexdigest()[:16]
        return paths.ensure_private_dir(paths.state_dir() / "no-rsync") / digest

    def lacks_rsync(self) -> bool:
        """Is this host known to have no rsync (so copies go by tar)?"""
        return not self.is_local and self._no_rsync_marker().exists()

    def copy(
        self,
        rsync: Callable[[], subprocess.CompletedProcess[bytes]],
        tar: Callable[[], None],
        *,
        on_fallback: Callable[[], None] = lambda: None,
    ) -> subprocess.CompletedProcess[bytes] | None:
        """Copy with `rsync()`, or with `tar()` on a host that has no rsync. Returns rsync's
        result for the caller to judge, or None when tar did the copy."""
        if self.lacks_rsync():
            tar()
            return None
        proc = rsync()
        if proc.returncode == 0 or not rsync_missing(proc):
            return proc
        self._no_rsync_marker().touch()
        on_fallback()
        tar()
        return None


class EarlySession:
    """`sh -s` on the host, started before its script is known. Its set-up (a channel on the
    shared connection, the login shell's start-up files: most of a raw `ssh host true`) then
    overlaps vp's own work before a run, such as the no-change check of a big project; the
    run's launch script goes into it (`take`, then `Transport.popen(script, session)`).

    Before an upload, `make_room` keeps it open when a second session slot on the master is
    free for the copy, else `cancel`s it, so one vp never holds two sessions on one slot.
    Unused at exit, it ends by itself: its stdin closes with vp, and `sh -s` reads an empty
    script."""

    def __init__(self, transport: Transport):
        from vp import prespawn

        self._transport = transport
        transport.ensure()
        argv = transport.shell_argv()
        # Opened already by vp.prespawn at start-up, when the last run here used this argv.
        self._proc: subprocess.Popen[bytes] | None = prespawn.claim(argv)
        if self._proc is None:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            master = transport.shared_master()
            if master is not None:
                prespawn.remember(argv, *master)

    def take(self) -> subprocess.Popen[bytes] | None:
        proc, self._proc = self._proc, None
        return proc

    def make_room(self) -> None:
        """Before an upload: keep the session for the run when a second slot on the master is
        free for the copy (after an edit, the run then starts without a session set-up);
        else end it, so one vp never holds two sessions on one slot."""
        if self._proc is not None and not self._transport.take_extra_slot():
            self.cancel()

    def cancel(self) -> None:
        proc = self.take()
        if proc is not None:
            from vp.prespawn import end_session

            end_session(proc)


def rsync_missing(proc: subprocess.CompletedProcess[bytes]) -> bool:
    """Did rsync fail because the host has none (rather than for any other reason)?"""
    err = proc.stderr.decode(errors="replace")
    return any(
        s in err for s in ("rsync: not found", "rsync: command not found", "rsync: No such file")
    )


class LocalTransport(Transport):
    """The embedded `local` platform: the same pipeline, on this machine, no ssh."""

    label = "local"
    is_local = True

    def __init__(self) -> None:
        base = paths.ensure_private_dir(paths.data_dir() / "local")
        self.base = base
        self.runs_dir_sh = shlex.quote(str(base / "runs"))

    def shell_argv(self) -> list[str]:
        return ["sh", "-s"]

    def exec_argv(self, script: str) -> list[str]:
        return ["sh", "-c", script]

    def workdir_for(self, project: str, root: Path) -> str:
        import hashlib

        digest = hashlib.sha1(str(root).encode()).hexdigest()[:8]
        return str(self.base / "workspaces" / f"{project}-{digest}")

    def interactive_argv(self, command: str | None = None) -> list[str]:
        import os

        shell = os.environ.get("SHELL") or "/bin/sh"
        return [shell] if command is None else [shell, "-c", command]
