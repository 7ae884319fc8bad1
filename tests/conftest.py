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
from tests.emulators.vast import vast_emulator  # noqa: F401 - fixture, for vast_project
from tests.sshhost import SshHost, make_ssh_host, netns_host, ssh_host  # noqa: F401

VP = [sys.executable, "-m", "vp"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{requires.MARKER}(ok, reason): a prerequisite; see tests/requires.py"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    requires.check_marks(item)  # before any fixture starts a host for a test that cannot run


def _read_terminal(master: int, answer: bytes | None = None, when: bytes = b"") -> bytes:
    """Everything shown on a pty until its other side closes; type `answer` and Enter once
    `when` has appeared."""
    seen = b""
    answered = answer is None
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        seen += chunk
        if not answered and when in seen:
            os.write(master, answer + b"\n")
            answered = True
    return seen


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
        seen = _read_terminal(master)
        out = proc.stdout.read() if proc.stdout else b""
        assert proc.wait(timeout=timeout) == 0, (seen, out)
        os.close(master)
        return seen

    def on_a_terminal(
        self, *args: str, answer: bytes | None = None, when: bytes = b"[y/N]", timeout: float = 120
    ) -> tuple[int, bytes]:
        """Run vp with a terminal as stdin, stdout and stderr (what a person sees); type
        `answer` and Enter once `when` appears. Returns the exit code and everything shown."""
        import pty

        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [*VP, *args], cwd=self.project, env=self.env, stdin=slave, stdout=slave, stderr=slave
        )
        os.close(slave)
        seen = _read_terminal(master, answer, when)
        code = proc.wait(timeout=timeout)
        os.close(master)
        return code, seen

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


# platform -> (environment variable of its API endpoint, suffix to its emulator's URL, of its
# API key): how vp is pointed at tests/emulators/ (ARCHITECTURE.md §3).
EMULATOR_ENV = {
    "vast": ("VAST_URL", "", "VAST_API_KEY"),
    "runpod": ("RUNPOD_API_BASE_URL", "", "RUNPOD_API_KEY"),
    "thunder": ("TNR_API_URL", "/v1", "TNR_API_TOKEN"),
}


def point_at(env: VpEnv, platform: str, emulator, *, key: bool = True) -> None:
    """vp under `env` calls `emulator` for `platform`, with its API key unless `key` is False
    (a test of where keys come from sets its own)."""
    url_env, suffix, key_env = EMULATOR_ENV[platform]
    env.env[url_env] = emulator.url + suffix
    if key:
        env.env[key_env] = emulator.api_key


def write_cloud_project(
    env: VpEnv,
    workdir: Path,
    *,
    platform: str = "vast",
    project: str = "proj",
    gpu: str = "4090",
    ready_timeout: float | None = 60,
    extra: str = "",
    user: str = "",
) -> VpEnv:
    """The usual project on a cloud emulator: vp.toml asks `platform` for one `gpu` at most
    $5/h with `workdir` on the host (`extra`: more TOML appended), and the user file polls the
    provider every 0.1 s (`user`: more keys of that `[platform]` table, then any tables)."""
    user_cfg = env.home / ".config" / "vp" / "config.toml"
    user_cfg.parent.mkdir(parents=True, exist_ok=True)
    user_cfg.write_text(f"[{platform}]\npoll_interval = 0.1\n" + textwrap.dedent(user).lstrip())
    user_cfg.chmod(0o600)
    ready = "" if ready_timeout is None else f"ready_timeout = {ready_timeout}\n"
    env.write_config(
        f'[project]\nname = "{project}"\n\n'
        f'[host]\nplatform = "{platform}"\ngpu = "{gpu}"\nmax_price = 5.0\n{ready}\n'
        f'[sync]\nworkdir = "{workdir}"\n' + textwrap.dedent(extra)
    )
    return env


def on_vast(env: VpEnv, emulator, workdir: Path, **project) -> VpEnv:
    """`env`'s project on the vast.ai emulator (keywords: `write_cloud_project`'s).
    `env.emulator` is the emulator."""
    point_at(env, "vast", emulator)
    write_cloud_project(env, workdir, platform="vast", **project)
    env.emulator = emulator  # type: ignore[attr-defined]
    return env


def error_and_hint(stderr: str) -> tuple[str, str]:
    """The one `vp: error:` line and the one `vp: hint:` line of a failed call (no traceback)."""
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("vp: error:")]
    hints = [ln for ln in stderr.splitlines() if ln.startswith("vp: hint:")]
    assert len(errors) == 1 and len(hints) == 1, stderr
    return errors[0], hints[0]


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


@pytest.fixture
def vast_project(vp_env: VpEnv, vast_emulator, remote_workdir: Path) -> VpEnv:  # noqa: F811
    """A project named `proj` on the vast.ai emulator (`on_vast`); `.emulator` is it."""
    return on_vast(vp_env, vast_emulator, remote_workdir)
