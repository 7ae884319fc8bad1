"""The shell text that runs the user's command inside the project's image on a VM host.

The core runs this text inside its detached run wrapper, so streaming, exit codes and Ctrl-C work
as for a plain command:
- `docker run` stays attached (no `-d`): the command's output is docker's output, and docker's
  exit status is the command's (125 when docker itself fails, 126/127 for a command the image
  cannot run).
- Ctrl-C: the wrapper's process group gets SIGINT; the attached `docker run` forwards it to the
  container (`--sig-proxy` is the default) whose PID 1 is docker's init (`--init`), which passes
  it on to `sh -c COMMAND`. Without an init, PID 1 ignores SIGINT and the container would keep
  running. The container stops, `--rm` removes it, and the exit status is 130.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

from vp.docker.engine import registry_host
from vp.errors import UsageError

CONTAINER_WORKDIR = "/workspace"
# Where the text from `wrap_command` finds the registry secret for a pull (see `pull_env`).
PULL_SECRET_VAR = "_VP_PULL_SECRET"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# dockerd implements `--gpus` with NVIDIA's prestart hook; a host where `nvidia` is a registered
# runtime has the toolkit too. Probed on the host when the run starts, so one image and one
# config work on CPU and GPU hosts alike.
GPU_PROBE = (
    "_vp_gpus=; if command -v nvidia-container-runtime-hook >/dev/null 2>&1 || "
    "docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; "
    "then _vp_gpus='--gpus all'; fi"
)


def wrap_command(
    command: str,
    *,
    image: str,
    workdir: str,
    env: Iterable[str],
    gpus: bool | None = None,
    name: str | None = None,
    pull_auth: dict | None = None,
) -> str:
    """Shell text that runs `command` (shell text) inside the image:
    `docker run --rm --init -v WORKDIR:/workspace -w /workspace [--gpus all] [-e NAME…] IMAGE
    sh -c COMMAND`.

    The text holds no secret: it ends up in the argv of the shell that runs it.
    - `env`: the names of the variables the container gets, as `-e NAME`: docker takes each
      value from its own environment, which the caller fills (vp's run wrapper exports them,
      see `vp.remote.ship_env`).
    - `gpus`: True adds `--gpus all`, False never, None probes the host when the text runs.
    - `workdir`: the host folder mounted at /workspace; `~/…` and relative paths are expanded by
      the host's shell.
    - `name`: container name (e.g. `vp-RUNID`), so `docker kill NAME` can stop a run whose
      docker client is gone.
    - `pull_auth`: registry credentials (from `registry_auth`) for a host that has no login of
      its own: the image is pulled first with a throwaway DOCKER_CONFIG, only if it is missing.
      The password is not in the text: the caller puts `pull_env(pull_auth)` in the environment
      and the shell's `printf` builtin feeds it to `docker login --password-stdin`; it is unset
      before `docker run`.

    Also on the command line: `--ipc=host` (PyTorch data loaders outgrow docker's 64 MB
    /dev/shm) and `--network=host` (torch.distributed across nodes, `vp tunnel` to a server in
    the container).
    """
    names = list(env)
    for key in names:
        if not _ENV_NAME.match(key):
            raise UsageError(
                f"invalid environment variable name '{key}'",
                hint="names in [env] use letters, digits and '_' and do not start with a digit",
            )
    run: list[str] = ["docker", "run", "--rm", "--init", "--ipc=host", "--network=host"]
    if name:
        run += ["--name", shlex.quote(name)]
    run += ["-v", _host_path(workdir, f":{CONTAINER_WORKDIR}"), "-w", CONTAINER_WORKDIR]
    if gpus is None:
        run.append("$_vp_gpus")
    elif gpus:
        run += ["--gpus", "all"]
    for key in names:
        run += ["-e", key]
    run += [shlex.quote(image), "sh", "-c", shlex.quote(command)]

    parts: list[str] = []
    if gpus is None:
        parts.append(GPU_PROBE + ";")
    if pull_auth:
        parts.append(_pull(image, pull_auth) + f" && unset {PULL_SECRET_VAR} &&")
    parts.append(" ".join(run))
    return " ".join(parts)


def pull_env(pull_auth: dict | None) -> dict[str, str]:
    """The environment the text from `wrap_command(pull_auth=…)` needs: the registry secret."""
    if not pull_auth:
        return {}
    return {PULL_SECRET_VAR: pull_auth.get("password") or pull_auth.get("identitytoken") or ""}


def _host_path(path: str, suffix: str) -> str:
    """`path` + `suffix` as one shell word, letting the host's shell expand `~` and cwd."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + shlex.quote(path[1:] + suffix)
    if not path.startswith("/"):
        return '"$PWD"/' + shlex.quote(path + suffix)
    return shlex.quote(path + suffix)


def _pull(image: str, auth: dict) -> str:
    """Pull `image` when the host's engine lacks it, logged in through a throwaway config dir."""
    registry = auth.get("serveraddress") or registry_host(image)
    user = auth.get("username")
    if not user and auth.get("identitytoken"):
        user = "<token>"
    q = shlex.quote
    return (
        f"{{ docker image inspect {q(image)} >/dev/null 2>&1 || {{ "
        "_vp_dc=$(mktemp -d) && "
        f'_vp_out=$(printf \'%s\\n\' "${PULL_SECRET_VAR}" | DOCKER_CONFIG="$_vp_dc" docker login '
        f"--username {q(user or '')} --password-stdin {q(registry)} 2>&1) && "
        f'DOCKER_CONFIG="$_vp_dc" docker pull {q(image)} >&2; '
        '_vp_rc=$?; [ "$_vp_rc" -eq 0 ] || printf \'%s\\n\' "$_vp_out" >&2; '
        'rm -rf "$_vp_dc"; [ "$_vp_rc" -eq 0 ]; }; }'
    )
