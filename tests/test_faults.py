"""Reliability under real faults: links cut in a network namespace, sshd restarted, hosts that
vanish, a full remote disk, local edits racing a run, two runs at once, and Ctrl-C in every
phase. Every test drives `vp` as a real process against real sshd hosts (tests/sshhost.py)
or a provider emulator, and asserts only what a user would see."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import VpEnv, on_vast
from tests.requires import require, requires
from tests.sshhost import SshHost, _descendants
from tests.tcpdelay import DelayProxy
from tests.waiting import wait_for

try:
    from tests.emulators.vast import vast_emulator  # noqa: F401 - fixture
except ImportError:  # pragma: no cover - vastai missing
    vast_emulator = None

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------------------- helpers


class Running:
    """A `vp` process whose stdout and stderr are collected as they arrive."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.out = bytearray()
        self.err = bytearray()
        self._threads = [
            threading.Thread(target=self._drain, args=(proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._drain, args=(proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _drain(stream, sink: bytearray) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            sink.extend(chunk)

    def wait_for(self, what: Callable[[], object], timeout: float = 30, label: str = "") -> None:
        """`tests.waiting.wait_for`, ending early (with vp's output) once vp has exited."""
        wait_for(what, timeout, label or None, gave_up=self._exited, context=self._seen)

    def _exited(self) -> str | None:
        if self.proc.poll() is None:
            return None
        for t in self._threads:  # everything vp wrote is in out/err once the drains end
            t.join(timeout=10)
        return f"vp exited ({self.proc.returncode})"

    def _seen(self) -> str:
        return f"stdout={bytes(self.out)!r}\nstderr={self.stderr}"

    def wait_out(self, text: bytes, timeout: float = 30) -> None:
        self.wait_for(lambda: text in self.out, timeout, f"stdout {text!r}")

    def wait_err(self, text: str, timeout: float = 30) -> None:
        self.wait_for(lambda: text.encode() in self.err, timeout, f"stderr {text!r}")

    def finish(self, timeout: float = 90) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"vp did not finish:\nstderr={self.stderr}") from None
        for t in self._threads:
            t.join(timeout=10)
        return code

    @property
    def stdout(self) -> str:
        return self.out.decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.decode(errors="replace")


def start(env: VpEnv, *args: str, **kw) -> Running:
    return Running(env.popen(*args, **kw))


def tree_digest(root: Path) -> dict[str, str]:
    """path -> content hash (or link target) of every file under `root`."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "->" + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def leftovers(root: Path) -> list[str]:
    """Anything a half-finished download could leave: staging dirs, rsync temp files."""
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if name.startswith(".vp-dl-") or (name.startswith(".") and ".~tmp~" in name):
                bad.append(os.path.join(dirpath, name))
            elif name.startswith(".") and len(name.split(".")) >= 3 and name[-7:-6] == ".":
                bad.append(os.path.join(dirpath, name))  # rsync's .NAME.XXXXXX temp files
    return bad


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("vp: error:")]


def counting_script(n: int, delay: float, code: int) -> str:
    return f"for i in $(seq 1 {n}); do echo line$i; sleep {delay}; done; exit {code}"


def expected_lines(n: int) -> list[str]:
    return [f"line{i}" for i in range(1, n + 1)]


def set_config(env: VpEnv, section: str, key: str, value: str) -> None:
    """Set `key = value` in [section] of the project's vp.toml (keys are unique in it)."""
    path = env.project / "vp.toml"
    lines = path.read_text().splitlines()
    header = f"[{section}]"
    lines = [ln for ln in lines if not ln.replace(" ", "").startswith(f"{key}=")]
    if header in lines:
        lines.insert(lines.index(header) + 1, f"{key} = {value}")
    else:
        lines += [header, f"{key} = {value}"]
    path.write_text("\n".join(lines) + "\n")


def sshd_sessions(host: SshHost) -> list[int]:
    """The per-connection sshd processes below a host's listener (not the commands)."""
    assert host.pid is not None
    found = []
    for pid in _descendants(host.pid):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("sshd"):
            found.append(pid)
    return found


def restart_sshd_keeping_jobs(host: SshHost, while_down: Callable[[], None]) -> None:
    """`systemctl restart ssh` with its sessions killed too, but the jobs they started
    detached (vp's runs) left alone: what an sshd upgrade or an OOM kill of sshd does.
    sshd comes back once `while_down` returns: until then connections are refused."""
    proc = host._proc
    assert proc is not None
    for pid in sshd_sessions(host):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()
    host._proc = None
    try:
        while_down()
    finally:
        host._start(keep_port=True)


def ssh_masters(env: VpEnv) -> set[int]:
    """The ssh ControlMaster processes of this test's vp (alive or still connecting)."""
    out = subprocess.run(["pgrep", "-f", "ControlMaster=yes"], capture_output=True, text=True)
    found = set()
    for pid in out.stdout.split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(env.home).encode() in cmdline:
            found.add(int(pid))
    return found


# ------------------------------------------------------------------------------- 1-3 network


def test_link_cut_mid_run_reconnects_and_streams_every_line_once(
    vp_env: VpEnv, netns_host: SshHost, remote_workdir: Path
) -> None:
    vp_env.use_ssh_host(netns_host, remote_workdir)
    run = start(vp_env, "sh", "-c", counting_script(40, 0.5, 7))
    run.wait_out(b"line3\n")
    before = ssh_masters(vp_env)
    netns_host.cut_link()
    try:
        # ServerAlive 5 s x 3: after ~15 s vp sees the link as dead; keep it down until vp
        # is trying a new connection, which cannot get through yet.
        run.wait_err("reconnecting", timeout=25)
        run.wait_for(lambda: ssh_masters(vp_env) - before, 30, "vp's first reconnect attempt")
    finally:
        netns_host.restore_link()
    code = run.finish()
    assert run.stdout.split() == expected_lines(40), run.stderr
    assert code == 7, run.stderr
    assert not error_lines(run.stderr)


def test_sshd_restart_mid_run_reconnects(
    vp_env: VpEnv, ssh_host: SshHost, remote_workdir: Path
) -> None:
    vp_env.use_ssh_host(ssh_host, remote_workdir)
    run = start(vp_env, "sh", "-c", counting_script(12, 0.4, 3))
    run.wait_out(b"line2\n")
    # sshd stays down until vp has seen the connection drop
    restart_sshd_keeping_jobs(ssh_host, while_down=lambda: run.wait_err("reconnecting"))
    code = run.finish()
    assert run.stdout.split() == expected_lines(12), run.stderr
    assert code == 3, run.stderr
    assert "reconnecting" in run.stderr


def test_host_rebooted_mid_run_says_the_run_was_lost(
    vp_env: VpEnv, ssh_host: SshHost, remote_workdir: Path
) -> None:
    # SshHost.restart() kills sshd and everything it started: a reboot, the run dies with it.
    vp_env.use_ssh_host(ssh_host, remote_workdir)
    run = start(vp_env, "sh", "-c", counting_script(30, 0.3, 0))
    run.wait_out(b"line3\n")
    ssh_host.restart()
    code = run.finish()
    lines = run.stdout.split()
    assert lines == expected_lines(len(lines)) and len(lines) < 30
    assert code == 1
    [error] = error_lines(run.stderr)
    assert "ended without an exit status" in error and "testhost" in error, run.stderr
    assert "Traceback" not in run.stderr


def test_host_gone_for_good_stops_after_reconnect_timeout(
    vp_env: VpEnv, ssh_host: SshHost, remote_workdir: Path
) -> None:
    vp_env.use_ssh_host(ssh_host, remote_workdir)
    set_config(vp_env, "ssh", "reconnect_timeout", "4")
    r = vp_env.run("sh", "-c", "echo kept > earlier.txt")
    assert r.returncode == 0, r.stderr
    run = start(vp_env, "sh", "-c", counting_script(60, 0.3, 0))
    run.wait_out(b"line3\n")
    t0 = time.monotonic()
    ssh_host.stop()
    code = run.finish(timeout=60)
    assert time.monotonic() - t0 < 30
    assert code == 1
    lines = run.stdout.split()
    assert lines[:3] == expected_lines(3) and lines == expected_lines(len(lines))
    [error] = error_lines(run.stderr)
    # stop() kills the run first, sshd after: the last follow session may see the run die
    # (reported as lost) or only the connection drop (reported after reconnect_timeout).
    said = "lost the connection" in error or "ended without an exit status" in error
    assert "testhost" in error and said, run.stderr
    assert "Traceback" not in run.stderr
    assert (vp_env.project / "earlier.txt").read_text() == "kept\n"  # earlier results stay
    assert not leftovers(vp_env.project)


@requires(vast_emulator is not None, "vastai is not installed")
def test_cloud_host_destroyed_mid_run_is_reported_at_once(
    vp_env: VpEnv,
    vast_emulator,  # noqa: F811
    remote_workdir: Path,
) -> None:
    vast_emulator.boot_delay = 0.3
    on_vast(vp_env, vast_emulator, remote_workdir, extra="[ssh]\nreconnect_timeout = 120\n")
    r = vp_env.run("sh", "-c", "echo kept > earlier.txt")
    assert r.returncode == 0, r.stderr
    [iid] = list(vast_emulator.instances)
    run = start(vp_env, "sh", "-c", counting_script(100, 0.3, 0))
    run.wait_out(b"line3\n")
    t0 = time.monotonic()
    vast_emulator.destroy(iid)  # from the provider's console: gone, with the run on it
    code = run.finish(timeout=100)
    assert time.monotonic() - t0 < 30, "vp waited for the reconnect timeout"
    assert code == 1, run.stderr
    lines = run.stdout.split()
    assert lines[:3] == expected_lines(3) and lines == expected_lines(len(lines))
    [error] = error_lines(run.stderr)
    # vp either finds the connection gone (and the provider says why) or, if the last
    # follow session saw the run's processes die first, the run lost: both name the host.
    said = f"{iid}) no longer exists" in error or ("vp-proj ended without an exit status" in error)
    assert said, run.stderr
    assert "Traceback" not in run.stderr
    assert (vp_env.project / "earlier.txt").read_text() == "kept\n"


# ------------------------------------------------------------------------------- 4 disk full


@pytest.fixture
def tiny_remote_disk(remote_workdir: Path):
    remote_workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(remote_workdir)],
        capture_output=True,
        text=True,
    )
    require(proc.returncode == 0, f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield remote_workdir
    finally:
        subprocess.run(["umount", "-l", str(remote_workdir)], check=False)


def test_remote_disk_full_during_upload(
    vp_env: VpEnv, ssh_host: SshHost, tiny_remote_disk: Path
) -> None:
    vp_env.use_ssh_host(ssh_host, tiny_remote_disk)
    p = vp_env.project
    (p / "small.py").write_text("print('hi')\n")
    (p / "data").mkdir()
    (p / "data" / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    before = tree_digest(p)
    r = vp_env.run("python3", "small.py")
    assert r.returncode == 1, r.stderr
    [error] = error_lines(r.stderr)
    assert "testhost" in error and "disk is full" in error, r.stderr
    assert "Traceback" not in r.stderr
    assert tree_digest(p) == before
    assert r.stdout == ""  # nothing ran


# ------------------------------------------------------------------------------- 5 local edits


def test_local_edit_and_create_during_run_are_kept(
    ssh_project: VpEnv, remote_workdir: Path
) -> None:
    p = ssh_project.project
    (p / "notes.txt").write_text("original\n")
    (p / "untouched.txt").write_text("original\n")
    # the command writes its results only once the local edits are made (the test says so
    # through a file on the host): the edits always race the run, never its download
    script = (
        "echo started; while [ ! -e .edited ]; do sleep 0.05; done; rm .edited; "
        "echo remote > notes.txt; echo remote > untouched.txt; echo remote > new.txt; "
        "mkdir -p out; echo remote > out/fresh.txt"
    )
    run = start(ssh_project, "sh", "-c", script)
    run.wait_out(b"started\n")
    (p / "notes.txt").write_text("my local edit\n")
    (p / "new.txt").write_text("made locally\n")
    (remote_workdir / ".edited").touch()
    code = run.finish()
    assert code == 0, run.stderr
    assert (p / "notes.txt").read_text() == "my local edit\n"
    assert (p / "notes.txt.vp-remote").read_text() == "remote\n"
    assert (p / "new.txt").read_text() == "made locally\n"
    assert (p / "new.txt.vp-remote").read_text() == "remote\n"
    assert (p / "untouched.txt").read_text() == "remote\n"
    assert (p / "out" / "fresh.txt").read_text() == "remote\n"
    assert not (p / "untouched.txt.vp-remote").exists()
    assert "new.txt.vp-remote" in run.stderr and "notes.txt.vp-remote" in run.stderr
    assert not leftovers(p)
    # next run: the local versions win on the host, and the conflict copies never go up
    r = ssh_project.run("sh", "-c", "cat notes.txt new.txt; ls")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("my local edit\nmade locally\n")
    assert ".vp-remote" not in r.stdout


# ------------------------------------------------------------------------------- 6 two at once


def test_two_runs_at_once_on_one_host(ssh_project: VpEnv, remote_workdir: Path) -> None:
    (ssh_project.project / "main.py").write_text("print('x')\n")
    a = start(
        ssh_project,
        "sh",
        "-c",
        "for i in 1 2 3 4; do echo A$i; sleep 0.3; done; echo a > a.txt; exit 3",
    )
    b = start(
        ssh_project,
        "sh",
        "-c",
        "for i in 1 2 3 4; do echo B$i; sleep 0.3; done; echo b > b.txt; exit 5",
    )
    assert a.finish() == 3, a.stderr
    assert b.finish() == 5, b.stderr
    assert a.stdout.split() == ["A1", "A2", "A3", "A4"]
    assert b.stdout.split() == ["B1", "B2", "B3", "B4"]
    p = ssh_project.project
    assert (p / "a.txt").read_text() == "a\n" and (p / "b.txt").read_text() == "b\n"
    # the other run's result is not a conflict with this one's
    assert not list(p.glob("*.vp-remote")), a.stderr + b.stderr
    assert not leftovers(p)
    r = ssh_project.run("-o", "json", "runs")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert sorted((row["exit_code"], row["status"]) for row in rows) == [(3, "done"), (5, "done")]
    assert len({row["id"] for row in rows}) == 2
    db = sqlite3.connect(ssh_project.home / ".local/state/vp/state.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


# ------------------------------------------------------------------------------- 7 Ctrl-C


@pytest.fixture
def slow_project(vp_env: VpEnv, ssh_host: SshHost, remote_workdir: Path):
    """The project's host behind a 100 ms-each-way link: ~10 MB/s through ssh's window."""
    with DelayProxy("127.0.0.1", ssh_host.port, delay_ms=100) as proxy:
        vp_env.use_ssh_host(ssh_host, remote_workdir)
        config = vp_env.home / ".ssh" / "config"
        config.write_text(config.read_text().replace(f"Port {ssh_host.port}", f"Port {proxy.port}"))
        yield vp_env


def partial_bytes(root: Path, name: str = "big.bin") -> int:
    """Bytes of `name` under `root` still being written (rsync's .NAME.XXXXXX temp file)."""
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            if f.startswith(f".{name}."):
                with contextlib.suppress(FileNotFoundError):  # renamed into place meanwhile
                    total += (Path(d) / f).stat().st_size
    return total


def test_ctrl_c_during_upload(slow_project: VpEnv, remote_workdir: Path) -> None:
    p = slow_project.project
    (p / "main.py").write_text("print('never')\n")
    with open(p / "big.bin", "wb") as f:
        f.truncate(200 * 1024 * 1024)
    before = tree_digest(p)
    run = start(slow_project, "python3", "main.py")
    run.wait_err("syncing")
    # rsync writes a .big.bin.XXXXXX temp file; a first upload's tar stream writes big.bin
    arriving = lambda: partial_bytes(remote_workdir) or (remote_workdir / "big.bin").exists()  # noqa: E731
    run.wait_for(arriving, 30, "big.bin arriving on the host")
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    code = run.finish(timeout=30)
    assert time.monotonic() - t0 < 10
    assert code == 130, run.stderr
    assert "never" not in run.stdout
    assert "Traceback" not in run.stderr
    assert tree_digest(p) == before


def test_ctrl_c_during_run_then_next_run_is_clean(ssh_project: VpEnv) -> None:
    p = ssh_project.project
    script = (
        "trap 'echo partial > result.txt; exit 130' INT; echo ready; while true; do sleep 0.1; done"
    )
    run = start(ssh_project, "bash", "-c", script)
    run.wait_out(b"ready\n")
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 130, run.stderr
    assert (p / "result.txt").read_text() == "partial\n"
    assert not leftovers(p)
    r = ssh_project.run("-o", "json", "runs")
    [row] = json.loads(r.stdout)
    assert row["status"] == "interrupted"


def test_ctrl_c_during_download_leaves_no_partial_file(slow_project: VpEnv) -> None:
    p = slow_project.project
    (p / "main.py").write_text("x = 1\n")
    # not zeros: a sparse download's temp file keeps size 0 until rsync closes it
    made = "head -c 150000000 /dev/zero | tr '\\0' x > big.bin; echo made"
    run = start(slow_project, "sh", "-c", made)
    run.wait_err("fetching")
    run.wait_for(lambda: partial_bytes(p), 30, "big.bin arriving in the staging dir")
    run.proc.send_signal(signal.SIGINT)
    code = run.finish(timeout=30)
    assert code == 130, run.stderr
    assert "made" in run.stdout
    assert "Traceback" not in run.stderr
    big = p / "big.bin"
    assert not big.exists() or big.stat().st_size == 150000000
    assert not leftovers(p), leftovers(p)


@requires(vast_emulator is not None, "vastai is not installed")
def test_ctrl_c_during_create_leaves_no_instance(
    vp_env: VpEnv,
    vast_emulator,  # noqa: F811
    remote_workdir: Path,
) -> None:
    vast_emulator.boot_delay = 60.0
    on_vast(vp_env, vast_emulator, remote_workdir, ready_timeout=90)
    run = start(vp_env, "echo", "hi")
    run.wait_for(lambda: bool(vast_emulator.instances), 30, "an instance")
    run.wait_err("to boot")
    run.proc.send_signal(signal.SIGINT)
    code = run.finish(timeout=30)
    assert code == 130, run.stderr
    assert vast_emulator.instances == {}
    assert vast_emulator.live_sshd() == 0
    assert "Traceback" not in run.stderr
    keys = vp_env.home / ".local/state/vp/keys"
    assert not keys.exists() or list(keys.iterdir()) == []  # the dead host's key is gone too
