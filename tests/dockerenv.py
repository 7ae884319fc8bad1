"""A real Docker engine and a real registry for the Docker tests, shared by every pytest-xdist
worker and left running for the next session (each start is idempotent).

- engine: the one answering on DOCKER_HOST / the default socket; if none answers, this starts
  `dockerd --storage-driver=vfs` (works without overlayfs, e.g. inside a VM or container),
  logging to /tmp/vp-test-docker/dockerd.log.
- registry: Debian's `docker-registry` (CNCF distribution) on 127.0.0.1:<port>, plain HTTP
  (dockerd treats 127.0.0.0/8 as an insecure registry by default), htpasswd auth with bcrypt,
  its own config and storage under /tmp/vp-test-docker/registry/.
- base image: `vp-test/busybox:latest`, FROM scratch + the static busybox and its applet
  symlinks, built once (no image can be pulled in the test environment).

A file lock makes one worker do the starting while the others wait. With CI=true a missing
engine fails the tests; elsewhere they are skipped with the reason.

Fixtures: ``docker_engine``, ``registry``, ``busybox_image``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.requires import missing

STATE_DIR = Path("/tmp/vp-test-docker")
LOCK_PATH = STATE_DIR / "lock"
DOCKERD_LOG = STATE_DIR / "dockerd.log"
REGISTRY_DIR = STATE_DIR / "registry"
REGISTRY_STATE = REGISTRY_DIR / "state.json"
BUSYBOX_IMAGE = "vp-test/busybox:latest"
ENGINE_START_TIMEOUT = 90
REGISTRY_USER = "vp-tester"


def unavailable(reason: str) -> NoReturn:
    """Fail under CI (the environment promises an engine), skip elsewhere."""
    missing(f"Docker test environment unavailable: {reason}")


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# ---------------------------------------------------------------------------- engine


def engine_answers() -> bool:
    try:
        return (
            _docker("info", "--format", "{{.ServerVersion}}", timeout=20, check=False).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_engine() -> str:
    """Make sure an engine answers (starting dockerd if needed); return its address."""
    address = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if shutil.which("docker") is None:
        unavailable("the `docker` CLI is not installed (apt-get install docker.io)")
    with _lock():
        if engine_answers():
            return address
        if os.environ.get("DOCKER_HOST"):
            unavailable(f"no engine answers at DOCKER_HOST={address}")
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not os.path.exists(dockerd):
            unavailable("dockerd is not installed (apt-get install docker.io)")
        if os.geteuid() != 0:
            unavailable("no engine answers and starting dockerd needs root")
        with DOCKERD_LOG.open("ab") as log:
            log.write(f"--- starting dockerd at {time.ctime()}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [dockerd, "--storage-driver=vfs"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # outlives this worker: other workers and sessions
            )
        deadline = time.monotonic() + ENGINE_START_TIMEOUT
        while time.monotonic() < deadline:
            if engine_answers():
                return address
            if proc.poll() is not None:
                break
            time.sleep(0.3)
        unavailable(f"dockerd did not come up; {DOCKERD_LOG}:\n{_tail(DOCKERD_LOG)}")
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Registry:
    """A running registry: `host` is what goes in image names (127.0.0.1:PORT)."""

    host: str
    username: str
    password: str
    storage: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def auth(self) -> dict:
        return {"username": self.username, "password": self.password, "serveraddress": self.host}

    def _request(self, method: str, path: str, accept: str | None = None):
        request = urllib.request.Request(self.url + path, method=method)
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        if accept:
            request.add_header("Accept", accept)
        return urllib.request.urlopen(request, timeout=10)

    def manifest_digest(self, repo: str, tag: str) -> str | None:
        """The digest the registry serves for repo:tag, or None if it has no such tag."""
        accept = (
            "application/vnd.docker.distribution.manifest.v2+json, "
            "application/vnd.oci.image.manifest.v1+json"
        )
        try:
            with self._request("HEAD", f"/v2/{repo}/manifests/{tag}", accept) as response:
                return response.headers["Docker-Content-Digest"]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def log_offset(self) -> int:
        return self.log_path.stat().st_size

    def new_user(self) -> Registry:
        """The same registry as a user with a password of its own (no other test uses it, so a
        scan for it sees only this test's processes). The registry rereads htpasswd when the
        file changes; the password reaches `htpasswd` on stdin, never in argv."""
        name = f"vp-u{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(18)
        line = subprocess.run(
            ["htpasswd", "-nBi", name],
            input=password,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        with _lock(), (REGISTRY_DIR / "htpasswd").open("a") as f:
            f.write(line + "\n")
        return dataclasses.replace(self, username=name, password=password)

    def requests_since(self, offset: int) -> list[str]:
        """Access-log lines written since `offset` (one per HTTP request)."""
        with self.log_path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        return [line for line in text.splitlines() if '"' in line and "HTTP/1.1" in line]


def _registry_answers(host: str) -> bool:
    """True if a distribution registry with auth answers /v2/ at host."""
    try:
        urllib.request.urlopen(f"http://{host}/v2/", timeout=2)
    except urllib.error.HTTPError as exc:
        return exc.code == 401 and "Docker-Distribution-Api-Version" in exc.headers
    except OSError:
        return False
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_registry() -> Registry:
    binary = shutil.which("docker-registry")
    if binary is None:
        unavailable("docker-registry is not installed (apt-get install docker-registry)")
    if shutil.which("htpasswd") is None:
        unavailable("htpasswd is not installed (apt-get install apache2-utils)")
    with _lock():
        with contextlib.suppress(OSError, ValueError, KeyError):
            state = json.loads(REGISTRY_STATE.read_text())
            registry = Registry(
                host=state["host"],
                username=state["username"],
                password=state["password"],
                storage=Path(state["storage"]),
                log_path=Path(state["log_path"]),
            )
            if _registry_answers(registry.host):
                return registry
        if REGISTRY_DIR.exists():
            shutil.rmtree(REGISTRY_DIR)
        storage = REGISTRY_DIR / "storage"
        storage.mkdir(parents=True)
        password = secrets.token_urlsafe(12)
        htpasswd = subprocess.run(
            ["htpasswd", "-Bbn", REGISTRY_USER, password],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (REGISTRY_DIR / "htpasswd").write_text(htpasswd)
        log_path = REGISTRY_DIR / "registry.log"
        for _attempt in range(5):
            host = f"127.0.0.1:{_free_port()}"
            config = REGISTRY_DIR / "config.yml"
            config.write_text(
                "version: 0.1\n"
                "log:\n  level: info\n  accesslog:\n    disabled: false\n"
                f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
                "  delete:\n    enabled: true\n"
                f"http:\n  addr: {host}\n  secret: {secrets.token_hex(16)}\n"
                "auth:\n  htpasswd:\n    realm: vp-test\n"
                f"    path: {REGISTRY_DIR / 'htpasswd'}\n"
            )
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    [binary, "serve", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and proc.poll() is None:
                if _registry_answers(host):
                    registry = Registry(host, REGISTRY_USER, password, storage, log_path)
                    REGISTRY_STATE.write_text(
                        json.dumps(
                            {
                                "host": host,
                                "username": REGISTRY_USER,
                                "password": password,
                                "storage": str(storage),
                                "log_path": str(log_path),
                                "pid": proc.pid,
                            }
                        )
                    )
                    return registry
                time.sleep(0.1)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        unavailable(f"docker-registry did not start; {log_path}:\n{_tail(log_path)}")
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------- base image


def _busybox_binary() -> str | None:
    for path in (shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if path and os.path.exists(path):
            return path
    return None


def ensure_busybox_image() -> str:
    """`vp-test/busybox:latest`: scratch + static busybox + applet links; built once."""
    with _lock():
        if _docker("image", "inspect", BUSYBOX_IMAGE, check=False).returncode == 0:
            return BUSYBOX_IMAGE
        busybox = _busybox_binary()
        if busybox is None:
            unavailable("busybox is not installed (apt-get install busybox-static)")
        with tempfile.TemporaryDirectory() as context:
            shutil.copy(busybox, Path(context) / "busybox")
            (Path(context) / "Dockerfile").write_text(
                "FROM scratch\n"
                "COPY busybox /bin/busybox\n"
                'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
                'RUN ["/bin/busybox", "mkdir", "-p", "/tmp", "/root", "/workspace"]\n'
                "ENV PATH=/bin\n"
            )
            built = _docker("build", "-q", "-t", BUSYBOX_IMAGE, context, timeout=180, check=False)
        if built.returncode != 0:
            unavailable(
                f"cannot build {BUSYBOX_IMAGE} (is {busybox} the static busybox?): "
                f"{built.stderr.strip()[-500:]}"
            )
        check = _docker("run", "--rm", BUSYBOX_IMAGE, "sh", "-c", "echo ok", check=False)
        if check.stdout.strip() != "ok":
            _docker("rmi", BUSYBOX_IMAGE, check=False)
            unavailable(f"{BUSYBOX_IMAGE} does not run (dynamic busybox?): {check.stderr.strip()}")
        return BUSYBOX_IMAGE


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The address of a Docker engine that answers (started if needed, left running)."""
    return ensure_engine()


@pytest.fixture(scope="session")
def registry(docker_engine: str) -> Registry:
    """A distribution registry with htpasswd auth on 127.0.0.1 (started if needed)."""
    return ensure_registry()


@pytest.fixture(scope="session")
def busybox_image(docker_engine: str) -> str:
    """A tiny local base image, `vp-test/busybox:latest`, for test Dockerfiles."""
    return ensure_busybox_image()
