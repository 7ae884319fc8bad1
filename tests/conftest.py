"""Shared fixtures: an isolated vp home per test, a project directory, and `vp` run as a real
subprocess against real sshd test hosts (tests/sshhost.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import requires
from tests.sshhost import SshHost, make_ssh_host, netns_host, ssh_host  # noqa: F401

VP = [sys.executable, "-m", "vp"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{requires.MARKER}(ok, reason): a prerequisite; see tests/requires.py"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    requires.check_marks(item)  # before any fixture starts a host for a test that cannot run


@dataclass
class VpEnv:
    """One user's machine: HOME, XDG dirs and a project folder, all under tmp."""

    home: Path
    project: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        input: str | bytes | None = None,
        timeout: float = 120,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **(extra_env or {})}
        data = input.encode() if isinstance(input, str) else input
        proc = subprocess.run(
            [*VP, *args],
            cwd=cwd or self.project,
            env=env,
            input=data,
            capture_output=True,
            timeout=timeout,
        )
        return subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
        )

    def popen(self, *args: str, **kw) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*VP, *args],
            cwd=kw.pop("cwd", self.project),
            env={**self.env, **kw.pop("extra_env", {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **kw,
        )

    def stderr_on_a_terminal(self, *args: str, timeout: float = 120) -> bytes:
        """Run vp with a pty as stderr (stdout stays a pipe): what it drew for a person."""
        import pty

        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [*VP, *args], cwd=self.project, env=self.env, stdout=subprocess.PIPE, stderr=slave
        )
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            seen += chunk
        out = proc.stdout.read() if proc.stdout else b""
        assert proc.wait(timeout=timeout) == 0, (seen, out)
        os.close(master)
        return seen

    def write_config(self, text: str) -> Path:
        path = self.project / "vp.toml"
        path.write_text(textwrap.dedent(text))
        return path

    def use_ssh_host(self, host: SshHost, workdir: Path, alias: str = "testhost") -> None:
        """Point the project at `host` through an ~/.ssh/config alias, with its own workdir."""
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        config = ssh_dir / "config"
        existing = config.read_text() if config.exists() else ""
        config.write_text(existing + host.ssh_config(alias) + "\n")
        self.write_config(
            f"""
            [project]
            name = "proj"

            [host]
            platform = "ssh"

            [ssh]
            host = "{alias}"
            reconnect_timeout = 60

            [sync]
            workdir = "{workdir}"
            """
        )


@pytest.fixture
def vp_env(tmp_path: Path) -> VpEnv:
    home = tmp_path / "home"
    project = tmp_path / "proj"
    home.mkdir()
    project.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VP_", "XDG_", "VAST_", "RUNPOD_", "TNR_", "AWS_", "GOOGLE_"))
    }
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".local/state"),
        XDG_DATA_HOME=str(home / ".local/share"),
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
        PYTHONUNBUFFERED="1",
        # the ssh hosts this test's project files name are the user's own (vp/trust.py);
        # tests/test_trust_ssh.py drops this to play a cloned repo
        VP_TRUSTED_DIRS=str(tmp_path),
    )
    env.pop("SSH_AUTH_SOCK", None)
    return VpEnv(home=home, project=project, env=env)


@pytest.fixture
def remote_workdir(tmp_path: Path) -> Path:
    """The host-side workdir (the test hosts share this machine's filesystem)."""
    path = tmp_path / "remote-workspace"
    return path


@pytest.fixture
def ssh_project(vp_env: VpEnv, ssh_host: SshHost, remote_workdir: Path) -> VpEnv:  # noqa: F811
    vp_env.use_ssh_host(ssh_host, remote_workdir)
    vp_env.host = ssh_host  # type: ignore[attr-defined]
    return vp_env
