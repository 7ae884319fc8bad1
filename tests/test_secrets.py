"""Secrets stay secret: API keys, registry passwords and [env] values never show up in any
process's argv, in vp's output (text or structured), or on the host as synced files; the
files that hold them are private; and a host whose key changed is refused."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import VpEnv, on_vast
from tests.requires import require, requires
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
    vp_env.env["RUNPOD_API_KEY"] = found["runpod"]
    on_vast(
        vp_env,
        vast_emulator,
        remote_workdir,
        user=f'[docker]\nusername = "me"\npassword = "{found["docker"]}"\n'
        f'[env]\nHF_TOKEN = "{found["env"]}"\n',
    )
    vp_env.secrets = found  # type: ignore[attr-defined]
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
    assert iid in errors[0]  # names the host; never suggests dropping the pin (issue 10, item 7)
    assert "ssh-keygen" not in r.stderr and "known_hosts" not in r.stderr
    assert "Traceback" not in r.stderr
    assert list(emulator.instances) == [iid]  # refusing never destroys the user's host


# ---------------------------------------------------------------------------- [env] and
# registry passwords on the host: never in any argv, never in a file kept after the start

try:
    from tests.dockerenv import Registry, busybox_image, docker_engine, registry  # noqa: F401
except ModuleNotFoundError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from dockerenv import Registry, busybox_image, docker_engine, registry  # noqa: F401

# Quotes, expansions, a newline: the value must arrive byte for byte, whatever shell reads it.
ODD_VALUE = 'it\'s "odd" $HOME `id` $(id) \\ ; & | < > * ?\nsecond line'


class _ArgvScan:
    """Reads every process's argv on this machine, in a loop, until stopped. The sshd test
    hosts are this machine, so this covers both sides: vp, ssh, rsync and docker here; the
    launch shell, the run's wrapper, docker login/pull/run and the container on the host."""

    def __init__(self, needles: dict[str, str]) -> None:
        self.needles = {name: value.encode() for name, value in needles.items()}
        self.hits: list[tuple[str, str]] = []
        self.passes = 0  # full passes over /proc completed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _ArgvScan:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for argv in _cmdlines():
                for name, value in self.needles.items():
                    if value in argv:
                        self.hits.append((name, argv.replace(b"\0", b" ").decode(errors="replace")))
            self.passes += 1


def _files_holding(
    root: Path, values: dict[str, str], skip: tuple[Path, ...] = (), since: float = 0.0
) -> list[str]:
    """Every file under `root` (not following links) whose bytes contain one of `values`.

    `since` prunes folders last changed before it: the shared test host's runs dir holds every
    run of the session (gigabytes of logs on a busy CI machine), and a value made up by this
    test cannot be in a folder nothing was added to since it started."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        if since:
            dirs[:] = [d for d in dirs if _changed_since(Path(dirpath) / d, since)]
        for name in files:
            path = Path(dirpath) / name
            if path in skip or path.is_symlink() or not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{what}: {path}" for what, v in values.items() if v.encode() in data]
    return found


def _changed_since(path: Path, since: float) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    return max(st.st_mtime, st.st_ctime) >= since - 2


def _host_runs_dir() -> Path:
    """~/.vp/runs of the sshd test hosts' user (they log in as this machine's user)."""
    import pwd

    return Path(pwd.getpwuid(os.getuid()).pw_dir) / ".vp" / "runs"


def _sha(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()


def _run_while_scanning(
    env: VpEnv,
    needles: dict[str, str],
    *,
    started: Path,
    release: Path,
    in_run: str,
    marker: str,
    runs: Path,
    extra_env: dict[str, str] | None = None,
) -> tuple[_ArgvScan, subprocess.CompletedProcess[bytes]]:
    """Run `vp sh -c …` whose command waits for `release`; scan argv from before vp starts until
    it has exited. `in_run` names the started/release files as the command sees them. While
    the command runs, no file in the host's `runs` dir holds a value any more."""
    command = (
        f'printf %s "$SECRET_TOKEN" | sha256sum > {in_run}/hash-token; '
        f'printf %s "$ODD" | sha256sum > {in_run}/hash-odd; '
        f"touch {in_run}/{started.name}; "
        f"while [ ! -e {in_run}/{release.name} ]; do sleep 0.05; done; echo {marker}"
    )
    t0 = time.time()
    with _ArgvScan(needles) as scan:
        proc = env.popen("sh", "-c", command, extra_env=extra_env or {})
        deadline = time.monotonic() + 240
        while not started.exists():  # the event: the command is running on the host
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        # At least one full pass over /proc while the run sits in its wait loop.
        wanted = scan.passes + 2
        while scan.passes < wanted:
            assert time.monotonic() < deadline, "the scan stalled"
            time.sleep(0.05)
        assert _files_holding(runs, needles, since=t0) == []  # the env file is gone once started
        release.touch()
        out, err = proc.communicate(timeout=240)
    return scan, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_run_saw_values(where: Path, token: str) -> None:
    assert (where / "hash-token").read_text().split()[0] == _sha(token)
    assert (where / "hash-odd").read_text().split()[0] == _sha(ODD_VALUE)


