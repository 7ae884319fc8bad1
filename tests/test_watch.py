"""The project watcher (vp/sync/watcher.py, vp/sync/watchclient.py) answers a big project's
warm no-change check, and every change is still sent: through the real warm `vp` path
against the sshd test host, with the watcher a real background process (its threshold
lowered by `VP_WATCH_MIN_FILES` so a small tree gets one)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.waiting import wait_for
from vp.sync import watchclient

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/sys/fs/inotify"), reason="the watcher needs Linux inotify"
)


def _age(path: Path, seconds: float = 60) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old), follow_symlinks=False)


class Watched:
    """The project of `ssh_project` and a way to talk to its watcher as vp does."""

    def __init__(self, env: VpEnv, monkeypatch: pytest.MonkeyPatch):
        self.env = env
        self.root = env.project
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("XDG_STATE_HOME", env.env["XDG_STATE_HOME"])
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)

    def run(self, *args: str, **kw):
        r = self.env.run(*args, **kw)
        assert r.returncode == 0, r.stderr
        return r

    def status(self) -> dict | None:
        return watchclient.status(self.root)

    def rundir(self) -> Path:
        path = watchclient.rundir(self.root, create=False)
        assert path is not None
        return path

    def log(self) -> str:
        path = self.rundir() / "log"
        return path.read_text() if path.exists() else ""

    def settle(self) -> dict:
        """Warm calls until one is answered by the watcher without a `stat` (the first
        starts it, a later one is vouched with its token): its status then."""
        before = (self.status() or {}).get("unchanged_answers", 0)
        for _ in range(8):
            self.run("true")
            status = self.status()
            if status and status["unchanged_answers"] > before:
                return status
            if status is None:  # starting: wait until it listens
                wait_for(self.status, timeout=30, what="the watcher to listen")
        raise AssertionError(f"no warm call was answered by the watcher; log:\n{self.log()}")

    def stop(self) -> None:
        status = self.status()
        if status:
            try:
                os.kill(status["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass


@pytest.fixture
def watched(ssh_project: VpEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[Watched]:
    # a loaded machine must not turn an answer into a fallback: the tests are of the answers
    ssh_project.env.update(VP_WATCH_MIN_FILES="1", VP_WATCH_IDLE_S="600", VP_WATCH_TIMEOUT_S="60")
    p = ssh_project.project
    (p / "data").mkdir()
    for name in ("data/x.txt", "y.txt", "gone.txt"):
        (p / name).write_text(name)
    (p / "link").symlink_to("y.txt")
    for path in (p / "data/x.txt", p / "y.txt", p / "gone.txt", p / "link", p / "data", p):
        _age(path)
    w = Watched(ssh_project, monkeypatch)
    yield w
    w.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def test_the_watcher_answers_the_no_change_check_and_every_change_is_sent(
    watched: Watched, remote_workdir: Path
) -> None:
    p = watched.root
    watched.settle()

    # in place, same size, mtime put back, right before the call: sent
    st = (p / "data/x.txt").stat()
    (p / "data/x.txt").write_text("DATA/X.TXT")
    os.utime(p / "data/x.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert watched.run("cat", "data/x.txt").stdout == "DATA/X.TXT"
    watched.settle()

    # a new empty directory, then a file in it (the directory is watched as it appears)
    (p / "data/new").mkdir()
    watched.run("true")
    watched.settle()
    (p / "data/new/z.txt").write_text("z")
    assert watched.run("cat", "data/new/z.txt").stdout == "z"
    watched.settle()

    # replaced by rename with a file of the same size and whole-second mtime
    now = int(time.time()) - 5
    os.utime(p / "y.txt", (now, now))
    watched.settle()
    replacement = p / "y.tmp"
    replacement.write_text("Y.TXT")
    os.utime(replacement, (now, now))
    os.replace(replacement, p / "y.txt")
    assert watched.run("cat", "y.txt").stdout == "Y.TXT"
    watched.settle()

    # a symlink pointed elsewhere
    (p / "link").unlink()
    (p / "link").symlink_to("data/x.txt")
    watched.run("true")
    assert os.readlink(remote_workdir / "link") == "data/x.txt"
    watched.settle()

    # a directory renamed, then a file edited in place under its new name
    (p / "data").rename(p / "data2")
    watched.run("true")
    assert (remote_workdir / "data2/x.txt").read_text() == "DATA/X.TXT"
    assert not (remote_workdir / "data/x.txt").exists()
    watched.settle()
    st = (p / "data2/x.txt").stat()
    (p / "data2/x.txt").write_text("data2/x.txt")
    os.utime(p / "data2/x.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert watched.run("cat", "data2/x.txt").stdout == "data2/x.txt"
    watched.settle()

    # a directory removed
    shutil.rmtree(p / "data2/new")
    watched.run("true")
    assert not (remote_workdir / "data2/new/z.txt").exists()
    watched.settle()

    # a deleted file
    (p / "gone.txt").unlink()
    watched.run("true")
    assert not (remote_workdir / "gone.txt").exists()
    status = watched.settle()
    assert status["refusal"] == ""


@pytest.mark.parametrize("rules", [".vpignore", "vp.toml"])
def test_an_ignore_rule_change_is_honoured_while_watched(
    watched: Watched, remote_workdir: Path, rules: str
) -> None:
    """An ignored directory is not watched; once the rules let it in, it is synced, and a
    later in-place edit in it is seen (its watch came with the new rules' walk)."""
    p = watched.root
    (p / "logs").mkdir()
    (p / "logs/run.log").write_text("one")
    toml = p / "vp.toml"
    plain = toml.read_text()
    if rules == ".vpignore":
        (p / ".vpignore").write_text("logs/\n")
    else:
        toml.write_text(plain.replace("[sync]\n", '[sync]\nextra_ignore = ["logs/"]\n'))
    watched.settle()
    assert not (remote_workdir / "logs").exists()
    (p / "logs/run.log").write_text("two")  # ignored: not a change to the synced tree
    watched.settle()

    if rules == ".vpignore":
        (p / ".vpignore").write_text("")
    else:
        toml.write_text(plain)
    assert watched.run("cat", "logs/run.log").stdout == "two"
    watched.settle()
    st = (p / "logs/run.log").stat()
    (p / "logs/run.log").write_text("six")
    os.utime(p / "logs/run.log", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert watched.run("cat", "logs/run.log").stdout == "six"
    watched.settle()


def test_a_file_written_through_its_other_name_is_sent(watched: Watched, tmp_path: Path) -> None:
    """A hard link whose other name is outside the project: written there, the project's
    directory hears nothing; the watcher watches such files themselves."""
    p = watched.root
    outside = tmp_path / "outside.txt"
    outside.write_text("one")
    os.link(outside, p / "data/linked.txt")
    assert watched.run("cat", "data/linked.txt").stdout == "one"
    watched.settle()
    st = outside.stat()
    outside.write_text("two")
    os.utime(outside, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert watched.run("cat", "data/linked.txt").stdout == "two"
    watched.settle()


def test_an_edit_made_while_the_watcher_lags_is_seen(watched: Watched) -> None:
    """The watcher is held up (stopped) while a file is edited and the next call asks: it
    answers only after reading its cookie's event, queued after the edit's, so it says
    "changed", and the edit is sent."""
    p = watched.root
    status = watched.settle()
    cookies = watched.rundir() / "cookies"
    os.kill(status["pid"], signal.SIGSTOP)
    try:
        st = (p / "y.txt").stat()
        (p / "y.txt").write_text("Y.TXT")
        os.utime(p / "y.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
        proc = watched.env.popen("cat", "y.txt", extra_env={"VP_WATCH_TIMEOUT_S": "120"})
        wait_for(lambda: any(cookies.iterdir()), what="the call's cookie", interval=0.005)
    finally:
        os.kill(status["pid"], signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out == b"Y.TXT", err
    after = watched.status()
    assert after is not None and after["answers"] > status["answers"]
    assert after["token"][1] > status["token"][1]


def test_one_watcher_per_root_and_it_exits_when_idle(watched: Watched, ssh_project: VpEnv) -> None:
    status = watched.settle()
    rundir = watched.rundir()
    second = subprocess.run(
        [sys.executable, "-I", "-S", str(watchclient.WATCHER), str(watched.root), str(rundir)]
        + [watchclient.version(), "600"],
        capture_output=True,
        timeout=60,
    )
    assert second.returncode == 0, second.stderr
    assert watched.status()["pid"] == status["pid"]  # the first one still serves

    os.kill(status["pid"], signal.SIGTERM)
    wait_for(lambda: not _alive(status["pid"]), what="the watcher to stop")
    ssh_project.env["VP_WATCH_IDLE_S"] = "1"
    watched.run("true")  # starts one that exits a second after its last question
    wait_for(lambda: "exiting: idle for 1 s" in watched.log(), what="the idle watcher's exit")


def test_a_lost_event_queue_forces_the_full_check(watched: Watched, remote_workdir: Path) -> None:
    """More events than the kernel queues (fs.inotify.max_queued_events) while the watcher
    cannot read: the queue overflows, the watcher starts over with a new token, and the
    next call checks every file."""
    p = watched.root
    (p / ".vpignore").write_text("*.s\n")
    spam = [p / "data/a.s", p / "data/b.s"]  # ignored files in a watched directory
    for path in spam:
        path.touch()
    status = watched.settle()
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    os.kill(status["pid"], signal.SIGSTOP)
    try:
        st = (p / "data/x.txt").stat()
        (p / "data/x.txt").write_text("DATA/X.TXT")
        os.utime(p / "data/x.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
        for i in range(limit + 100):  # alternating: the kernel merges only repeats
            os.utime(spam[i % 2], ns=(i, i))
    finally:
        os.kill(status["pid"], signal.SIGCONT)
    assert watched.run("cat", "data/x.txt").stdout == "DATA/X.TXT"
    wait_for(lambda: "reset: event queue overflow" in watched.log(), what="overflow in log")
    after = watched.settle()
    assert after["token"][0] != status["token"][0]  # a new instance: older tokens are stale


def test_a_killed_watcher_falls_back_to_the_full_check_and_comes_back(
    watched: Watched, remote_workdir: Path
) -> None:
    p = watched.root
    first = watched.settle()
    os.kill(first["pid"], signal.SIGKILL)
    wait_for(lambda: not _alive(first["pid"]), what="the watcher to die")
    st = (p / "y.txt").stat()
    (p / "y.txt").write_text("Y.TXT")
    os.utime(p / "y.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert watched.run("cat", "y.txt").stdout == "Y.TXT"
    second = watched.settle()
    assert second["pid"] != first["pid"] and second["token"][0] != first["token"][0]


def test_a_watcher_short_of_watches_holds_none_and_every_change_is_sent(
    watched: Watched, ssh_project: VpEnv
) -> None:
    """More directories than half the user's inotify watches (pretended small here): the
    watcher takes none (they are shared with every other tool), says so, and every call
    runs the full check."""
    ssh_project.env["VP_WATCH_MAX_WATCHES"] = "2"
    p = watched.root
    watched.run("true")
    status = wait_for(watched.status, what="the watcher to listen")
    for _ in range(3):
        watched.run("true")
    status = watched.status()
    assert "more than half" in status["refusal"] and status["watches"] == 1, status
    assert status["unchanged_answers"] == 0
    st = (p / "data/x.txt").stat()
    (p / "data/x.txt").write_text("DATA/X.TXT")
    os.utime(p / "data/x.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert watched.run("cat", "data/x.txt").stdout == "DATA/X.TXT"


def test_the_watcher_exits_when_the_root_is_removed(watched: Watched) -> None:
    status = watched.settle()
    rundir = watched.rundir()
    shutil.rmtree(watched.root)
    wait_for(lambda: not _alive(status["pid"]), what="the watcher to exit")
    assert "exiting: the root is gone" in (rundir / "log").read_text()
    assert not (rundir / "sock").exists()


def test_a_watcher_asked_by_another_vp_version_exits(watched: Watched) -> None:
    status = watched.settle()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(watched.rundir() / "sock"))
        sock.sendall(json.dumps({"protocol": 1, "version": "0.0.0-other", "op": "status"}).encode())
        sock.sendall(b"\n")
        assert b"another vp version" in sock.recv(4096)
    wait_for(lambda: not _alive(status["pid"]), what="the watcher to exit")


def test_no_watcher_when_disabled_or_the_project_is_small(
    ssh_project: VpEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ssh_project.project / "a.txt").write_text("a")
    w = Watched(ssh_project, monkeypatch)
    try:
        ssh_project.env.update(VP_WATCH_MIN_FILES="1", VP_NO_WATCH="1")
        for _ in range(3):
            w.run("true")
        ssh_project.env.pop("VP_NO_WATCH")
        ssh_project.env.pop("VP_WATCH_MIN_FILES")  # the default: 20 000 files
        for _ in range(3):
            w.run("true")
        assert w.status() is None and not (w.rundir() / "log").exists()
    finally:
        w.stop()
