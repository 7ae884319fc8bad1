"""Docker in the run pipeline: build (locally or on the host's engine), push, and wrap the command.

VM-like hosts (kind "vm", "ssh", "local") run the command in `docker run` inside vp's
detached wrapper, so streaming, reconnects, exit codes and Ctrl-C behave as without Docker.
Container platforms (kind "container": vast, runpod) instead boot the instance from the image.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vp import paths, settings
from vp.config import Config
from vp.errors import UsageError, VpError
from vp.ssh import SshTransport
from vp.transport import Transport
from vp.ui import UI, Status


def image_name(cfg: Config) -> str:
    return cfg.docker.image or f"vp-{cfg.project}"


def checked_dockerfile(cfg: Config) -> str:
    """`[docker] dockerfile`, checked: vp reads it here and sends it to a Docker engine (the
    host's, with build_on = "remote"), so unless the user named an absolute path themselves
    (user file, environment) it must stay inside the project, links followed. Otherwise a
    cloned repo could name `../../.aws/credentials`, or ship a `Dockerfile` link to it."""
    raw = cfg.docker.dockerfile
    theirs = "docker.dockerfile" not in cfg.from_project and Path(raw).is_absolute()
    if theirs:
        return raw
    root = cfg.project_root.resolve()
    real = (cfg.project_root / raw).resolve()
    if real != root and root not in real.parents:
        raise UsageError(
            f"[docker] dockerfile {raw!r} is {real}, outside the project {root}: vp would "
            "send that file to the Docker engine",
            hint="keep the Dockerfile in the project; one elsewhere must be your own choice: "
            "vp config set --user docker.dockerfile /ABSOLUTE/PATH",
        )
    return raw


def build_and_push(cfg: Config, ui: UI) -> tuple[str, dict | None]:
    """Build locally and push: the image ref and the pull credentials."""
    from vp.docker import ensure_image, registry_auth
    from vp.docker.engine import names_registry

    image = image_name(cfg)
    if not names_registry(image):
        raise UsageError(
            f"[docker] image = {image!r} names no registry to push to",
            hint='set [docker] image = "registry.example.com/you/project", '
            'or build_on = "remote" to build on the host itself',
        )
    auth = registry_auth(image, settings.as_dict(cfg.docker))
    with Status(ui, f"image {image}") as status:
        ref = ensure_image(
            cfg.project_root,
            dockerfile=checked_dockerfile(cfg),
            image=image,
            push=True,
            auth=auth,
            progress=status.update,
        )
    return ref, auth


def build_unpushed(cfg: Config, ui: UI, docker_host: str | None = None) -> str:
    """Build on the engine that will run the image (this machine's, or the host's)."""
    from vp.docker import ensure_image

    with Status(ui, f"image {image_name(cfg)}") as status:
        return ensure_image(
            cfg.project_root,
            dockerfile=checked_dockerfile(cfg),
            image=image_name(cfg),
            push=False,
            auth=None,
            progress=status.update,
            docker_host=docker_host,
        )


@contextlib.contextmanager
def forwarded_engine(transport: SshTransport) -> Iterator[str]:
    """The host's Docker socket as a local unix socket, over the shared ssh connection."""
    digest = hashlib.sha1(transport.control_path.encode()).hexdigest()[:10]
    sock = str(paths.control_dir() / f"d-{digest}.sock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)
    remote = "/var/run/docker.sock"
    try:
        transport.forward(sock, remote)
    except VpError as exc:
        raise VpError(
            f"could not forward the Docker socket of {transport.label}: {exc}",
            hint="is Docker installed there, and may the ssh user use it (docker group)?",
        ) from None
    try:
        yield f"unix://{sock}"
    finally:
        transport.cancel_forward(sock, remote)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)


def _check_room(transport: Transport, ref: str) -> None:
    """Refuse before a pull that cannot fit on the host's disk; once per image and host."""
    from vp.docker import FREE_BYTES_SHELL, check_disk, image_size, parse_free_bytes

    marker = (
        paths.ensure_private_dir(paths.state_dir() / "docker-pulled")
        / hashlib.sha1(f"{transport.label}\0{ref}".encode()).hexdigest()
    )
    if marker.exists():
        return
    size = image_size(ref)
    if size:
        probe = (
            f"docker image inspect {shlex.quote(ref)} >/dev/null 2>&1 && echo present || "
            f"{{ {FREE_BYTES_SHELL}; }}\n"
        )
        out = transport.run(probe, timeout=60).stdout.decode(errors="replace")
        free = None if "present" in out else parse_free_bytes(out)
        if free is not None:
            check_disk(size, free, host=transport.label)
    marker.touch()


def prepare_command(
    cfg: Config,
    transport: Transport,
    workdir: str,
    command: str,
    env: dict[str, str],
    run_id: str,
    ui: UI,
) -> tuple[str, dict[str, str]]:
    """Make the image available to the host; return the command wrapped in `docker run`, and
    the values that text needs in its environment besides `env` (the registry secret for a
    pull). Both value sets reach the host through `vp.remote.ship_env`, never the text."""
    prepared = prepare(cfg, transport, workdir, command, env, run_id, ui)
    return prepared.command, prepared.env


@dataclass
class Prepared:
    command: str  # the command, wrapped in `docker run`
    env: dict[str, str]  # what the wrapping needs in its environment (a pull's secret)
    image: str  # the image reference the host runs
    setup: str | None = None  # the project's setup, wrapped the same way


def prepare(
    cfg: Config,
    transport: Transport,
    workdir: str,
    command: str,
    env: dict[str, str],
    run_id: str,
    ui: UI,
    setup: str | None = None,
) -> Prepared:
    """`prepare_command`, plus the project's `setup` wrapped to run inside the same image."""
    from vp.docker.run import pull_env, wrap_command

    dockerfile = cfg.project_root / cfg.docker.dockerfile
    if not Path(dockerfile).is_file():
        raise UsageError(
            f"Dockerfile not found: {dockerfile}",
            hint="write one with `vp init --docker`, or set [docker] dockerfile",
        )
    pull_auth = None
    if transport.is_local:
        ref = build_unpushed(cfg, ui)
    elif cfg.docker.build_on == "remote":
        if not isinstance(transport, SshTransport):
            raise UsageError('build_on = "remote" needs an ssh host')
        with forwarded_engine(transport) as docker_host:
            ui.info(f"building on {transport.label}'s Docker engine")
            ref = build_unpushed(cfg, ui, docker_host)
    else:
        ref, pull_auth = build_and_push(cfg, ui)
        _check_room(transport, ref)

    def wrap(text: str, name: str) -> str:
        return wrap_command(
            text,
            image=ref,
            workdir=workdir,
            env=env.keys(),
            gpus=cfg.docker.gpus,
            name=name,
            pull_auth=pull_auth,
        )

    return Prepared(
        command=wrap(command, f"vp-{run_id}"),
        env=pull_env(pull_auth),
        image=ref,
        setup=None if setup is None else wrap(setup, f"vp-{run_id}-setup"),
    )
