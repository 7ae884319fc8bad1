"""Which ssh machines a project file may send the user's work and secrets to.

A `vp.toml` (or `[tool.vp]`, or a `--config` file) in a cloned repository is someone else's
text. On the ssh platform it names the machine vp logs in to with the user's keys and agent,
and sends the project, the user's `vp secret` values and `[env]` to. So a destination named
only by a project file is not connected to until the user trusts it, the way `direnv allow`
and VS Code's workspace trust work: on a terminal vp asks once; off one it refuses and names
`vp trust`. The answer is kept in vp's state, per project folder and per destination, so a
repo that later names another machine (a pull, or a host rewriting vp.toml) is asked again.
A destination from the user's own file, the environment (`VP_SSH_HOST`) or a flag (`--host`)
is the user's choice and is trusted as it is. `VP_TRUSTED_DIRS` (folders, `:`-separated)
trusts every project below them, as direnv's whitelist prefix does: for CI and test
harnesses whose projects are all the user's own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from vp import paths
from vp.config import Config
from vp.errors import UsageError

TRUSTED_DIRS_ENV = "VP_TRUSTED_DIRS"
# The project-file keys that name an ssh destination: (dotted key, how messages name it).
SSH_KEYS = (("ssh.host", "[ssh] host"), ("ssh.hosts", "[ssh] hosts"))


def _store() -> Path:
    return paths.ensure_private_dir(paths.state_dir()) / "trusted.json"


def _read() -> dict[str, list[str]]:
    try:
        data = json.loads(_store().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: [d for d in v if isinstance(d, str)] for k, v in data.items() if isinstance(v, list)}


def _write(data: dict[str, list[str]]) -> None:
    path = _store()
    tmp = path.with_name(f".trusted.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _root(cfg: Config) -> str:
    return str(cfg.project_root.resolve())


def _source(cfg: Config) -> str:
    path = cfg.project_file
    if path is None:
        return "the project file"
    return f"{path} [tool.vp]" if path.name == "pyproject.toml" else str(path)


def project_destinations(cfg: Config) -> list[tuple[str, list[str]]]:
    """The ssh destinations only a project file names: (how messages name the key, values)."""
    found = []
    for dotted, label in SSH_KEYS:
        if dotted not in cfg.from_project:
            continue
        value = cfg.ssh.host if dotted == "ssh.host" else cfg.ssh.hosts
        values = [value] if isinstance(value, str) else list(value or ())
        if values:
            found.append((label, values))
    return found


def _under_trusted_dir(root: str) -> bool:
    for entry in os.environ.get(TRUSTED_DIRS_ENV, "").split(os.pathsep):
        if not entry.strip() or not os.path.isabs(entry):
            continue
        trusted = os.path.realpath(entry)
        if root == trusted or root.startswith(trusted.rstrip("/") + "/"):
            return True
    return False


def _untrusted(cfg: Config, dotted: str, specs: list[str]) -> list[str]:
    if dotted not in cfg.from_project:
        return []
    root = _root(cfg)
    if _under_trusted_dir(root):
        return []
    known = set(_read().get(root, []))
    return [s for s in dict.fromkeys(specs) if s not in known]


def record(cfg: Config, specs: list[str]) -> None:
    """Trust `specs` for this project folder (kept across runs)."""
    record_at(cfg.project_root, specs)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One writer at a time: two `vp` answering at once must not drop each other's entry."""
    with open(_store().with_name(".trusted.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def record_at(project_root: Path, specs: list[str]) -> None:
    """Trust `specs` for the project in `project_root`: `vp trust`, a yes to the question,
    and `vp config set ssh.host` (the user typing the host here is the user's choice)."""
    root = str(project_root.resolve())
    with _locked():
        data = _read()
        data[root] = sorted({*data.get(root, []), *specs})
        _write(data)


def forget(cfg: Config) -> list[str]:
    """Take back every trust given for this project folder; what was trusted."""
    with _locked():
        data = _read()
        gone = data.pop(_root(cfg), [])
        if gone:
            _write(data)
    return gone


def _can_ask() -> bool:
    """A person at a terminal, and this the main thread outside an event loop: `vp ui`
    serves pages from an event loop and worker threads, where a question would hang."""
    if not sys.stdin.isatty() or threading.current_thread() is not threading.main_thread():
        return False
    aio = sys.modules.get("asyncio")  # not imported: no loop can be running
    if aio is not None:
        try:
            aio.get_running_loop()
        except RuntimeError:
            return True
        return False
    return True


def require(cfg: Config, dotted: str, specs: list[str]) -> None:
    """Refuse (or, on a terminal, ask about) ssh destinations `specs` that come only from the
    project file under `dotted` and that the user has not trusted for this project. Called
    before any connection is made, so nothing reaches an untrusted machine."""
    missing = _untrusted(cfg, dotted, specs)
    if not missing:
        return
    label = dict(SSH_KEYS)[dotted]
    names = ", ".join(missing)
    what = "host" if len(missing) == 1 else "hosts"
    where = f"{_source(cfg)}: {label} names ssh {what} {names}"
    why = "vp would send it your project, secrets and [env] values and log in with your keys"
    hint = "if you trust it with them, run `vp trust` in this project (asked once per machine)"
    if not _can_ask():
        raise UsageError(f"{where}, which you have not trusted for this project: {why}", hint=hint)
    import typer

    from vp.ui import one_line

    sys.stderr.write(
        one_line(f"vp: {where}, which this user has not used with vp for {_root(cfg)}.")
        + f"\nvp: {why}.\n"
    )
    if not typer.confirm("Trust it?", default=False, err=True):
        raise UsageError(f"not trusting ssh {what} {names}", hint=hint)
    record(cfg, missing)
