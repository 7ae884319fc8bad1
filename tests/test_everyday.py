"""Small things a new user trips on (issue #12 item 9), through the real CLI against the
vast.ai emulator (real SDK, real sshd)."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VP, VpEnv

try:
    from tests.emulators.vast import vast_emulator  # noqa: F401 - fixture
except ImportError:  # tests/ itself is on sys.path
    from emulators.vast import vast_emulator  # type: ignore[no-redef]  # noqa: F401

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def vast_project(vp_env: VpEnv, vast_emulator, remote_workdir: Path) -> VpEnv:  # noqa: F811
    vp_env.env.update(VAST_URL=vast_emulator.url, VAST_API_KEY=vast_emulator.api_key)
    user_cfg = vp_env.home / ".config" / "vp" / "config.toml"
    user_cfg.parent.mkdir(parents=True, exist_ok=True)
    user_cfg.write_text("[vast]\npoll_interval = 0.1\n")
    vp_env.write_config(
        f"""
        [project]
        name = "proj"

        [host]
        platform = "vast"
        gpu = "4090"
        max_price = 5.0
        ready_timeout = 60

        [sync]
        workdir = "{remote_workdir}"
        """
    )
    vp_env.emulator = vast_emulator  # type: ignore[attr-defined]
    return vp_env


def _down_answering(env: VpEnv, answer: bytes) -> tuple[int, bytes]:
    """`vp down` with a terminal on stdin (it asks only a person), answering `answer`."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*VP, "down"], cwd=env.project, env=env.env, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    seen = b""
    while b"[y/N]" not in seen:
        chunk = os.read(master, 4096)
        assert chunk, seen
        seen += chunk
    os.write(master, answer)
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return proc.wait(timeout=60), seen


def test_down_declined_destroys_nothing_and_down_removes_the_ssh_alias(vast_project: VpEnv):
    env = vast_project
    none = env.run("ls", "--all")
    assert none.returncode == 0 and none.stderr == "vp: no vp hosts on vast\n", none.stderr
    assert "for project proj" in env.run("ls").stderr  # without --all it is about this one
    up = env.run("up")
    assert up.returncode == 0, up.stderr
    alias = env.run("ssh-config")
    assert alias.returncode == 0 and alias.stdout.strip() == "vp-proj", alias.stderr
    ssh_config = env.home / ".ssh" / "config"
    assert "Host vp-proj" in ssh_config.read_text()

    code, seen = _down_answering(env, b"n\n")
    assert code == 1, seen
    assert b"nothing destroyed" in seen and b"aborted" not in seen, seen
    assert len(env.run("-o", "json", "ls").stdout.split('"id"')) == 2  # still there

    down = env.run("down", "--yes")
    assert down.returncode == 0, down.stderr
    assert "Host vp-proj" not in ssh_config.read_text()
    assert "removed Host vp-proj" in down.stderr


def test_config_help_keeps_whole_sentences(vp_env: VpEnv) -> None:
    out = vp_env.run("config", "--help").stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "vp config get host.gpu" in lines["get"], out
    assert not any(line.rstrip().endswith("...") for line in lines.values()), out


def test_a_stalled_host_is_one_line_not_an_internal_error() -> None:
    """A timeout of a host call (transport.run's timeout) is the host's stall, not vp's bug."""
    import subprocess

    from vp.errors import unexpected

    message, hint = unexpected(subprocess.TimeoutExpired(["ssh", "-F", "cfg", "host"], 60))
    assert message == "ssh did not finish within 60 s: the host or the network stalled"
    assert "internal error" not in message and "again" in hint
    message, _ = unexpected(KeyError("x"))
    assert message.startswith("internal error: KeyError")