def _secret_env_config(env: VpEnv, token: str) -> None:
    """[env] from the user file (a token) and from the project file (an odd value)."""
    _write_user_config(env, f'[env]\nSECRET_TOKEN = "{token}"\n')
    cfg = env.project / "vp.toml"
    cfg.write_text(cfg.read_text() + f"\n[env]\nODD = {json.dumps(ODD_VALUE)}\n")


@pytest.mark.parametrize("platform", ["ssh", "local"])
def test_env_values_never_in_argv_nor_in_run_files(
    vp_env: VpEnv, ssh_host: SshHost, remote_workdir: Path, tmp_path: Path, platform: str
) -> None:
    t0 = time.time()
    if platform == "ssh":
        vp_env.use_ssh_host(ssh_host, remote_workdir)
        runs = _host_runs_dir()
    else:
        vp_env.write_config('[project]\nname = "proj"\n[host]\nplatform = "local"\n')
        runs = vp_env.home / ".local/share/vp/local/runs"
    token = "tok-" + secrets.token_hex(16)
    _secret_env_config(vp_env, token)
    probe = tmp_path / "probe"
    probe.mkdir()
    marker = "released-" + secrets.token_hex(6)
    needles = {"SECRET_TOKEN": token, "ODD": ODD_VALUE}
    scan, proc = _run_while_scanning(
        vp_env,
        needles,
        started=probe / "started",
        release=probe / "release",
        in_run=str(probe),
        marker=marker,
        runs=runs,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split() == [marker]
    _assert_run_saw_values(probe, token)  # the command did get both values, intact
    assert scan.hits == [], scan.hits[:3]
    assert token not in (proc.stdout + proc.stderr).decode()

    # Nothing the host keeps after the start, nor vp's own files here, holds a value.
    user_file = vp_env.home / ".config" / "vp" / "config.toml"
    assert _files_holding(runs, needles, since=t0) == []
    assert _files_holding(vp_env.home, needles, skip=(user_file,)) == []
    assert _files_holding(vp_env.project, needles, skip=(vp_env.project / "vp.toml",)) == []
    if platform == "ssh":
        assert _files_holding(remote_workdir, needles, skip=(remote_workdir / "vp.toml",)) == []


def _docker_registry_project(env: VpEnv, reg: Registry, extra: str = "") -> str:
    repo = f"vp-secrets/run{secrets.token_hex(4)}"
    cfg = env.project / "vp.toml"
    cfg.write_text(
        cfg.read_text() + f'\n[docker]\nenabled = true\nimage = "{reg.host}/{repo}"\n{extra}'
    )
    (env.project / "Dockerfile").write_text("FROM vp-test/busybox:latest\n")
    (env.project / ".dockerignore").write_text("*\n")
    return repo


@pytest.mark.timeout(600)
@pytest.mark.parametrize("build_on", ["local", "remote"])
def test_docker_env_and_registry_password_never_in_argv_nor_in_run_files(
    ssh_project: VpEnv,
    remote_workdir: Path,
    registry: Registry,  # noqa: F811
    busybox_image: str,  # noqa: F811
    build_on: str,
) -> None:
    """With Docker on a VM-like host: the host logs in and pulls (build_on = "local": the image
    is pushed, then gone from the host's engine) or builds through the forwarded socket."""
    t0 = time.time()
    env = ssh_project
    registry = registry.new_user()  # a password no concurrent test puts anywhere
    repo = _docker_registry_project(
        env, registry, 'build_on = "remote"\n' if build_on == "remote" else ""
    )
    token = "tok-" + secrets.token_hex(16)
    _secret_env_config(env, token)
    creds = {
        "VP_REGISTRY": registry.host,
        "VP_REGISTRY_USER": registry.username,
        "VP_REGISTRY_PASSWORD": registry.password,
    }
    needles = {"SECRET_TOKEN": token, "ODD": ODD_VALUE, "registry password": registry.password}
    marker = "released-" + secrets.token_hex(6)
    with _ArgvScan(needles) as first:
        r = env.run("true", extra_env=creds, timeout=300)  # build (and push)
    assert r.returncode == 0, r.stderr
    assert first.hits == [], first.hits[:3]
    if build_on == "local":
        refs = subprocess.run(
            ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", f"{registry.host}/{repo}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert len(refs) == 1
        # The host (this engine) lacks the image now: the run logs in to the registry and pulls.
        subprocess.run(["docker", "rmi", refs[0]], capture_output=True, check=True)
    log_offset = registry.log_offset()
    try:
        scan, proc = _run_while_scanning(
            env,
            needles,
            started=remote_workdir / "started",
            release=remote_workdir / "release",
            in_run="/workspace",
            marker=marker,
            runs=_host_runs_dir(),
            extra_env=creds,
        )
    finally:
        subprocess.run(
            f"docker images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' {registry.host}/{repo}"
            " | xargs -r docker rmi",
            shell=True,
            capture_output=True,
        )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split()[-1] == marker  # after the pull's progress, if any
    _assert_run_saw_values(remote_workdir, token)
    assert scan.hits == [], scan.hits[:3]
    if build_on == "local":  # the host did pull, with the password
        pulls = [ln for ln in registry.requests_since(log_offset) if f"/v2/{repo}/" in ln]
        assert pulls, "the host never pulled the image"

    values = dict(needles)
    user_file = env.home / ".config" / "vp" / "config.toml"
    assert _files_holding(_host_runs_dir(), values, since=t0) == []
    assert _files_holding(env.home, values, skip=(user_file,)) == []
    assert _files_holding(remote_workdir, values, skip=(remote_workdir / "vp.toml",)) == []


@pytest.mark.parametrize("shell", ["sh", "bash", "dash"])
def test_ship_env_round_trip_through_stdin(tmp_path: Path, shell: str) -> None:
    """The mechanism alone, under each shell a host may read vp's script with: values (odd, and
    one larger than a pipe buffer, which bash spools through a temp file) arrive byte for byte,
    the file is private while it exists and gone once taken, and `eval` sets them for one
    subshell only."""
    import shutil

    from vp import remote

    if shutil.which(shell) is None:
        require(False, f"{shell} is not installed")
    env = {"ODD": ODD_VALUE, "BIG": "x" * 200_000 + "'end'", "EMPTY": ""}
    path = tmp_path / "env"
    script = (
        remote.ship_env(shlex.quote(str(path)), env)
        + f"stat -c %a {shlex.quote(str(path))}\n"
        + remote.take_env(shlex.quote(str(path)))
        + f"[ -e {shlex.quote(str(path))} ] && echo still-there\n"
        + '(eval "$vp_env" && printf "%s\\0%s\\0%s" "$ODD" "$BIG" "$EMPTY" > out)\n'
        + 'printf "after:%s" "${ODD:-unset}"\n'
    )
    with _ArgvScan({"ODD": ODD_VALUE}) as scan:
        proc = subprocess.run(
            [shell, "-s"], input=script.encode(), cwd=tmp_path, capture_output=True, timeout=30
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == ["600", "after:unset"]
    assert (tmp_path / "out").read_bytes().split(b"\0") == [v.encode() for v in env.values()]
    assert not path.exists()
    assert scan.hits == []
