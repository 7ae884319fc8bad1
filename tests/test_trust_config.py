"""A project file is someone else's text (issue #10, items 2, 11, 13): it cannot choose where
the user's credentials go, `vp config set` keeps a file's comments and never writes or echoes a
secret into the project, and every value a file supplies is checked before it reaches a shell,
cloud-init or the terminal. Through the real CLI, against a listener that records requests."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.dockerenv import busybox_image, docker_engine  # noqa: F401

VAST_KEY = "vastkey-" + "a1B2c3D4" * 4
THUNDER_TOKEN = "tnrtoken-" + "z9Y8x7W6" * 4


class Listener:
    """A TCP server that records every byte sent to it and answers nothing useful."""

    def __init__(self, answer: bytes = b"HTTP/1.1 500 Nope\r\n") -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(self.answer + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            finally:
                self.received.append(data)
                conn.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def keyed_env(vp_env: VpEnv) -> VpEnv:
    """A user whose vast key and Thunder token sit where the providers' own CLIs keep them."""
    vast = vp_env.home / ".config" / "vastai" / "vast_api_key"
    vast.parent.mkdir(parents=True)
    vast.write_text(VAST_KEY)
    thunder = vp_env.home / ".thunder" / "token"
    thunder.parent.mkdir(parents=True)
    thunder.write_text(THUNDER_TOKEN)
    return vp_env


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("vp: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def _user_file(env: VpEnv) -> Path:
    return env.home / ".config" / "vp" / "config.toml"


# ------------------------------------------------------------------ endpoints from a project


@pytest.mark.parametrize(
    ("section", "platform", "env_name"),
    [("vast", "vast", "VAST_URL"), ("thunder", "thunder", "TNR_API_URL")],
)
def test_project_file_cannot_choose_where_api_keys_go(
    keyed_env: VpEnv, listener: Listener, section: str, platform: str, env_name: str
) -> None:
    path = keyed_env.write_config(f'[{section}]\nurl = "{listener.url}"\n')
    r = keyed_env.run("-p", platform, "ls")
    assert r.returncode == 2, r.stderr
    line = _one_error_line(r.stderr)
    assert str(path) in line and f"[{section}] url" in line
    assert f"vp config set --user {section}.url" in r.stderr and env_name in r.stderr
    assert listener.received == []


def test_pyproject_and_config_flag_are_project_files_too(
    keyed_env: VpEnv, listener: Listener
) -> None:
    (keyed_env.project / "pyproject.toml").write_text(
        f'[project]\nname = "x"\n\n[tool.vp.vast]\nurl = "{listener.url}"\n'
    )
    r = keyed_env.run("-p", "vast", "ls")
    assert r.returncode == 2
    assert "[tool.vp]" in _one_error_line(r.stderr) and "[vast] url" in r.stderr

    other = keyed_env.home / "other.toml"
    other.write_text(f'[thunder]\nurl = "{listener.url}"\n')
    r = keyed_env.run("--config", str(other), "-p", "thunder", "ls")
    assert r.returncode == 2
    assert str(other) in _one_error_line(r.stderr) and "[thunder] url" in r.stderr
    assert listener.received == []


@pytest.mark.parametrize("key", ["username", "registry"])
def test_project_file_cannot_set_registry_credentials(vp_env: VpEnv, key: str) -> None:
    path = vp_env.write_config(f'[docker]\nimage = "evil.example/x/y"\n{key} = "me"\n')
    r = vp_env.run("config", "show")
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert str(path) in line and f"[docker] {key}" in line
    assert f"vp config set --user docker.{key}" in r.stderr


def test_user_endpoint_over_plain_http_must_be_loopback(
    keyed_env: VpEnv, listener: Listener
) -> None:
    user = _user_file(keyed_env)
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_text('[vast]\nurl = "http://vast.example.com:8080"\n')
    r = keyed_env.run("-p", "vast", "ls")
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert str(user) in line and "[vast] url" in line and "https" in line

    user.write_text("")
    r = keyed_env.run("-p", "thunder", "ls", extra_env={"TNR_API_URL": "http://10.9.8.7/v1"})
    assert r.returncode == 2
    assert "TNR_API_URL" in _one_error_line(r.stderr) and "https" in r.stderr

    # loopback over http is how tests and local proxies work: allowed, and the key goes there
    user.write_text(f'[vast]\nurl = "{listener.url}"\n')
    r = keyed_env.run("-p", "vast", "ls")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert any(VAST_KEY.encode() in req for req in listener.received)


# ------------------------------------------------------------------ registry credentials


def test_registry_credentials_go_only_to_their_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from vp.docker import registry_auth
    from vp.errors import UsageError

    monkeypatch.delenv("VP_REGISTRY_USER", raising=False)
    monkeypatch.delenv("VP_REGISTRY_PASSWORD", raising=False)
    monkeypatch.delenv("VP_DOCKER_REGISTRY", raising=False)
    monkeypatch.delenv("VP_REGISTRY", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    mine = {"username": "me", "password": "hunter2-registry", "registry": "ghcr.io"}
    assert registry_auth("ghcr.io/me/app", mine)["password"] == "hunter2-registry"
    # a project that names another registry does not get them
    assert registry_auth("evil.example:5000/me/app", mine) is None
    assert registry_auth("me/app", mine) is None  # Docker Hub is another registry too
    # credentials bound to no registry are refused rather than sent wherever the image points
    with pytest.raises(UsageError) as err:
        registry_auth("evil.example/me/app", {"username": "me", "password": "pw"})
    assert "pw" not in str(err.value) and "docker.registry" in (err.value.hint or "")
    monkeypatch.setenv("VP_REGISTRY_USER", "me")
    monkeypatch.setenv("VP_REGISTRY_PASSWORD", "from-env")
    monkeypatch.setenv("VP_DOCKER_REGISTRY", "127.0.0.1:5000")
    assert registry_auth("127.0.0.1:5000/x", {})["password"] == "from-env"
    assert registry_auth("evil.example/x", {}) is None


def test_project_image_on_another_registry_gets_no_credentials(
    ssh_project: VpEnv,
    busybox_image: str,  # noqa: F811
) -> None:
    """The push goes to the registry the project names; it challenges for a login (401), and
    vp's credentials, which are for ghcr.io, are never offered to it."""
    import base64

    password = "regpw-" + "Zx9Yw8Vu7" * 3
    fake = Listener(b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="r"\r\n')
    try:
        user = _user_file(ssh_project)
        user.parent.mkdir(parents=True, exist_ok=True)
        user.write_text(
            f'[docker]\nregistry = "ghcr.io"\nusername = "me"\npassword = "{password}"\n'
        )
        user.chmod(0o600)
        cfg = ssh_project.project / "vp.toml"
        cfg.write_text(
            cfg.read_text() + f'\n[docker]\nenabled = true\nimage = "127.0.0.1:{fake.port}/x/y"\n'
        )
        (ssh_project.project / "Dockerfile").write_text("FROM vp-test/busybox:latest\n")
        (ssh_project.project / ".dockerignore").write_text("*\n")
        ssh_project.env["DOCKER_CONFIG"] = str(ssh_project.home / ".docker")
        r = ssh_project.run("true", timeout=300)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        seen = b"".join(fake.received)
        assert seen, "the push never reached the project's registry"
        basic = base64.b64encode(f"me:{password}".encode())
        assert password.encode() not in seen and basic not in seen
        assert b"authorization:" not in seen.lower()
    finally:
        fake.close()


# ------------------------------------------------------------------ vp config set


COMMENTED = """\
# team settings: keep this comment
[host]
platform = "local"   # where runs go
gpu = "A100" # the card

# sync notes
[sync]
workdir = "/w"  # remote dir
extra_ignore = [
  "data/",  # big
  "x#y",
]

[env]
WANDB_PROJECT = "mnist"
"""


def test_config_set_keeps_comments_and_formatting(vp_env: VpEnv) -> None:
    path = vp_env.write_config(COMMENTED)
    assert vp_env.run("config", "set", "host.gpu", "H100").returncode == 0
    expected = COMMENTED.replace('gpu = "A100" # the card', 'gpu = "H100" # the card')
    assert path.read_text() == expected

    r = vp_env.run("config", "set", "sync.download", "false")
    assert r.returncode == 0, r.stderr
    expected = expected.replace('  "x#y",\n]\n', '  "x#y",\n]\ndownload = false\n')
    assert path.read_text() == expected

    r = vp_env.run("config", "set", "sync.extra_ignore", "a/,b/")
    assert r.returncode == 0, r.stderr
    text = path.read_text()
    assert 'workdir = "/w"  # remote dir\nextra_ignore = ["a/", "b/"]\ndownload = false\n' in text
    assert "# remote dir" in text and "# sync notes" in text and "download = false" in text

    assert vp_env.run("config", "set", "docker.enabled", "true").returncode == 0
    assert vp_env.run("config", "set", "env.EPOCHS", "3").returncode == 0
    text = path.read_text()
    assert text.startswith("# team settings: keep this comment\n")
    assert text.endswith('WANDB_PROJECT = "mnist"\nEPOCHS = "3"\n\n[docker]\nenabled = true\n')
    r = vp_env.run("-o", "json", "config", "show")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["sync"]["extra_ignore"] == ["a/", "b/"] and data["env"]["EPOCHS"] == "3"
    assert vp_env.run("config", "get", "host.platform").stdout.strip() == "local"


def test_config_set_keeps_pyproject_comments(vp_env: VpEnv) -> None:
    path = vp_env.project / "pyproject.toml"
    original = '[project]\nname = "x"  # pkg\n\n[tool.vp.host]\n# pick one\ngpu = "A100"\n'
    path.write_text(original)
    r = vp_env.run("config", "set", "host.gpus", "2")
    assert r.returncode == 0, r.stderr
    assert path.read_text() == original + "gpus = 2\n"
    r = vp_env.run("config", "set", "project.name", "demo")
    assert r.returncode == 0, r.stderr
    assert path.read_text() == original + 'gpus = 2\n\n[tool.vp.project]\nname = "demo"\n'


def test_config_set_user_file_keeps_comments_and_mode(vp_env: VpEnv) -> None:
    user = _user_file(vp_env)
    user.parent.mkdir(parents=True)
    user.write_text('# my keys\n[vast]\n# from the console\napi_key = "old"\n')
    user.chmod(0o600)
    r = vp_env.run("config", "set", "--user", "vast.api_key", "-", input="new-key-value\n")
    assert r.returncode == 0, r.stderr
    assert user.read_text() == '# my keys\n[vast]\n# from the console\napi_key = "new-key-value"\n'
    assert stat.S_IMODE(user.stat().st_mode) == 0o600
    assert "new-key-value" not in r.stderr + r.stdout


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("env.HF_TOKEN", "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
        ("env.OPENAI", "sk-proj-" + "Q1w2E3r4T5y6U7i8O9p0" * 2),
        ("env.DB_PASSWORD", "correct-horse-battery"),
        ("env.BLOB", "x8Kq2LmZ9vTn4RwP7sYb3JcH6dFg1Ae5"),
    ],
)
def test_config_set_refuses_a_secret_in_the_project_file(
    vp_env: VpEnv, key: str, value: str
) -> None:
    path = vp_env.write_config('[host]\nplatform = "local"\n')
    before = path.read_text()
    r = vp_env.run("config", "set", key, value)
    assert r.returncode == 2
    assert value not in r.stderr + r.stdout
    assert path.read_text() == before
    assert f"vp config set --user {key} -" in r.stderr
    assert str(path) in _one_error_line(r.stderr)

    r = vp_env.run("config", "set", key, "-", input=value + "\n")
    assert r.returncode == 2 and value not in r.stderr + r.stdout and path.read_text() == before

    r = vp_env.run("config", "set", "--user", key, "-", input=value + "\n")
    assert r.returncode == 0, r.stderr
    assert value not in r.stderr + r.stdout
    assert value in _user_file(vp_env).read_text()
    assert stat.S_IMODE(_user_file(vp_env).stat().st_mode) == 0o600


def test_config_set_allows_plain_env_values(vp_env: VpEnv) -> None:
    path = vp_env.write_config("")
    for key, value in [("env.TOKENIZERS_PARALLELISM", "false"), ("env.WANDB_MODE", "offline")]:
        r = vp_env.run("config", "set", key, value)
        assert r.returncode == 0, r.stderr
    assert 'TOKENIZERS_PARALLELISM = "false"' in path.read_text()


# ------------------------------------------------------------------ values from files


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[host]\nidle_stop_minutes = -1\n", "[host] idle_stop_minutes"),
        ("[host]\nready_timeout = -5\n", "[host] ready_timeout"),
        ("[host]\nidle_stop_minutes = nan\n", "[host] idle_stop_minutes"),
        ("[ssh]\nconnect_timeout = -1\n", "[ssh] connect_timeout"),
        ("[vast]\npoll_interval = 0\n", "[vast] poll_interval"),
        ("[host]\ndisk_gb = 0\n", "[host] disk_gb"),
        ('[aws]\nuser = "ubuntu; rm -rf /"\n', "[aws] user"),
        ('[vast]\nuser = "root\\nx"\n', "[vast] user"),
        ('[gce]\nuser = "-oProxyCommand=sh"\n', "[gce] user"),
        ('[thunder]\nuser = "Ubuntu Admin"\n', "[thunder] user"),
        ('[ssh]\nhost = "-oProxyCommand=touch /tmp/pwned"\n', "[ssh] host"),
        ('[ssh]\nhost = "me@box:99999"\n', "[ssh] host"),
        ('[ssh]\nhost = "bad user@box"\n', "[ssh] host"),
    ],
)
def test_project_values_are_validated(vp_env: VpEnv, text: str, key: str) -> None:
    path = vp_env.write_config(text)
    r = vp_env.run("config", "show")
    assert r.returncode == 2, r.stdout
    line = _one_error_line(r.stderr)
    assert str(path) in line and key in line
    assert "\x1b" not in r.stderr and "\n" not in line


