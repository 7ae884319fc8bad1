"""Small things a new user trips on (issue #12 item 9), through the real CLI against the
vast.ai emulator (real SDK, real sshd)."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import VpEnv

pytestmark = pytest.mark.timeout(240)


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

    code, seen = env.on_a_terminal("down", answer=b"n", timeout=60)
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

    from vp.errors import unexpected

    message, hint = unexpected(subprocess.TimeoutExpired(["ssh", "-F", "cfg", "host"], 60))
    assert message == "ssh did not finish within 60 s: the host or the network stalled"
    assert "internal error" not in message and "again" in hint
    message, _ = unexpected(KeyError("x"))
    assert message.startswith("internal error: KeyError")
