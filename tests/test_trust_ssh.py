"""A project file cannot choose the machine the user's secrets go to (issue #10): an ssh
destination named only by a cloned repo's `vp.toml` (or `[tool.vp]`, or a `--config` file)
is not connected to until the user trusts it, like `direnv allow` or VS Code's workspace
trust. Off a terminal vp refuses in one line and names `vp trust`; on a terminal it asks once
and remembers the answer for that project folder and that destination. Checked against real
sshd hosts whose logs show whether anything connected at all: before trust, nothing does, so
no secret, `[env]` value, project file or public key reaches the host."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import VP, VpEnv
from tests.dockerenv import busybox_image, docker_engine  # noqa: F401
from tests.sshhost import SshHost

pytestmark = pytest.mark.timeout(180)

TOKEN = "tok-" + "Qw8Er7Ty6" * 3
USER_SECRET = "usr-" + "Zx1Cv2Bn3" * 3


@pytest.fixture
def untrusting(vp_env: VpEnv) -> VpEnv:
    """A user who has trusted no project folder (the shared fixture trusts the test's tmp)."""
    vp_env.env.pop("VP_TRUSTED_DIRS", None)
    return vp_env


def _connections(host: SshHost) -> int:
    """How many connections the host's sshd has seen (LogLevel VERBOSE logs each; starting
    the host made one): compared before and after, never to 0."""
    return host.log_path.read_text(errors="replace").count("Connection from")


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("vp: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def _alias(env: VpEnv, host: SshHost, alias: str) -> None:
    ssh_dir = env.home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    config = ssh_dir / "config"
    existing = config.read_text() if config.exists() else ""
    config.write_text(existing + host.ssh_config(alias) + "\n")


def _user_file(env: VpEnv, text: str) -> Path:
    path = env.home / ".config" / "vp" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def _with_secrets(env: VpEnv) -> None:
    """The user keeps a secret the project asks for by name, and an [env] value of their own."""
    r = env.run("secret", "set", "MY_TOKEN", input=TOKEN + "\n")
    assert r.returncode == 0, r.stderr
    _user_file(env, f'[env]\nUSER_SECRET = "{USER_SECRET}"\n')


def _cloned(
    env: VpEnv, workdir: Path, ssh: str, *, where: str = "vp.toml", secrets: bool = False
) -> Path:
    """A cloned repo whose project file names the ssh destination (and, `secrets`, asks for
    the user's MY_TOKEN by name)."""
    body = (
        f'[project]\nname = "proj"\n\n[host]\nplatform = "ssh"\n\n[ssh]\n{ssh}\n'
        f'reconnect_timeout = 30\n\n[sync]\nworkdir = "{workdir}"\n'
    )
    if secrets:
        body += '\n[secrets]\nrequired = ["MY_TOKEN"]\n'

    (env.project / "train.py").write_text("print('hi')\n")
    if where == "pyproject.toml":
        body = body.replace("\n[", "\n[tool.vp.").replace("[project]", "[tool.vp.project]", 1)
        path = env.project / "pyproject.toml"
        path.write_text('[project]\nname = "x"\n\n' + body)
        return path
    path = env.project / where
    path.write_text(body)
    return path


DUMP = 'echo "$MY_TOKEN $USER_SECRET" > got.txt'


def _refused(r: subprocess.CompletedProcess[str], path: Path, key: str, dest: str) -> None:
    assert r.returncode == 2, r.stderr
    line = _one_error_line(r.stderr)
    assert str(path) in line and key in line and dest in line, line
    assert "vp: hint: " in r.stderr and "vp trust" in r.stderr, r.stderr
    assert TOKEN not in r.stderr + r.stdout and USER_SECRET not in r.stderr + r.stdout


# ------------------------------------------------------------------ off a terminal: refused


@pytest.mark.parametrize("where", ["vp.toml", "pyproject.toml"])
def test_a_project_ssh_host_gets_nothing_until_trusted(
    untrusting: VpEnv, ssh_host: SshHost, remote_workdir: Path, where: str
) -> None:
    env = untrusting
    _alias(env, ssh_host, "evilhost")
    _with_secrets(env)
    path = _cloned(env, remote_workdir, 'host = "evilhost"', where=where, secrets=True)
    before = _connections(ssh_host)
    for args in (
        ["sh", "-c", DUMP],
        ["--yes", "sh", "-c", DUMP],
        ["sync"],
        ["ssh-config"],
        ["ssh", "--", "true"],
        ["upload", "train.py"],
    ):
        r = env.run(*args, input="")
        _refused(r, path, "[ssh] host", "evilhost")
    for args in (["status"], ["ls"], ["tunnel", "8888"], ["download", "x"], ["gpu"]):
        r = env.run(*args, input="", timeout=60)
        assert "Traceback" not in r.stderr and TOKEN not in r.stderr + r.stdout
    assert _connections(ssh_host) == before, "vp connected to a host nobody trusted"
    assert not remote_workdir.exists()

    # the command the hint names trusts it; then the run goes there
    r = env.run("trust", input="")
    assert r.returncode == 0, r.stderr
    assert "evilhost" in r.stderr + r.stdout
    r = env.run("sh", "-c", DUMP, input="")
    assert r.returncode == 0, r.stderr
    assert (remote_workdir / "got.txt").read_text().split() == [TOKEN, USER_SECRET]
    assert _connections(ssh_host) > before


def test_a_config_flag_file_is_a_project_file_too(
    untrusting: VpEnv, ssh_host: SshHost, remote_workdir: Path, tmp_path: Path
) -> None:
    env = untrusting
    _alias(env, ssh_host, "evilhost")
    other = tmp_path / "downloaded.toml"
    other.write_text(
        '[host]\nplatform = "ssh"\n[ssh]\nhost = "evilhost"\n'
        f'[sync]\nworkdir = "{remote_workdir}"\n'
    )
    before = _connections(ssh_host)
    r = env.run("--config", str(other), "true", input="")
    _refused(r, other, "[ssh] host", "evilhost")
    assert _connections(ssh_host) == before and not remote_workdir.exists()


def test_project_ssh_hosts_for_a_multi_node_run_are_not_trusted_either(
    untrusting: VpEnv, make_ssh_host: Callable[..., SshHost], remote_workdir: Path
) -> None:
    env = untrusting
    hosts = [make_ssh_host() for _ in range(2)]
    for i, host in enumerate(hosts):
        _alias(env, host, f"node{i}")
    _with_secrets(env)
    path = _cloned(env, remote_workdir, 'hosts = ["node0", "node1"]', secrets=True)
    before = [_connections(h) for h in hosts]
    r = env.run("--nodes", "2", "sh", "-c", DUMP, input="")
    _refused(r, path, "[ssh] hosts", "node1")
    assert [_connections(h) for h in hosts] == before
    assert not remote_workdir.exists()

    assert env.run("trust", input="").returncode == 0
    r = env.run("--nodes", "2", "true", input="")
    assert "trust" not in r.stderr, r.stderr
    assert all(_connections(h) > n for h, n in zip(hosts, before, strict=True))

    # a host added to the list later is a new destination: asked again
    _alias(env, make_ssh_host(), "node2")
    path.write_text(path.read_text().replace('"node1"]', '"node1", "node2"]'))
    r = env.run("--nodes", "3", "true", input="")
    _refused(r, path, "[ssh] hosts", "node2")
    assert "node0" not in _one_error_line(r.stderr)


def test_trust_is_per_project_folder_and_per_destination(
    untrusting: VpEnv, make_ssh_host: Callable[..., SshHost], tmp_path: Path
) -> None:
    env = untrusting
    first, second = make_ssh_host(), make_ssh_host()
    _alias(env, first, "boxa")
    _alias(env, second, "boxb")
    workdir = tmp_path / "w"
    path = _cloned(env, workdir, 'host = "boxa"')
    assert env.run("trust", input="").returncode == 0
    assert env.run("true", input="").returncode == 0

    # the repo changes its destination (a pull, or the host rewrote vp.toml): asked again
    path.write_text(path.read_text().replace('"boxa"', '"boxb"'))
    before = _connections(second)
    r = env.run("true", input="")
    _refused(r, path, "[ssh] host", "boxb")
    assert _connections(second) == before

    # the same vp.toml in another folder is another project: not trusted there
    path.write_text(path.read_text().replace('"boxb"', '"boxa"'))
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copy(path, clone / "vp.toml")
    before = _connections(first)
    r = env.run("true", cwd=clone, input="")
    _refused(r, clone / "vp.toml", "[ssh] host", "boxa")
    assert _connections(first) == before


# ------------------------------------------------------------------ the user's own choices


def test_a_destination_the_user_names_is_trusted(
    untrusting: VpEnv, ssh_host: SshHost, remote_workdir: Path
) -> None:
    env = untrusting
    _alias(env, ssh_host, "mybox")
    _alias(env, ssh_host, "evilhost")
    # the project names a host, the user's environment or flag names theirs: theirs wins
    _cloned(env, remote_workdir, 'host = "evilhost"')
    r = env.run("true", input="", extra_env={"VP_SSH_HOST": "mybox"})
    assert r.returncode == 0, r.stderr
    r = env.run("--host", "mybox", "true", input="")
    assert r.returncode == 0, r.stderr
    # a host from the user's own file, with only the platform from the project
    env.write_config(f'[host]\nplatform = "ssh"\n[sync]\nworkdir = "{remote_workdir}"\n')
    _user_file(env, '[ssh]\nhost = "mybox"\n')
    r = env.run("true", input="")
    assert r.returncode == 0, r.stderr
    # the project names the same host as the user's file: still the user's
    _cloned(env, remote_workdir, 'host = "mybox"')
    r = env.run("true", input="")
    assert r.returncode == 0, r.stderr
    # the user's file names the host and the project names another: the project's is refused
    path = _cloned(env, remote_workdir, 'host = "evilhost"')
    r = env.run("true", input="")
    _refused(r, path, "[ssh] host", "evilhost")


def test_trusted_dirs_trust_every_project_below_them(
    untrusting: VpEnv, ssh_host: SshHost, remote_workdir: Path
) -> None:
    env = untrusting
    _alias(env, ssh_host, "evilhost")
    _cloned(env, remote_workdir, 'host = "evilhost"')
    r = env.run("true", input="", extra_env={"VP_TRUSTED_DIRS": str(env.project.parent)})
    assert r.returncode == 0, r.stderr
    r = env.run("true", input="", extra_env={"VP_TRUSTED_DIRS": str(env.home)})
    assert r.returncode == 2 and "vp trust" in r.stderr


# ------------------------------------------------------------------ on a terminal: a question


def _answer_on_a_terminal(env: VpEnv, answer: bytes | None, *args: str) -> tuple[int, bytes]:
    """Run vp on a terminal; answer its trust question once asked."""
    return env.on_a_terminal(*args, answer=answer)


def test_on_a_terminal_vp_asks_once_and_remembers(
    untrusting: VpEnv, make_ssh_host: Callable[..., SshHost], remote_workdir: Path
) -> None:
    env = untrusting
    host, other = make_ssh_host(), make_ssh_host()
    _alias(env, host, "evilhost")
    _alias(env, other, "otherhost")
    _with_secrets(env)
    path = _cloned(env, remote_workdir, 'host = "evilhost"', secrets=True)
    before = _connections(host), _connections(other)

    code, seen = _answer_on_a_terminal(env, b"n", "sh", "-c", DUMP)
    assert code == 2, seen
    assert b"evilhost" in seen and b"Trust it?" in seen and b"vp trust" in seen, seen
    assert _connections(host) == before[0] and not remote_workdir.exists()

    code, seen = _answer_on_a_terminal(env, b"y", "sh", "-c", DUMP)
    assert code == 0, seen
    assert (remote_workdir / "got.txt").read_text().split() == [TOKEN, USER_SECRET]
    # asked once: the next run, on a terminal or not, just goes
    code, seen = _answer_on_a_terminal(env, None, "true")
    assert code == 0 and b"Trust it?" not in seen, seen
    assert env.run("true", input="").returncode == 0

    # a changed destination asks again
    path.write_text(path.read_text().replace('"evilhost"', '"otherhost"'))
    code, seen = _answer_on_a_terminal(env, b"n", "true")
    assert code == 2 and b"otherhost" in seen and b"Trust it?" in seen, seen
    assert _connections(other) == before[1]


def test_trust_forget_takes_it_back(
    untrusting: VpEnv, ssh_host: SshHost, remote_workdir: Path
) -> None:
    env = untrusting
    _alias(env, ssh_host, "evilhost")
    path = _cloned(env, remote_workdir, 'host = "evilhost"')
    assert env.run("trust", input="").returncode == 0
    assert env.run("true", input="").returncode == 0
    r = env.run("trust", "--forget", input="")
    assert r.returncode == 0, r.stderr
    r = env.run("true", input="")
    _refused(r, path, "[ssh] host", "evilhost")


def test_trust_outside_an_ssh_project_says_there_is_nothing_to_trust(untrusting: VpEnv) -> None:
    untrusting.write_config('[host]\nplatform = "local"\n')
    r = untrusting.run("trust", input="")
    assert r.returncode == 0, r.stderr
    assert "nothing" in r.stderr + r.stdout


def test_a_host_the_user_sets_in_vp_toml_with_config_set_is_theirs(
    untrusting: VpEnv, ssh_host: SshHost, remote_workdir: Path
) -> None:
    """The quickstart: `vp config set ssh.host ...` writes vp.toml, typed by the user here."""
    env = untrusting
    _alias(env, ssh_host, "mybox")
    env.write_config(f'[host]\nplatform = "ssh"\n[sync]\nworkdir = "{remote_workdir}"\n')
    r = env.run("config", "set", "ssh.host", "mybox")
    assert r.returncode == 0, r.stderr
    r = env.run("true", input="")
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ [docker] dockerfile


@pytest.mark.parametrize("how", ["setting", "link"])
def test_a_project_dockerfile_cannot_read_a_file_outside_the_project(
    vp_env: VpEnv,
    busybox_image: str,  # noqa: F811
    tmp_path: Path,
    how: str,
) -> None:
    """The Dockerfile is read here and sent to a Docker engine (the host's, with build_on =
    "remote"): a project naming `../../.aws/credentials`, or shipping a `Dockerfile` link to
    it, must not get a file of the user's outside the project into the build. The stand-in
    for the private file is a valid Dockerfile, so a leak shows as the run seeing it."""
    private = tmp_path / "outside" / "credentials"
    private.parent.mkdir()
    private.write_text(f"FROM {busybox_image}\nRUN echo leaked-{TOKEN} > /leak\n")
    setting = 'dockerfile = "../outside/credentials"\n' if how == "setting" else ""
    if how == "link":
        (vp_env.project / "Dockerfile").symlink_to(private)
    path = vp_env.write_config(f'[host]\nplatform = "local"\n[docker]\nenabled = true\n{setting}')
    r = vp_env.run("cat", "/leak", timeout=300)
    assert TOKEN not in r.stdout + r.stderr
    assert r.returncode == 2, r.stderr
    line = _one_error_line(r.stderr)
    assert "[docker] dockerfile" in line and "outside" in line and str(path.parent) in line
    assert "vp config set --user docker.dockerfile" in r.stderr

    # the user's own file may point anywhere: their choice
    if how == "setting":
        vp_env.write_config('[host]\nplatform = "local"\n[docker]\nenabled = true\n')
        _user_file(vp_env, f'[docker]\ndockerfile = "{private}"\n')
        r = vp_env.run("cat", "/leak", timeout=300)
        assert r.returncode == 0 and TOKEN in r.stdout, r.stderr


# ------------------------------------------------------------------ vp ui


def test_the_web_page_never_asks_and_never_connects(
    untrusting: VpEnv, ssh_host: SshHost, remote_workdir: Path
) -> None:
    """`vp ui` started from a terminal serves requests from an event loop and worker threads:
    a trust question there would hang the page. It refuses with the same hint instead."""
    import pty
    import socket

    httpx = pytest.importorskip("httpx")
    pytest.importorskip("starlette")
    from tests.waiting import wait_for

    env = untrusting
    _alias(env, ssh_host, "evilhost")
    _with_secrets(env)
    _cloned(env, remote_workdir, 'host = "evilhost"', secrets=True)
    before = _connections(ssh_host)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    master, slave = pty.openpty()
    token = "test-token-0123456789abcdef"
    proc = subprocess.Popen(
        [*VP, "ui", "--port", str(port)],
        cwd=env.project,
        env={**env.env, "VP_UI_TOKEN": token},
        stdin=slave,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(slave)
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(url + "/login", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        def exited() -> str | None:
            return None if proc.poll() is None else "vp ui exited"

        wait_for(up, 60, "vp ui to answer", gave_up=exited)
        api = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"})
        for r in (api.post("/api/keepalive"), api.post("/api/runs", json={"command": DUMP})):
            assert 400 <= r.status_code < 500, r.text
            assert "vp trust" in (r.json().get("hint") or ""), r.text
            assert "evilhost" in r.json()["error"] and TOKEN not in r.text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # stuck on a question nobody can answer
            proc.kill()
            proc.wait()
        os.close(master)
    assert _connections(ssh_host) == before and not remote_workdir.exists()


# ------------------------------------------------------------------ cloud names in API paths


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[aws]\nregion = "evil.example.com"\n', "[aws] region"),
        ('[aws]\nregion = "us-east-1/../x"\n', "[aws] region"),
        ('[gce]\nzone = "us-central1-a/../../evil"\n', "[gce] zone"),
        ('[gce]\nproject = "p/../../x?y#z"\n', "[gce] project"),
    ],
)
def test_cloud_names_that_go_into_api_urls_are_validated(
    vp_env: VpEnv, text: str, key: str
) -> None:
    """A region or project from a file becomes part of an API host or path: one line naming
    the file and key (an AWS region with dots was an "internal error")."""
    platform = "aws" if "[aws]" in text else "gce"
    path = vp_env.write_config(f'[host]\nplatform = "{platform}"\n' + text)
    keys = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x"}
    r = vp_env.run("ls", extra_env=keys)
    assert r.returncode == 2, r.stderr
    line = _one_error_line(r.stderr)
    assert str(path) in line and key in line and "internal error" not in r.stderr


def test_real_cloud_names_still_load(vp_env: VpEnv) -> None:
    vp_env.write_config(
        '[aws]\nregion = "us-east-1"\n[gce]\nzone = "europe-west4-a"\n'
        'project = "example.com:my-project-123"\n'
    )
    r = vp_env.run("config", "show")
    assert r.returncode == 0, r.stderr