def test_valid_values_still_load(vp_env: VpEnv) -> None:
    vp_env.write_config(
        '[host]\nidle_stop_minutes = 0\n[aws]\nuser = "ec2-user"\n'
        '[ssh]\nhost = "deploy_1@gpu-box.example.com:2222"\n'
    )
    r = vp_env.run("config", "show")
    assert r.returncode == 0, r.stderr


def test_warnings_escape_terminal_control_characters(tmp_path: Path, vp_env: VpEnv) -> None:
    project = tmp_path / "evil\x1b[2Jname"
    project.mkdir()
    (project / "vp.toml").write_text("")
    r = vp_env.run("init", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stderr
    assert "evil\\x1b[2Jname" in r.stderr and "exists" in r.stderr


def test_ui_messages_are_escaped_centrally(capsys: pytest.CaptureFixture[str]) -> None:
    from vp.ui import UI

    ui = UI(verbose=True)
    for say in (ui.info, ui.warn, ui.note, ui.debug):
        say("file \x1b[2J\x07\rname")
    err = capsys.readouterr().err
    assert "\x1b[2J" not in err and "\x07" not in err and "\r" not in err
    assert err.count("file \\x1b[2J\\x07\\rname") == 4
    assert os.linesep in err


@pytest.mark.parametrize(
    ("text", "table", "key", "value", "expected"),
    [
        # a header-looking line inside a multi-line string is not a header
        (
            '[host]\nidle_stop_command = """\n[sync]\nx = 1\n"""  # c\n',
            ("sync",),
            "download",
            False,
            '[host]\nidle_stop_command = """\n[sync]\nx = 1\n"""  # c\n'
            "\n[sync]\ndownload = false\n",
        ),
        # CRLF files stay CRLF; a '#' inside a string is not a comment
        (
            '[env]\r\nA = "x#y" # keep\r\n',
            ("env",),
            "A",
            "z",
            '[env]\r\nA = "z" # keep\r\n',
        ),
        (
            '[env]\r\nA = "x#y" # keep\r\n',
            ("env",),
            "B",
            "1",
            '[env]\r\nA = "x#y" # keep\r\nB = "1"\r\n',
        ),
        # quoted keys and headers, no newline at the end of the file
        ('[ "host" ]\n"gpu" = \'A100\'', ("host",), "gpu", "H100", '[ "host" ]\n"gpu" = "H100"'),
    ],
)
def test_tomledit_cases(
    text: str, table: tuple[str, ...], key: str, value: object, expected: str
) -> None:
    from vp.tomledit import set_key

    assert set_key(text, table, key, value, "f") == expected


def test_tomledit_refuses_what_it_cannot_edit_in_place() -> None:
    from vp.errors import ConfigError
    from vp.tomledit import set_key

    with pytest.raises(ConfigError) as err:
        set_key('[tool.vp]\nhost = { gpu = "A100" }\n', ("tool", "vp", "host"), "gpus", 2, "f")
    assert "by hand" in (err.value.hint or "")
