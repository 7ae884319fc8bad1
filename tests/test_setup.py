"""[setup]: the project's dependencies are installed once per change of the setup command or its
inputs, per host and workdir; a failed setup stops the run before the command; the warm path
with a setup configured is still one ssh session."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.sshhost import SshHost

pytestmark = pytest.mark.timeout(180)


def _with_setup(env: VpEnv, run: str, extra: str = "") -> None:
    cfg = env.project / "vp.toml"
    cfg.write_text(cfg.read_text() + f"\n[setup]\nrun = {run!r}\n{extra}")


def _counted_setup(env: VpEnv, counter: Path) -> None:
    """A setup that leaves one line in `counter` (on the host: the test host is this machine)
    each time it runs, and says so on its output."""
    _with_setup(env, f"echo setup-output; echo ran >> {counter}")


def _count(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def _sessions(host: SshHost, offset: int) -> int:
    """ssh sessions the host started since byte `offset` of its (LogLevel VERBOSE) log."""
    with host.log_path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").count("Starting session:")


def test_setup_runs_once_per_change_and_per_workdir(
    ssh_project: VpEnv, remote_workdir: Path, tmp_path: Path
) -> None:
    env = ssh_project
    counter = tmp_path / "setup-count"
    _counted_setup(env, counter)
    (env.project / "requirements.txt").write_text("numpy\n")
    (env.project / "train.py").write_text("print('hi')\n")

    r = env.run("echo", "command-output")
    assert r.returncode == 0, r.stderr
    assert _count(counter) == 1
    # The command's stdout is the command's: the setup's output is shown on stderr.
    assert r.stdout == "command-output\n"
    assert "setup-output" in r.stderr and "vp: setup on" in r.stderr

    r = env.run("echo", "again")
    assert r.returncode == 0, r.stderr
    assert _count(counter) == 1, "setup ran again with nothing changed"
    assert "setup" not in r.stderr

    # An unrelated file does not re-run it; an input does.
    (env.project / "train.py").write_text("print('edited')\n")
    assert env.run("true").returncode == 0
    assert _count(counter) == 1
    (env.project / "requirements.txt").write_text("numpy\ntorch\n")
    assert env.run("true").returncode == 0
    assert _count(counter) == 2
    assert env.run("true").returncode == 0
    assert _count(counter) == 2

    # A changed setup command runs.
    cfg = env.project / "vp.toml"
    cfg.write_text(cfg.read_text().replace("echo setup-output", "echo setup-output-2"))
    r = env.run("true")
    assert r.returncode == 0 and "setup-output-2" in r.stderr, r.stderr
    assert _count(counter) == 3

    # Another workdir (as on a new host) has no record: setup runs there once.
    cfg.write_text(cfg.read_text().replace(str(remote_workdir), str(tmp_path / "other-workdir")))
    assert env.run("true").returncode == 0
    assert _count(counter) == 4
    assert env.run("true").returncode == 0
    assert _count(counter) == 4


def test_setup_runs_on_a_new_host_once(
    vp_env: VpEnv, make_ssh_host, remote_workdir: Path, tmp_path: Path
) -> None:
    """The record lives on the host, in its ~/.vp: a host with another home has none."""
    first: SshHost = make_ssh_host()
    vp_env.use_ssh_host(first, remote_workdir)
    counter = tmp_path / "setup-count"
    _counted_setup(vp_env, counter)
    assert vp_env.run("true").returncode == 0
    assert vp_env.run("true").returncode == 0
    assert _count(counter) == 1
    # The test hosts are this machine: a new one is this machine with another home directory.
    second: SshHost = make_ssh_host()
    other_home = tmp_path / "second-host-home"
    other_home.mkdir()
    cfg = vp_env.project / "vp.toml"
    text = cfg.read_text()
    vp_env.use_ssh_host(second, remote_workdir, alias="newhost")
    cfg.write_text(text.replace('host = "testhost"', 'host = "newhost"'))
    second.extra_config.append(f"SetEnv HOME={other_home}")
    second.restart()
    r = vp_env.run("sh", "-c", 'echo "$HOME"')
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(other_home)
    assert _count(counter) == 2
    assert (other_home / ".vp" / "setup").is_dir()
    assert vp_env.run("true").returncode == 0
    assert _count(counter) == 2


def test_failed_setup_stops_the_run_and_is_not_recorded(
    ssh_project: VpEnv, remote_workdir: Path, tmp_path: Path
) -> None:
    env = ssh_project
    counter = tmp_path / "setup-count"
    _with_setup(env, f"echo ran >> {counter}; echo pip-says-no >&2; exit 7")
    r = env.run("touch", "command-ran")
    assert r.returncode == 7, r.stderr
    assert "pip-says-no" in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("vp: error:")]
    assert errors == ["vp: error: setup failed (exit 7); the command was not run"], r.stderr
    assert not (remote_workdir / "command-ran").exists()
    # Not recorded: the next run tries again.
    r = env.run("touch", "command-ran")
    assert r.returncode == 7
    assert _count(counter) == 2
    assert not (remote_workdir / "command-ran").exists()


def test_warm_run_with_setup_is_one_ssh_session(ssh_project: VpEnv, tmp_path: Path) -> None:
    env = ssh_project
    host: SshHost = env.host  # type: ignore[attr-defined]
    counter = tmp_path / "setup-count"
    _counted_setup(env, counter)
    (env.project / "requirements.txt").write_text("numpy\n")
    for _ in range(2):  # warm up: the master connection, the upload, the setup
        assert env.run("true").returncode == 0
    assert _count(counter) == 1
    offset = host.log_path.stat().st_size
    r = env.run("echo", "warm")
    assert r.returncode == 0 and r.stdout == "warm\n", r.stderr
    assert _sessions(host, offset) == 1
    assert _count(counter) == 1


def test_vp_setup_runs_when_needed_or_forced(ssh_project: VpEnv, tmp_path: Path) -> None:
    env = ssh_project
    r = env.run("setup")
    assert r.returncode == 2 and "no setup" in r.stderr, r.stderr
    counter = tmp_path / "setup-count"
    _counted_setup(env, counter)
    r = env.run("setup")
    assert r.returncode == 0, r.stderr
    assert _count(counter) == 1 and "setup done" in r.stderr
    r = env.run("setup")
    assert r.returncode == 0 and "up to date" in r.stderr, r.stderr
    assert _count(counter) == 1
    assert env.run("true").returncode == 0
    assert _count(counter) == 1  # vp setup's record counts for runs
    r = env.run("setup", "--force")
    assert r.returncode == 0 and "setup done" in r.stderr, r.stderr
    assert _count(counter) == 2


def test_ctrl_c_during_setup_interrupts_it_and_skips_the_command(
    ssh_project: VpEnv, remote_workdir: Path, tmp_path: Path
) -> None:
    env = ssh_project
    started = tmp_path / "setup-started"
    _with_setup(env, f"touch {started}; sleep 60; echo finished >> {tmp_path / 'finished'}")
    proc = env.popen("touch", "command-ran")
    deadline = time.monotonic() + 60
    while not started.exists():  # the event: the setup is running on the host
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"setup interrupted; the command was not run" in err
    assert not (tmp_path / "finished").exists()
    assert not (remote_workdir / "command-ran").exists()
    # Not recorded: the next run starts the setup again.
    started.unlink()
    cfg = env.project / "vp.toml"
    cfg.write_text(cfg.read_text().replace("sleep 60", "true"))
    assert env.run("true").returncode == 0
    assert started.exists()


def test_setup_inputs_are_configurable(ssh_project: VpEnv, tmp_path: Path) -> None:
    env = ssh_project
    counter = tmp_path / "setup-count"
    _with_setup(env, f"echo ran >> {counter}", 'inputs = ["deps/*.lock"]\n')
    (env.project / "deps").mkdir()
    (env.project / "deps" / "a.lock").write_text("1")
    (env.project / "requirements.txt").write_text("numpy\n")
    assert env.run("true").returncode == 0
    (env.project / "requirements.txt").write_text("torch\n")  # not an input any more
    assert env.run("true").returncode == 0
    assert _count(counter) == 1
    (env.project / "deps" / "a.lock").write_text("2")
    assert env.run("true").returncode == 0
    assert _count(counter) == 2
    # A bad pattern names the key.
    cfg = env.project / "vp.toml"
    cfg.write_text(cfg.read_text().replace('"deps/*.lock"', '"!"'))
    r = env.run("true")
    assert r.returncode == 2 and "[setup] inputs" in r.stderr, r.stderr


try:
    from tests.dockerenv import busybox_image, docker_engine  # noqa: F401 - fixtures
except ModuleNotFoundError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from dockerenv import busybox_image, docker_engine  # noqa: F401


@pytest.mark.timeout(600)
def test_with_docker_setup_and_secrets_run_inside_the_image(
    ssh_project: VpEnv,
    remote_workdir: Path,
    busybox_image: str,  # noqa: F811
) -> None:
    import hashlib
    import secrets

    env = ssh_project
    token = "hf_" + secrets.token_hex(16)
    tag = "vp-test/setup" + secrets.token_hex(4)
    (env.project / "Dockerfile").write_text(
        "FROM vp-test/busybox:latest\nRUN echo in-the-image > /image-marker\n"
    )
    (env.project / ".dockerignore").write_text("*\n")
    _with_setup(
        env,
        'cat /image-marker >> setup-log; printf %s "$HF_TOKEN" | sha256sum >> setup-log',
        f'[docker]\nenabled = true\nbuild_on = "remote"\nimage = "{tag}"\n'
        '[secrets]\nrequired = ["HF_TOKEN"]\n',
    )
    try:
        for _ in range(2):
            r = env.run(
                "sh", "-c", 'cat /image-marker; echo "t=$HF_TOKEN"', extra_env={"HF_TOKEN": token}
            )
            assert r.returncode == 0, r.stderr
            assert r.stdout == "in-the-image\nt=***\n", r.stdout + r.stderr
        lines = (remote_workdir / "setup-log").read_text().split()
        # ran once, inside the image, with the secret in its environment
        assert lines == ["in-the-image", hashlib.sha256(token.encode()).hexdigest(), "-"]
    finally:
        import subprocess

        subprocess.run(
            f"docker images -q {tag} | sort -u | xargs -r docker rmi -f",
            shell=True,
            capture_output=True,
        )


def test_a_warm_call_with_setup_matches_no_file_table(
    ssh_project: VpEnv, remote_workdir: Path, tmp_path: Path
) -> None:
    """The inputs a manifest's stamp matched are remembered: a warm call the walk cache
    vouches for reads no file table even with a setup (with the tables unreadable it still
    runs, setup not again). A new input file, or an edited one, still runs the setup."""
    from tests.test_speed import _age, _set_manifest_data

    env = ssh_project
    counter = tmp_path / "setup-count"
    _counted_setup(env, counter)
    p = env.project
    (p / "requirements.txt").write_text("numpy\n")
    (p / "train.py").write_text("print('hi')\n")
    for path in (p / "requirements.txt", p / "train.py", p / "vp.toml", p):
        _age(path)
    assert env.run("true").returncode == 0 and _count(counter) == 1
    assert env.run("true").returncode == 0 and _count(counter) == 1  # remembered here
    good = _set_manifest_data(env, "not json")
    r = env.run("true")
    assert r.returncode == 0, r.stderr
    assert _count(counter) == 1
    _set_manifest_data(env, good)

    (p / "requirements-dev.txt").write_text("pytest\n")  # a new file the default inputs match
    assert env.run("true").returncode == 0
    assert _count(counter) == 2
    (p / "requirements-dev.txt").write_text("pytest-xdist\n")
    assert env.run("true").returncode == 0
    assert _count(counter) == 3
    assert env.run("true").returncode == 0 and _count(counter) == 3
