"""Secrets stay secret: API keys, registry passwords and [env] values never show up in any
process's argv, in vp's output (text or structured), or on the host as synced files; the
files that hold them are private; and a host whose key changed is refused."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.requires import requires
from tests.sshhost import SshHost

try:
    from tests.emulators.vast import vast_emulator  # noqa: F401 - fixture
except ImportError:  # pragma: no cover - vastai missing
    vast_emulator = None

needs_vast = requires(vast_emulator is not None, "vastai is not installed")
pytestmark = pytest.mark.timeout(120)

SECRET_FILES = [
    ".env",
    ".env.production",
    "sub/.env",
    "server.pem",
    "tls/private.key",
    "id_rsa",
    "id_rsa.pub",
    "id_ed25519",
    ".ssh/id_ecdsa",
    ".aws/credentials",
    ".netrc",
    ".pypirc",
    "credentials.json",
    "deploy/credentials.json",
    ".docker/config.json",
    "infra/terraform.tfstate",
]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cmdlines() -> list[bytes]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    out.append(f.read())
            except OSError:
                pass
    return out


def _write_user_config(env: VpEnv, text: str) -> Path:
    path = env.home / ".config" / "vp" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture
def cloud_project(vp_env: VpEnv, vast_emulator, remote_workdir: Path):  # noqa: F811
    """A project on a vast (emulator) host, with secrets in the environment and user config."""
    found = {
        "vast": vast_emulator.api_key,
        "runpod": "rp-" + secrets.token_hex(16),
        "docker": "dockerpw-" + secrets.token_hex(12),
        "env": "hf_" + secrets.token_hex(16),
    }
    vast_emulator.boot_delay = 0.3
    vp_env.env.update(VAST_URL=vast_emulator.url, VAST_API_KEY=found["vast"])
    vp_env.env["RUNPOD_API_KEY"] = found["runpod"]
    _write_user_config(
        vp_env,
        f'[docker]\nusername = "me"\npassword = "{found["docker"]}"\n'
        f'[env]\nHF_TOKEN = "{found["env"]}"\n',
    )
    vp_env.write_config(
        f"""
        [project]
        name = "proj"
        [host]
        platform = "vast"
        gpu = "4090"
        ready_timeout = 60
        [vast]
        poll_interval = 0.1
        [sync]
        workdir = "{remote_workdir}"
        """
    )
    vp_env.secrets = found  # type: ignore[attr-defined]
    vp_env.emulator = vast_emulator  # type: ignore[attr-defined]
    return vp_env


@needs_vast
def test_secrets_never_in_argv_output_json_or_synced_files(
    cloud_project: VpEnv, remote_workdir: Path
) -> None:
    env = cloud_project
    found: dict[str, str] = env.secrets  # type: ignore[attr-defined]
    p = env.project
    for name in SECRET_FILES:
        (p / name).parent.mkdir(parents=True, exist_ok=True)
        (p / name).write_text(f"{name} holds a secret")
    (p / "train.py").write_text("print('ok')\n")

    proc = env.popen(
        "-v", "sh", "-c", 'echo started; sleep 2; test -n "$HF_TOKEN" && echo token-set'
    )
    seen: list[bytes] = []
    out = bytearray()

    def read() -> None:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            out.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while b"started" not in out and time.monotonic() < deadline and proc.poll() is None:
        seen += _cmdlines()  # the create, sync and launch phases too
        time.sleep(0.05)
    assert b"started" in out, proc.stderr.read() if proc.stderr else ""
    while proc.poll() is None:
        seen += _cmdlines()  # while the run is going: ssh, the remote shell, the command
        time.sleep(0.1)
    reader.join(timeout=10)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.returncode == 0, err
    assert out.decode().split() == ["started", "token-set"]  # the command did get it
    assert any(b"sleep\x002" in c for c in seen), "the scan never saw the run"
    for what, value in found.items():
        assert not [c for c in seen if value.encode() in c], f"{what} secret in a process argv"
        assert value not in err and value not in out.decode(), f"{what} secret printed"

    # structured output: config (masked), runs, hosts
    for args in (["config", "show"], ["runs"], ["ls"], ["status"]):
        for fmt in ("json", "yaml", "text"):
            r = env.run("-o", fmt, *args)
            assert r.returncode == 0, (args, r.stderr)
            for what, value in found.items():
                assert value not in r.stdout + r.stderr, f"{what} secret in vp {' '.join(args)}"
    shown = json.loads(env.run("-o", "json", "config", "show").stdout)
    assert shown["docker"]["password"] == "****" and shown["env"]["HF_TOKEN"] == "****"
    assert env.run("config", "get", "env.HF_TOKEN").stdout.strip() == "****"

    # nothing secret was synced; the run's wrapper holding [env] is private to its owner
    uploaded = {str(f.relative_to(remote_workdir)) for f in remote_workdir.rglob("*")}
    assert "train.py" in uploaded
    assert not set(SECRET_FILES) & uploaded, set(SECRET_FILES) & uploaded
    run_id = json.loads(env.run("-o", "json", "runs").stdout)[0]["id"]
    run_sh = Path.home() / ".vp" / "runs" / run_id / "run.sh"  # the host is this machine
    assert _mode(run_sh) & 0o077 == 0
    assert _mode(run_sh.parent) & 0o077 == 0


def test_secret_files_are_excluded_unless_reincluded(
    ssh_project: VpEnv, remote_workdir: Path
) -> None:
    p = ssh_project.project
    for name in [*SECRET_FILES, "main.py", "config/settings.json"]:
        (p / name).parent.mkdir(parents=True, exist_ok=True)
        (p / name).write_text(name)
    (p / ".vpignore").write_text("!/credentials.json\n!.env.production\n")
    # the host makes secret-looking files too: they do not come back either
    r = ssh_project.run("sh", "-c", "echo x > .env; echo y > out.pem; echo z > result.txt")
    assert r.returncode == 0, r.stderr
    uploaded = {
        str(f.relative_to(remote_workdir)) for f in remote_workdir.rglob("*") if f.is_file()
    }
    assert uploaded - {".env", "out.pem", "result.txt"} == {
        "main.py",
        "config/settings.json",
        ".vpignore",
        "vp.toml",
        "credentials.json",  # re-included explicitly, and anchored: at the root only
        ".env.production",
    }
    assert (p / "result.txt").exists()
    assert (p / ".env").read_text() == ".env"  # the local one, untouched
    assert not (p / "out.pem").exists()


def test_private_files_and_dirs(vp_env: VpEnv, ssh_host: SshHost, remote_workdir: Path) -> None:
    vp_env.use_ssh_host(ssh_host, remote_workdir)
    r = vp_env.run("config", "set", "--user", "docker.password", "pw-" + secrets.token_hex(8))
    assert r.returncode == 0, r.stderr
    assert "pw-" not in r.stderr + r.stdout
    user_file = vp_env.home / ".config" / "vp" / "config.toml"
    assert _mode(user_file) == 0o600
    # rewriting the user file keeps it private
    assert vp_env.run("config", "set", "--user", "host.gpu", "H100").returncode == 0
    assert _mode(user_file) == 0o600
    # a secret in the (synced, committed) project file is refused
    r = vp_env.run("config", "set", "docker.password", "nope")
    assert r.returncode == 2 and "user file" in r.stderr

    assert vp_env.run("true").returncode == 0
    state = vp_env.home / ".local" / "state" / "vp"
    assert _mode(state) == 0o700
    assert _mode(state / "known_hosts") & 0o077 == 0
    # keys vp makes for the hosts it creates
    code = (
        "from vp import keys; k = keys.new_keypair('vp-proj'); "
        "print(k.private_path, keys.keys_dir())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=vp_env.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    private, keys_dir = Path(out[0]), Path(out[1])
    assert _mode(private) == 0o600
    assert _mode(keys_dir) == 0o700
    assert keys_dir.parent == state


@needs_vast
def test_cloud_host_with_a_changed_key_is_refused(cloud_project: VpEnv) -> None:
    env = cloud_project
    emulator = env.emulator  # type: ignore[attr-defined]
    r = env.run("true")
    assert r.returncode == 0, r.stderr
    [iid] = list(emulator.instances)
    sshd: SshHost = emulator.hosts[iid]
    # the machine behind the same address and port now has another host key
    sshd.stop()
    sshd.host_key_path.unlink()
    Path(str(sshd.host_key_path) + ".pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sshd.host_key_path)], check=True
    )
    port = sshd.port
    sshd.start()
    assert sshd.port == port
    r = env.run("true")
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("vp: error:")]
    assert len(errors) == 1, r.stderr
    assert "does not match the one vp pinned" in errors[0] and str(port) in errors[0]
    assert f"vp-vast-{iid}" in r.stderr  # the hint says which pin to drop
    assert "Traceback" not in r.stderr
    assert list(emulator.instances) == [iid]  # refusing never destroys the user's host
