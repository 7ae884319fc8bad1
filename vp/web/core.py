"""The page's one door into vp: hosts, runs, logs and keep-alive, over the code the CLI uses.

Hosts are listed, started, stopped and destroyed by the host-lifecycle service the commands
call (`vp.lifecycle`), and hosts and runs become JSON through the record builders `vp ls` and
`vp runs` render (`vp.records`): the API's JSON is the CLI's JSON by construction, with no
second implementation. Logs, keep-alive and the app proxy use the same service and ssh
transport, in process. Only starting a run is a `vp --detach` child process (`start_run`).

Everything here blocks (provider APIs, ssh round trips, waiting for a host to stop); the app
calls it from a worker thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vp import idle, lifecycle, records, remote, secretstore
from vp.config import Config
from vp.errors import VpError
from vp.lifecycle import resolve, transport_for
from vp.mask import LogView
from vp.platforms import clouds, kind
from vp.platforms.base import RUNNING, Host
from vp.state import State
from vp.transport import Transport
from vp.ui import UI

CLI_TIMEOUT = 900.0  # a first create or a big first upload takes minutes


class CoreError(VpError):
    """A failed vp operation, with the HTTP status the API answers with."""

    def __init__(self, message: str, hint: str | None = None, status: int = 400):
        super().__init__(message, hint=hint)
        self.status = status


@dataclass
class Project:
    """How `vp ui` was started: the folder and global options every call uses."""

    cwd: Path
    config: Path | None = None
    platform: str | None = None
    _keepalive: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self, platform: str | None = None) -> Config:
        from vp import config

        chosen = platform or self.platform
        overrides = {"host": {"platform": chosen}} if chosen else {}
        return config.load(config_path=self.config, overrides=overrides, cwd=self.cwd)

    def command_config(self, platform: str | None = None) -> Config:
        """The config a command would load (`vp -p PLATFORM ...`), including what every
        command does first on a project: destroy hosts stopped past
        `[host] destroy_after_stopped` (vp.guard.sweep_stopped)."""
        from vp.guard import sweep_stopped

        cfg = self.load(platform)
        sweep_stopped(cfg, UI(quiet=True, output="json"))
        return cfg

    def globals(self, platform: str | None = None) -> list[str]:
        out: list[str] = []
        if self.config:
            out += ["--config", str(self.config)]
        if platform or self.platform:
            out += ["-p", platform or self.platform or ""]
        return out


def _ui() -> UI:
    """What a command run with `-o json` says: nothing on stdout; warnings on the server's
    stderr (its log); no spinner, no prompt."""
    return UI(quiet=True, output="json")


def as_json(data: Any) -> Any:
    """`data` exactly as `vp -o json` prints it (vp.output.render: unknown types as str)."""
    return json.loads(json.dumps(data, default=str))


def cli(project: Project, *args: str, platform: str | None = None) -> str:
    """Run `vp GLOBALS ARGS` in the project; its stdout, or a CoreError with its own message."""
    argv = [sys.executable, "-m", "vp", "-q", *project.globals(platform), *args]
    try:
        proc = subprocess.run(
            argv,
            cwd=project.cwd,
            env=dict(os.environ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CLI_TIMEOUT,
            text=True,
        )
    except subprocess.TimeoutExpired:
        raise CoreError(f"vp {' '.join(args[:2])} took longer than {CLI_TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        message, hint = _error_lines(proc.stderr)
        raise CoreError(message or f"vp {args[0]} failed (exit {proc.returncode})", hint)
    return proc.stdout


def _error_lines(stderr: str) -> tuple[str, str | None]:
    message, hint = "", None
    for line in stderr.splitlines():
        if line.startswith("vp: error: "):
            message = line.removeprefix("vp: error: ")
        elif line.startswith("vp: hint: "):
            hint = line.removeprefix("vp: hint: ")
    return message, hint


# ------------------------------------------------------------------------------ hosts


def platforms(project: Project, cfg: Config) -> list[str]:
    """The project's platform plus every platform vp's state has a host of it on."""
    names = [] if cfg.platform == "auto" else [cfg.platform]
    for host in State().hosts(cfg.project):
        if host.platform not in names and host.platform in clouds():
            names.append(host.platform)
    return names


def host_rows(project: Project, platform: str | None = None) -> list[dict]:
    """`vp -p PLATFORM -o json ls` (after `Project.command_config`'s sweep): the lifecycle's
    listing as `vp ls` records."""
    cfg = project.load(platform)
    state = State()
    hosts = lifecycle.list_hosts(cfg, state)
    facts = records.listed_billing(hosts, state)
    return as_json([records.host_json(h, billing=b) for h, b in zip(hosts, facts, strict=True)])


def list_hosts(project: Project) -> list[dict]:
    """`vp -p P -o json ls` for each platform, side by side (each row names its platform);
    the providers are asked at once."""
    names = platforms(project, project.command_config())  # the sweep once, not per thread
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        return [row for rows in pool.map(lambda n: host_rows(project, n), names) for row in rows]


def spend() -> dict:
    """Today's and this month's spend and what bills now (vp/spend.py: the `vp status` and
    `vp spend` numbers, from the ledger)."""
    from vp.spend import totals

    return totals(State())


HOST_ACTIONS = ("start", "stop", "down")


def host_action(project: Project, name: str, action: str, platform: str | None) -> None:
    """`vp start|stop|down --yes NAME` on the platform the page listed the host on: the same
    lifecycle calls those commands make."""
    if platform is not None and platform not in platforms(project, project.load()):
        raise CoreError(f"no platform {platform!r} in this project", status=404)
    if not name:
        raise CoreError("no host named", status=404)
    cfg = project.command_config(platform)
    state, ui = State(), _ui()
    if action == "start":
        lifecycle.start(cfg, state, ui, name)
    elif action == "stop":
        for result in lifecycle.stop(cfg, state, ui, name):
            if not result.done:
                ui.warn(
                    f"{result.host.name} was still stopping after {lifecycle.STOP_TIMEOUT:.0f}s"
                )
    elif action == "down":
        lifecycle.down(cfg, state, ui, name)
    else:
        raise CoreError(f"no host action {action!r}", status=404)


# ------------------------------------------------------------------------------ runs


def list_runs(project: Project, limit: int = 50) -> list[dict]:
    """`vp -o json runs -n LIMIT`: the project's runs from the state DB as `vp runs` records."""
    runs = State().runs(project.load().project, limit=limit)
    return as_json([records.run_json(r) for r in runs])


def start_run(project: Project, command: str) -> str:
    """`vp --detach COMMAND` (one string: shell text on the host, as `vp "a && b"`).

    This one stays a child process: the run pipeline (vp.run.execute) is made for a command's
    own process. It takes over SIGINT for Ctrl-C (only the main thread may), asks on stdin
    when a sync looks wrong (here stdin is /dev/null, so it refuses as `vp --detach` does in
    a script instead of prompting on the server's terminal), prints to stdout and stderr, and
    may run for minutes (create, build, upload). As a child it is exactly `vp --detach`,
    and nothing it does can stall or kill the server."""
    if not command.strip():
        raise CoreError("no command given", hint="e.g. python train.py")
    out = cli(project, "--detach", "run", "--", command)
    lines = out.split()
    if not lines:
        raise CoreError("vp --detach printed no run id", status=500)
    return lines[-1]


def _run_host(cfg: Config, run_id: str) -> tuple[State, object, Host, Transport]:
    state = State()
    record = state.run(run_id)
    host = state.host(record.host_key)
    if host is None:
        raise CoreError(f"the host of run {record.id} ({record.host_name}) is no longer known")
    return state, record, host, transport_for(host, cfg)


class _Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(data)
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def run_log(project: Project, run_id: str) -> bytes:
    """The run's log so far, secrets masked (what `vp logs RUN` prints)."""
    cfg = project.load()
    _state, record, host, transport = _run_host(cfg, run_id)
    proc = transport.run(f"cat {transport.runs_dir_sh}/{record.id}/log\n", timeout=120)
    if proc.returncode != 0:
        raise CoreError(f"no log for run {record.id} on {host.name}", status=404)
    sink = _Sink()
    view = LogView(sink, sink, secretstore.known_values(cfg))  # type: ignore[arg-type]
    view.write(proc.stdout)
    view.close()
    return sink.take()


class LogFollower:
    """The log as it grows until the run ends (the follower script `vp logs -f` uses), secrets
    masked. `close()` ends it early from another thread (the page went away)."""

    def __init__(self, project: Project, run_id: str):
        cfg = project.load()
        _state, record, _host, transport = _run_host(cfg, run_id)
        script = remote.follow_script(
            transport.runs_dir_sh, record.id, 0, transport.workdir_sh(record.workdir), changes=False
        )
        self._sink = _Sink()
        self._view = LogView(self._sink, self._sink, secretstore.known_values(cfg))  # type: ignore[arg-type]
        self._proc = transport.popen(script)

    def chunks(self) -> Iterator[bytes]:
        assert self._proc.stdout is not None
        try:
            while chunk := self._proc.stdout.read1(65536):
                self._view.write(chunk)
                if data := self._sink.take():
                    yield data
            self._view.close()
            if data := self._sink.take():
                yield data
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        self._proc.wait()


# ------------------------------------------------------------------------ the live host


def project_host(project: Project) -> tuple[Host, Transport]:
    """The project's running host and its shared connection, never creating or starting one
    (a page left open must not rent a GPU): local and ssh hosts as every command finds them,
    a cloud host only if vp knows it running and it answers."""
    cfg = project.load()
    state = State()
    if cfg.platform != "auto" and kind(cfg.platform) in ("local", "ssh"):
        return resolve(cfg, state, UI(quiet=True), create=False)
    for host in state.hosts(cfg.project):
        wanted = cfg.platform == "auto" or host.platform == cfg.platform
        if wanted and host.status == RUNNING and host.ssh_host:
            transport = transport_for(host, cfg)
            with contextlib.suppress(VpError):
                transport.ensure()
                return host, transport
    raise CoreError(
        f"project {cfg.project} has no running host",
        hint="start it on the page (or `vp start`)",
        status=409,
    )


def idle_limit(cfg: Config, host: Host) -> tuple[float, str] | None:
    """(seconds, stop command) when this host stops itself when idle, else None."""
    minutes = cfg.host.idle_stop_minutes
    if not minutes:
        return None
    command = idle.stop_command(host.platform, cfg.host.idle_stop_command)
    return (float(minutes) * 60, command) if command else None


def keepalive(project: Project) -> dict:
    """Mark the project's host busy, as a run does: touch the idle watchdog's activity file,
    arming the watchdog if it is not running (the same snippet a run's launch sends). With no
    further keep-alive, the host stops `idle_stop_minutes` later. Calls closer together than
    a sixth of the limit reuse the last touch (one ssh round trip on the shared master)."""
    cfg = project.load()
    host, transport = project_host(project)
    limit = idle_limit(cfg, host)
    if limit is None:
        return {"host": host.name, "idle_stop_s": None, "remaining_s": None}
    seconds, command = limit
    now = time.monotonic()
    with project._lock:
        last = project._keepalive.get(host.key, 0.0)
        due = now - last >= seconds / 6
        if due:
            project._keepalive[host.key] = now
    if due:
        snippet = idle.watchdog_snippet(transport.runs_dir_sh, seconds / 60, command)
        proc = transport.run(f"mkdir -p {transport.runs_dir_sh}\n{snippet}", timeout=60)
        if proc.returncode != 0:
            with project._lock:
                project._keepalive.pop(host.key, None)
            raise CoreError(f"could not reach {host.name} to keep it awake", status=502)
        last = now
    return {
        "host": host.name,
        "idle_stop_s": seconds,
        "remaining_s": round(max(0.0, seconds - (time.monotonic() - last)), 1),
    }


def apps(cfg: Config) -> dict[str, int]:
    """`[ui] apps`: name -> port on the host."""
    return dict(cfg.ui.apps)
