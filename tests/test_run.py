"""The run pipeline end to end: `vp CMD` against a real sshd host, as a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.sshhost import SshHost
from tests.waiting import wait_for


def _runs_dir() -> Path:
    return Path.home() / ".vp" / "runs"  # the test host is root on this machine


def _wait_for_log(run_id: str, text: str) -> None:
    """Until the detached run has written `text` to its log on the host: it is running."""
    log = _runs_dir() / run_id / "log"
    wait_for(lambda: log.exists() and text in log.read_text(), 30, f"{text!r} in {log}")


def test_round_trip_output_and_results(ssh_project: VpEnv, remote_workdir: Path) -> None:
    (ssh_project.project / "train.py").write_text(
        "import pathlib\nprint('training')\npathlib.Path('out').mkdir(exist_ok=True)\n"
        "pathlib.Path('out/model.txt').write_text('weights')\n"
    )
    r = ssh_project.run("python3", "train.py")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "training\n"
    assert (remote_workdir / "train.py").read_text().startswith("import pathlib")
    assert (ssh_project.project / "out" / "model.txt").read_text() == "weights"


@pytest.mark.parametrize("code", [0, 3, 127])
def test_exit_code_is_the_remote_one(ssh_project: VpEnv, code: int) -> None:
    r = ssh_project.run("sh", "-c", f"exit {code}")
    assert r.returncode == code, r.stderr


def test_unknown_command_exits_127(ssh_project: VpEnv) -> None:
    r = ssh_project.run("no-such-command-vp-test")
    assert r.returncode == 127
    assert "not found" in r.stdout


def test_arguments_keep_their_quoting(ssh_project: VpEnv) -> None:
    r = ssh_project.run(
        "python3", "-c", "import sys; print(sys.argv[1:])", "a b; c", "$HOME", "'q'"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['a b; c', '$HOME', \"'q'\"]"
    r = ssh_project.run("python3", "-c", "print('a b; c')")
    assert r.stdout == "a b; c\n"


def test_single_argument_is_shell_text(ssh_project: VpEnv, remote_workdir: Path) -> None:
    r = ssh_project.run("mkdir -p sub && cd sub && pwd && echo $((6*7))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(remote_workdir / "sub"), "42"]


def test_env_section_is_exported(ssh_project: VpEnv) -> None:
    cfg = ssh_project.project / "vp.toml"
    cfg.write_text(cfg.read_text() + '\n[env]\nGREETING = "hi there; $(rm -rf /)"\n')
    r = ssh_project.run("sh", "-c", 'printf "%s|%s\\n" "$GREETING" "$VP_RUN_ID"')
    assert r.returncode == 0, r.stderr
    greeting, run_id = r.stdout.strip().split("|")
    assert greeting == "hi there; $(rm -rf /)"
    assert len(run_id) == 8


def test_output_is_streamed_live_and_in_order(ssh_project: VpEnv, remote_workdir: Path) -> None:
    # The command holds after its first lines until the test has read them: output that
    # came only at the end would never arrive (and the test time out), not arrive late.
    script = (
        "for i in 1 2 3; do echo out$i; echo err$i >&2; "
        "while [ $i = 1 ] && [ ! -e seen ]; do sleep 0.05; done; done; echo last"
    )
    proc = ssh_project.popen("sh", "-c", script)
    assert proc.stdout is not None
    give_up = threading.Timer(60, proc.kill)  # a held-back line fails the test, not hangs it
    give_up.start()
    try:
        first = proc.stdout.readline()
    finally:
        give_up.cancel()
    assert first == b"out1\n", "the first line did not arrive while the command ran"
    (remote_workdir / "seen").touch()
    rest = proc.stdout.read()  # not communicate(): readline() already buffered some output
    proc.wait(timeout=60)
    assert (first + rest).decode().split() == [
        "out1",
        "err1",
        "out2",
        "err2",
        "out3",
        "err3",
        "last",
    ]
    assert proc.returncode == 0


def test_run_survives_killing_the_control_master(ssh_project: VpEnv) -> None:
    script = "for i in $(seq 1 8); do echo line$i; sleep 0.5; done; exit 5"
    proc = ssh_project.popen("sh", "-c", script)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"line1\n"
    # kill every ssh ControlMaster of this test's vp (its control dir is private to it)
    masters = subprocess.run(
        ["pgrep", "-f", f"ControlPath=/tmp/vp-{os.getuid()}-"], capture_output=True, text=True
    ).stdout.split()
    killed = 0
    for pid in masters:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"ControlMaster=yes" in cmdline and str(ssh_project.home).encode() in cmdline:
            os.kill(int(pid), signal.SIGKILL)
            killed += 1
    assert killed == 1
    rest = proc.stdout.read()
    proc.wait(timeout=90)
    err = proc.stderr.read()
    lines = (b"line1\n" + rest).decode().split()
    assert lines == [f"line{i}" for i in range(1, 9)], err
    assert proc.returncode == 5, err


def test_ctrl_c_interrupts_the_remote_command(ssh_project: VpEnv, remote_workdir: Path) -> None:
    script = (
        "trap 'echo got-int > interrupted.txt; exit 130' INT; echo ready; "
        "while true; do sleep 0.1; done"
    )
    proc = ssh_project.popen("bash", "-c", script)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    proc.stdout.read()
    proc.wait(timeout=60)
    err = proc.stderr.read()
    assert proc.returncode == 130, err
    assert b"Ctrl-C" in err
    assert (remote_workdir / "interrupted.txt").read_text() == "got-int\n"
    # what existed was downloaded
    assert (ssh_project.project / "interrupted.txt").read_text() == "got-int\n"


def test_detach_then_logs_follow(ssh_project: VpEnv) -> None:
    r = ssh_project.run("--detach", "sh", "-c", "echo one; sleep 1; echo two; exit 4")
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.strip()
    assert len(run_id) == 8
    f = ssh_project.run("logs", "-f", run_id)
    assert f.stdout == "one\ntwo\n"
    assert f.returncode == 4
    logs = ssh_project.run("logs", run_id[:5])
    assert logs.stdout == "one\ntwo\n"
    runs = ssh_project.run("-o", "json", "runs")
    import json

    rows = json.loads(runs.stdout)
    assert rows[0]["id"] == run_id and rows[0]["exit_code"] == 4


def test_bad_run_id_is_a_usage_error(ssh_project: VpEnv) -> None:
    r = ssh_project.run("logs", "../../etc/passwd")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("vp: error: '../../etc/passwd' is not a run id")


def test_unreachable_host_is_one_line(vp_env: VpEnv) -> None:
    vp_env.write_config('[host]\nplatform = "ssh"\n[ssh]\nhost = "root@127.0.0.1:1"\n')
    r = vp_env.run("true")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines()[0].startswith("vp: error: cannot connect to root@127.0.0.1:1")


def test_changed_host_key_is_refused(ssh_project: VpEnv) -> None:
    assert ssh_project.run("true").returncode == 0
    host = ssh_project.host  # type: ignore[attr-defined]
    # another machine now answers at the same address: a new host key (the old ssh
    # connection dies with the old sshd)
    host.stop()
    host.host_key_path.unlink()
    Path(str(host.host_key_path) + ".pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.host_key_path)], check=True
    )
    host.start()
    r = ssh_project.run("true")
    assert r.returncode == 1
    assert "does not match the one vp pinned" in r.stderr
    assert "Traceback" not in r.stderr


class _OwnHomeHost(SshHost):
    """A host whose login HOME is its own folder, so its runs dir and idle watchdog are not
    shared with the other tests' runs (which would keep it busy)."""

    def _write_config(self) -> None:
        super()._write_config()
        (self.root / "home").mkdir(exist_ok=True)
        with self.config_path.open("a") as f:
            f.write(f"SetEnv HOME={self.root / 'home'}\n")


