"""Runs use the login's umask, and results land here with this machine's umask (issue #12
item 3): vp keeps its own run files private, but that must not leak into the user's files."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VP, VpEnv


def _own_umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def _run_with_umask(env: VpEnv, umask: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VP, *args],
        cwd=env.project,
        env=env.env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(umask),
    )


@pytest.mark.parametrize("platform", ["ssh", "local"])
def test_the_run_has_the_login_umask_and_results_follow_the_local_one(
    request: pytest.FixtureRequest, vp_env: VpEnv, platform: str
) -> None:
    env = request.getfixturevalue("ssh_project") if platform == "ssh" else vp_env
    local_umask = 0o027
    r = _run_with_umask(env, local_umask, "sh", "-c", "umask; echo hi > made.txt")
    assert r.returncode == 0, r.stderr
    # the ssh login inherits sshd's umask (this test process's); local runs get vp's own
    expected = _own_umask() if platform == "ssh" else local_umask
    assert r.stdout.strip() == f"{expected:04o}", r.stdout
    made = Path(env.project) / "made.txt"
    assert made.read_text() == "hi\n"
    assert stat.S_IMODE(made.stat().st_mode) == 0o666 & ~expected & ~local_umask
