"""Talking to a Docker engine: connect (local socket, DOCKER_HOST, a forwarded socket, ssh://),
image references and registries, and the disk check before a host pulls an image.

The Docker SDK is imported inside functions: `vp --help` must not pay for it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vp.errors import VpError
from vp.output import human_size

if TYPE_CHECKING:
    import docker

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
DOCKER_HUB = "docker.io"
# The key Docker itself uses for Docker Hub in ~/.docker/config.json and in auth configs.
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
# Seconds to wait for the engine to answer the first ping; builds and pushes then run untimed.
PING_TIMEOUT = 15


def engine_address(docker_host: str | None = None) -> str:
    """The engine vp will talk to, as a user would name it: the argument, DOCKER_HOST, the
    current docker CLI context (Docker Desktop, colima), or the default socket."""
    if docker_host or os.environ.get("DOCKER_HOST"):
        return docker_host or os.environ["DOCKER_HOST"]
    try:
        from docker.context import ContextAPI

        context = ContextAPI.get_context(os.environ.get("DOCKER_CONTEXT"))
        if context is not None and context.Host:
            return context.Host
    except Exception:  # a broken context store: docker.from_env will say what is wrong
        pass
    return DEFAULT_SOCKET


def connect(docker_host: str | None = None) -> docker.DockerClient:
    """A client for the engine at `docker_host` (or DOCKER_HOST, or the default socket) that has
    answered a ping. Its requests have no read timeout: a quiet `RUN` step may take an hour.

    Raises a VpError naming the engine address when nothing answers there.
    """
    import docker
    from docker.errors import DockerException

    address = engine_address(docker_host)
    try:
        if docker_host:
            client = docker.DockerClient(
                base_url=docker_host,
                timeout=PING_TIMEOUT,
                use_ssh_client=docker_host.startswith("ssh://"),
            )
        else:
            client = docker.from_env(timeout=PING_TIMEOUT)
        client.ping()
    except (DockerException, OSError) as exc:
        raise VpError(
            f"Docker engine not reachable at {address}",
            hint=_unreachable_hint(address, docker_host, exc),
        ) from None
    client.api.timeout = None
    return client


def _unreachable_hint(address: str, docker_host: str | None, exc: Exception) -> str:
    detail = _reason(exc)
    if docker_host:
        where = "that dockerd runs there (and for a forwarded socket, that the ssh forward is up)"
    elif os.environ.get("DOCKER_HOST"):
        where = "DOCKER_HOST (unset it to use the local socket)"
    else:
        where = "the local engine: start it (`sudo systemctl start docker`) or set DOCKER_HOST"
    if detail == "permission denied":
        where = "the socket's permissions: add yourself to the `docker` group, or set DOCKER_HOST"
    return f"check {where} ({detail})" if detail else f"check {where}"


def _reason(exc: BaseException) -> str:
    """Why the engine did not answer, in a few words."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, FileNotFoundError):
            return "no socket there"
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, PermissionError):
            return "permission denied"
        stack += [a for a in getattr(err, "args", ()) if isinstance(a, BaseException)]
        stack += [e for e in (err.__cause__, err.__context__) if e is not None]
    text = str(exc)
    for needle, reason in (
        ("No such file or directory", "no socket there"),
        ("Connection refused", "connection refused"),
        ("Permission denied", "permission denied"),
    ):
        if needle in text:
            return reason
    return _first_line(text)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def repository(image: str) -> str:
    """`image` without its tag or digest, as `docker push` wants it (docker-py's parsing)."""
    from docker.utils import parse_repository_tag

    repo = parse_repository_tag(image)[0]  # drops a digest, or a tag
    return parse_repository_tag(repo)[0] if "@" in image else repo  # a tag before a digest


def registry_host(image: str) -> str:
    """The registry an image reference lives in (`docker.io` for Docker Hub)."""
    from docker.auth import resolve_repository_name

    return resolve_repository_name(repository(image))[0]


def names_registry(image: str) -> bool:
    """Does `image` say which registry it lives in (`ghcr.io/me/x`, `docker.io/me/x`), rather
    than leaving it to Docker Hub by default (`me/x`, `ubuntu`)?"""
    from docker.auth import split_repo_name

    repo = repository(image)
    return repo.startswith(split_repo_name(repo)[0] + "/")


def image_size(ref: str, docker_host: str | None = None) -> int | None:
    """Bytes the image takes unpacked on the engine at `docker_host`, or None if it is not there."""
    from docker.errors import ImageNotFound

    client = connect(docker_host)
    try:
        return int(client.api.inspect_image(ref).get("Size") or 0)
    except ImageNotFound:
        return None
    finally:
        client.close()


# Shell text that prints the bytes free where the host's engine keeps images; run it on the host
# and feed the output to parse_free_bytes().
FREE_BYTES_SHELL = (
    "d=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null); "
    '[ -d "$d" ] || d=/var/lib/docker; [ -d "$d" ] || d=/; '
    "df -Pk \"$d\" | awk 'NR==2 {print $4 * 1024}'"
)


def parse_free_bytes(output: str) -> int | None:
    for token in reversed(output.split()):
        try:
            return int(float(token))
        except ValueError:
            continue
    return None


def check_disk(
    image_size: int, free_bytes: int, *, host: str = "the host", headroom: int = 1 << 30
) -> None:
    """Refuse to pull an image that will not fit: it needs its unpacked size plus `headroom`
    (the compressed layers sit beside the unpacked ones while pulling, and the run needs room)."""
    needed = image_size + headroom
    if free_bytes < needed:
        raise VpError(
            f"image needs {human_size(needed)} of disk "
            f"but {host} has {human_size(free_bytes)} free",
            hint="raise [host] disk_gb, free space on the host (`docker system prune`), "
            "or slim the image",
        )