def test_idle_watchdog_stops_the_host_after_the_last_run(vp_env: VpEnv, tmp_path: Path) -> None:
    host = _OwnHomeHost(tmp_path / "own-home-host")
    host.start()
    try:
        vp_env.use_ssh_host(host, tmp_path / "remote")
        marker = tmp_path / "stopped"
        cfg = vp_env.project / "vp.toml"
        cfg.write_text(
            cfg.read_text().replace(
                "[ssh]\n",
                f'idle_stop_minutes = 0.05\nidle_stop_command = "date > {marker}"\n\n[ssh]\n',
            )
        )
        # a run longer than the idle limit (3 s) keeps the host up while it runs
        r = vp_env.run("sleep", "5")
        assert r.returncode == 0, r.stderr
        wait_for(marker.exists, 30, "the watchdog to run idle_stop_command")
        [ended] = (host.root / "home" / ".vp" / "runs").glob("*/exit")
        # ordered by the host's own clock, not by how fast vp returned: the stop came after
        # the run had ended, never while it ran
        assert marker.stat().st_mtime_ns >= ended.stat().st_mtime_ns
        assert "idle for 3 s: stopping" in (host.root / "home" / ".vp" / "watchdog.log").read_text()
    finally:
        host.close()


def test_idle_stop_on_a_plain_ssh_host_says_it_cannot(ssh_project: VpEnv) -> None:
    cfg = ssh_project.project / "vp.toml"
    cfg.write_text(cfg.read_text().replace("[ssh]\n", "idle_stop_minutes = 30\n\n[ssh]\n"))
    r = ssh_project.run("true")
    assert r.returncode == 0
    assert "idle_stop_minutes has no effect on ssh hosts" in r.stderr


def _masters_of(env: VpEnv) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ControlMaster=yes"], capture_output=True, text=True)
    pids = []
    for pid in out.stdout.split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if str(env.home).encode() in cmdline:
            pids.append(int(pid))
    return pids


def test_a_wedged_master_is_replaced(ssh_project: VpEnv) -> None:
    assert ssh_project.run("true").returncode == 0
    [master] = _masters_of(ssh_project)
    os.kill(master, signal.SIGSTOP)  # alive but answering nothing, like a hung mux
    try:
        r = ssh_project.run("echo", "still here", timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "still here\n"
        assert [p for p in _masters_of(ssh_project) if p != master]  # a fresh master
    finally:
        os.kill(master, signal.SIGKILL)


def test_a_terminal_is_told_what_ctrl_c_does(ssh_project: VpEnv) -> None:
    seen = ssh_project.stderr_on_a_terminal("echo", "hi")
    assert b"Ctrl-C interrupts it, twice detaches" in seen
    r = ssh_project.run("echo", "hi")  # not a terminal: no such chatter
    assert "Ctrl-C" not in r.stderr


def test_kill_stops_a_detached_run_and_records_it(ssh_project: VpEnv) -> None:
    import json

    r = ssh_project.run("--detach", "sh", "-c", "echo started; sleep 60")
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.strip()
    _wait_for_log(run_id, "started\n")
    k = ssh_project.run("kill", run_id)
    assert k.returncode == 0, k.stderr
    assert "SIGTERM" in k.stderr
    f = ssh_project.run("logs", "-f", run_id, timeout=30)
    assert f.stdout.startswith("started\n")  # (the shell may add "Terminated")
    assert f.returncode == 143  # 128 + SIGTERM
    runs = json.loads(ssh_project.run("-o", "json", "runs").stdout)
    assert [(x["id"], x["exit_code"], x["status"]) for x in runs] == [(run_id, 143, "killed")]


def test_kill_escalates_when_sigterm_is_ignored(ssh_project: VpEnv) -> None:
    r = ssh_project.run("--detach", "bash", "-c", "trap '' TERM; echo stubborn; sleep 60")
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.strip()
    _wait_for_log(run_id, "stubborn\n")  # so the trap is set before vp kill
    k = ssh_project.run("kill", run_id, timeout=60)
    assert k.returncode == 0, k.stderr
    assert "SIGKILL" in k.stderr
    f = ssh_project.run("logs", "-f", run_id, timeout=30)
    assert f.returncode == 137
    again = ssh_project.run("kill", run_id)
    assert "already finished" in again.stderr


def test_logs_and_attach_default_to_the_latest_run(ssh_project: VpEnv, tmp_path: Path) -> None:
    """No run id: this project's latest run; --host NAME and --all widen (issue #12 item 5)."""
    none = ssh_project.run("logs")
    assert none.returncode == 2 and "no runs in this project yet" in none.stderr, none.stderr
    first = ssh_project.run("--detach", "sh", "-c", "echo first").stdout.strip()
    assert ssh_project.run("logs", "-f", first).returncode == 0
    second = ssh_project.run("--detach", "sh", "-c", "echo second; sleep 1; exit 3").stdout.strip()
    f = ssh_project.run("logs", "-f")
    assert f.stdout == "second\n" and f.returncode == 3, f.stderr
    assert f"run {second} on " in f.stderr  # says which run it picked
    a = ssh_project.run("attach")
    assert a.stdout == "second\n" and a.returncode == 3, a.stderr
    # another project has no runs of its own; --all and --host find this one's
    other = tmp_path / "other"
    other.mkdir()
    config = (ssh_project.project / "vp.toml").read_text()
    (other / "vp.toml").write_text(config.replace('"proj"', '"other"'))
    r = ssh_project.run("logs", cwd=other)
    assert r.returncode == 2 and "no runs in this project yet" in r.stderr, r.stderr
    r = ssh_project.run("logs", "--all", cwd=other)
    assert r.returncode == 0 and r.stdout == "second\n", r.stderr
    host_name = (
        ssh_project.run("-o", "json", "runs").stdout.split('"host_name": "')[1].split('"')[0]
    )
    r = ssh_project.run("logs", "--host", host_name, cwd=other)
    assert r.returncode == 0 and r.stdout == "second\n", r.stderr
    r = ssh_project.run("logs", "--host", "no-such-host", cwd=other)
    assert r.returncode == 2 and "no runs on host no-such-host" in r.stderr, r.stderr


def test_a_mistyped_subcommand_gets_one_hint(ssh_project: VpEnv) -> None:
    """`vp stauts` runs `stauts` on the host (127) and says what was probably meant."""
    r = ssh_project.run("stauts")
    assert r.returncode == 127
    assert r.stderr.splitlines()[-1] == "vp: hint: did you mean vp status?", r.stderr
    assert r.stderr.count("hint") == 1
    r = ssh_project.run("no-such-command-vp-test")
    assert r.returncode == 127 and "hint" not in r.stderr, r.stderr
    r = ssh_project.run("sh", "-c", "exit 127")  # 127 from a command that exists: no guess
    assert r.returncode == 127 and "hint" not in r.stderr, r.stderr


def _started_run(before: set[str], workdir: Path) -> Path:
    """Wait until this test's run (one not in `before`, in `workdir`: other tests share the
    runs dir) has its process group on the host; return its dir."""

    def find() -> Path | None:
        for p in _runs_dir().iterdir():
            if p.name in before or not (p / "pgid").exists() or not (p / "pid").exists():
                continue
            try:
                if str(workdir) in (p / "run.sh").read_text():
                    return p
            except OSError:
                continue
            before.add(p.name)
        return None

    return wait_for(find, 30, "this test's run to start on the host")


def test_double_ctrl_c_on_a_run_that_died_says_so(ssh_project: VpEnv, remote_workdir: Path) -> None:
    """Two Ctrl-C 50 ms apart: the first SIGINT kills `sleep`, so the second must not claim
    the run "keeps going"; history says interrupted with the exit code (issue #12 item 6)."""
    import json

    _runs_dir().mkdir(parents=True, exist_ok=True)
    before = {p.name for p in _runs_dir().iterdir()}
    proc = ssh_project.popen("sleep", "30")
    run_dir = _started_run(before, remote_workdir)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)  # the scenario itself: a second Ctrl-C 50 ms after the first
    proc.send_signal(signal.SIGINT)
    _out, err_b = proc.communicate(timeout=90)
    err = err_b.decode()
    assert proc.returncode == 130, err
    assert "keeps going" not in err, err
    assert f"run {run_dir.name} on " in err and "already ended (exit 130)" in err, err
    row = json.loads(ssh_project.run("runs", "-o", "json").stdout)[0]
    assert (row["id"], row["status"], row["exit_code"]) == (run_dir.name, "interrupted", 130)


def test_double_ctrl_c_on_a_run_that_goes_on_detaches(
    ssh_project: VpEnv, remote_workdir: Path
) -> None:
    """A run that ignores SIGINT does keep going: then "detached" is the truth."""
    import json

    _runs_dir().mkdir(parents=True, exist_ok=True)
    before = {p.name for p in _runs_dir().iterdir()}
    proc = ssh_project.popen("sh", "-c", "trap '' INT; sleep 30")
    run_dir = _started_run(before, remote_workdir)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _out, err_b = proc.communicate(timeout=90)
    err = err_b.decode()
    assert proc.returncode == 130, err
    assert f"detached: run {run_dir.name} keeps going" in err, err
    row = json.loads(ssh_project.run("runs", "-o", "json").stdout)[0]
    assert (row["id"], row["status"]) == (run_dir.name, "detached")
    assert ssh_project.run("kill", run_dir.name).returncode == 0
