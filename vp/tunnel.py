"""Port forwards to a host (`vp tunnel 8888`, `vp run --tunnel 8888 ...`).

`vp tunnel` and `run --tunnel` forward through OpenSSH: `ssh -O forward -L` on vp's shared
ControlMaster (`SshTransport.forward`), which has already authenticated and pinned the host,
so whatever OpenSSH resolved (aliases, ProxyJump, agent, certificates, hashed known_hosts)
just works and a forward opens without a new connection. bench/tunnel.py measured it against
sshtunnel (paramiko) on the same host: see bench/README.md.

`connect_in_process` keeps sshtunnel for what it serves best: forwards owned by a long-lived
Python process (the `vp ui` app proxy) that must not depend on a master another `vp` may
end. It uses the host key vp pinned (found through `ssh-keygen -F`); an unknown or changed
key is refused, nothing is ever auto-added; what paramiko cannot do as OpenSSH does raises
`NeedsOpenSSH` so the caller can use `connect` instead.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vp.errors import ConnectionFailed, UsageError, VpError
from vp.platforms.base import Host
from vp.transport import Transport

# Ports people forward most, named in messages so a bare number means something.
WELL_KNOWN = {
    8888: "Jupyter",
    8188: "ComfyUI",
    6006: "TensorBoard",
    7860: "Gradio",
    8501: "Streamlit",
    8265: "Ray dashboard",
    5000: "MLflow",
}

# Remote end of every forward, resolved by the host's sshd (IPv4 or IPv6 loopback).
REMOTE_BIND_HOST = "localhost"
LOCAL_BIND_HOST = "127.0.0.1"

for _name in ("paramiko", "sshtunnel"):
    logging.getLogger(_name).addHandler(logging.NullHandler())


@dataclass(frozen=True)
class Forward:
    """`remote` port on the host, reachable at 127.0.0.1:`local` here (0: any free port)."""

    remote: int
    local: int

    @property
    def url(self) -> str:
        return f"http://{LOCAL_BIND_HOST}:{self.local}"

    @property
    def label(self) -> str:
        return WELL_KNOWN.get(self.remote, "")

    def to_dict(self) -> dict:
        return {"remote": self.remote, "local": self.local, "url": self.url, "app": self.label}


def _port(text: str, spec: str, *, allow_zero: bool = False) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise UsageError(
            f"bad tunnel '{spec}'", hint="use REMOTE_PORT or REMOTE_PORT:LOCAL_PORT, e.g. 8888:8889"
        )
    return port


def parse_spec(spec: str) -> Forward:
    """`8888` (same port here) or `8888:9999` (remote 8888 at local 9999; local 0: any)."""
    remote, _, local = spec.strip().partition(":")
    r = _port(remote, spec)
    return Forward(r, _port(local, spec, allow_zero=True) if local else r)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCAL_BIND_HOST, 0))
        return s.getsockname()[1]


def _check_free(port: int) -> None:
    """Say which local port is taken before any connection is made."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOCAL_BIND_HOST, port))
        except OSError:
            raise UsageError(
                f"local port {port} is already in use",
                hint=f"pick another local port: REMOTE:LOCAL, e.g. {port}:{port + 1}",
            ) from None


class Tunnels:
    """Open forwards; `alive()` / `restart()` let a long-lived caller heal a dropped link."""

    backend = ""
    forwards: list[Forward]

    def alive(self) -> bool:
        return True

    def restart(self) -> None:
        """Reconnect after the link dropped."""

    def close(self) -> None:
        """Stop forwarding."""


class _Local(Tunnels):
    """The local platform: the ports are already here."""

    backend = "local"

    def __init__(self, forwards: list[Forward]):
        for f in forwards:
            if f.local not in (0, f.remote):
                raise UsageError(
                    f"on the local platform port {f.remote} is already local; "
                    f"it cannot also appear at {f.local}",
                    hint=f"open http://127.0.0.1:{f.remote}",
                )
        self.forwards = [Forward(f.remote, f.remote) for f in forwards]


class NeedsOpenSSH(Exception):
    """A case sshtunnel/paramiko cannot handle as OpenSSH would; the message says which."""


class InProcess(Tunnels):
    """sshtunnel forwards on their own paramiko connection, pinned to vp's host key."""

    backend = "sshtunnel"

    def __init__(self, options: dict[str, list[str]], label: str, forwards: list[Forward]):
        self.label = label
        self._messages: collections.deque[str] = collections.deque(maxlen=20)
        self._forwarder = self._make(options, forwards)
        self._start()
        self.forwards = [
            Forward(f.remote, port)
            for f, port in zip(forwards, self._forwarder.local_bind_ports, strict=True)
        ]

    def _make(self, options: dict[str, list[str]], forwards: list[Forward]):
        import paramiko
        import sshtunnel

        from vp.sshconfig import identity_files

        def first(key: str) -> str | None:
            values = options.get(key)
            return values[0] if values else None

        for key, what in (("proxyjump", "ProxyJump"), ("proxycommand", "ProxyCommand")):
            if first(key) not in (None, "none"):
                raise NeedsOpenSSH(f"the host is reached through {what}")
        if options.get("certificatefile"):
            raise NeedsOpenSSH("login uses an ssh certificate")
        hostname = first("hostname") or ""
        port = int(first("port") or 22)
        user = first("user")
        host_key = _pinned_key(options, hostname, port)
        keys = []
        for path in identity_files(options):
            if os.path.exists(path + "-cert.pub"):
                raise NeedsOpenSSH("login uses an ssh certificate")
            try:
                keys.append(paramiko.PKey.from_path(path))
            except paramiko.PasswordRequiredException:
                continue  # the agent may hold it; else OpenSSH's master already unlocked it
            except (paramiko.SSHException, OSError, ValueError):
                continue
        use_agent = first("identitiesonly") != "yes" and bool(os.environ.get("SSH_AUTH_SOCK"))
        if use_agent:
            with contextlib.suppress(paramiko.SSHException, OSError):
                keys = [*paramiko.Agent().get_keys(), *keys]
        if not keys:
            raise NeedsOpenSSH("no private key paramiko can read without a passphrase")

        logger = logging.getLogger("vp.tunnel.sshtunnel")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.handlers = [_Collect(self._messages)]
        forwarder = sshtunnel.SSHTunnelForwarder(
            (hostname, port),
            ssh_config_file=None,
            ssh_host_key=host_key,
            ssh_username=user,
            ssh_pkey=keys[0],
            allow_agent=False,
            host_pkey_directories=[],
            remote_bind_addresses=[(REMOTE_BIND_HOST, f.remote) for f in forwards],
            local_bind_addresses=[(LOCAL_BIND_HOST, f.local) for f in forwards],
            logger=logger,
            set_keepalive=5.0,
            compression=False,
        )
        forwarder.ssh_pkeys = keys  # every key ssh would offer, in its order
        forwarder.daemon_forward_servers = True
        forwarder.daemon_transport = True
        return forwarder

    def _start(self) -> None:
        import sshtunnel

        self._messages.clear()
        try:
            self._forwarder.start()
        except (sshtunnel.BaseSSHTunnelForwarderError, OSError) as exc:
            errors = [m for m in self._messages if "Could not" in m or "Problem" in m]
            detail = errors[-1] if errors else str(exc) or type(exc).__name__
            with contextlib.suppress(Exception):
                self._forwarder.stop(force=True)
            if "Bad host key" in detail:
                raise VpError(
                    f"host key of {self.label} does not match the one vp pinned: "
                    "refusing to forward",
                    hint="if the host was really reinstalled, re-trust it (see `vp ssh`)",
                ) from None
            if "Address already in use" in detail or "already in use" in str(exc):
                raise UsageError(
                    f"a local port is already in use ({detail})",
                    hint="pick another local port: REMOTE:LOCAL, e.g. 8888:8889",
                ) from None
            raise ConnectionFailed(f"cannot open a tunnel to {self.label}: {detail}") from None

    def alive(self) -> bool:
        return bool(self._forwarder.is_active)

    def restart(self) -> None:
        with contextlib.suppress(Exception):
            self._forwarder.stop(force=True)
        self._start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._forwarder.stop(force=True)


class _Collect(logging.Handler):
    def __init__(self, sink: collections.deque[str]):
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.sink.append(record.getMessage())


def _pinned_key(options: dict[str, list[str]], hostname: str, port: int):
    """The host key vp (or the user, for plain ssh hosts) pinned for this host."""
    import paramiko

    from vp.ssh import pinned_lines
    from vp.sshconfig import expand_home

    alias = (options.get("hostkeyalias") or [None])[0]
    name = alias if alias and alias != "none" else hostname
    if not alias and port != 22:
        name = f"[{hostname}]:{port}"
    files = [Path(expand_home(e.strip('"'))) for e in options.get("userknownhostsfile", [])]
    found = {}
    for line in pinned_lines(name, files):
        with contextlib.suppress(paramiko.SSHException, ValueError):
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
            if entry is not None:
                found.setdefault(entry.key.get_name(), entry.key)
    if not found:
        raise NeedsOpenSSH(f"paramiko finds no readable pin for {name}")
    for kind in ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ssh-rsa"):
        if kind in found:
            return found[kind]
    return next(iter(found.values()))


class _OpenSSH(Tunnels):
    """`ssh -O forward -L` on the shared ControlMaster (already authenticated and pinned)."""

    backend = "openssh"

    def __init__(self, transport, forwards: list[Forward]):
        self.transport = transport
        self.forwards = [Forward(f.remote, f.local or free_port()) for f in forwards]
        self._open()

    @staticmethod
    def _ends(f: Forward) -> tuple[str, str]:
        return f"{LOCAL_BIND_HOST}:{f.local}", f"{REMOTE_BIND_HOST}:{f.remote}"

    def _open(self) -> None:
        from vp.ssh import ForwardBusy

        opened: list[Forward] = []
        try:
            for f in self.forwards:
                self.transport.forward(*self._ends(f))
                opened.append(f)
        except BaseException as exc:
            for g in opened:
                self.transport.cancel_forward(*self._ends(g))
            if isinstance(exc, ForwardBusy):
                raise UsageError(
                    f"local port {f.local} is already in use",
                    hint="pick another local port: REMOTE:LOCAL, e.g. 8888:8889",
                ) from None
            raise

    def alive(self) -> bool:
        return self.transport.alive()

    def restart(self) -> None:
        self.transport._checked_at = 0.0  # force a real check: the master may be gone
        self._open()

    def close(self) -> None:
        for f in self.forwards:
            self.transport.cancel_forward(*self._ends(f))


def connect(
    host: Host,
    transport: Transport,
    specs: Iterable[str | Forward],
    *,
    in_process: bool = False,
    say=lambda _m: None,
    debug=lambda _m: None,
) -> Tunnels:
    """Open forwards to `host` on the shared connection. The caller must `close()` them.

    `in_process`: a long-lived server (`vp ui`) owns them instead (sshtunnel), unless paramiko
    cannot reach the host as OpenSSH does; then they ride the shared connection after all."""
    forwards = [s if isinstance(s, Forward) else parse_spec(s) for s in specs]
    if not forwards:
        raise UsageError("no port to forward", hint="e.g. vp tunnel 8888")
    if transport.is_local:
        return _Local(forwards)
    for f in forwards:
        _check_free(f.local)
    from vp.ssh import SshTransport

    if not isinstance(transport, SshTransport):
        raise VpError(f"cannot forward ports to {host.name} over {type(transport).__name__}")
    if in_process:
        try:
            tunnels = connect_in_process(transport, forwards)
            debug(f"forwarding with sshtunnel (paramiko) to {transport.label}")
            return tunnels
        except NeedsOpenSSH as exc:
            debug(f"sshtunnel cannot reach {transport.label} ({exc}); using OpenSSH")
    tunnels = _OpenSSH(transport, forwards)
    debug(f"forwarding with OpenSSH's shared connection to {transport.label}")
    return tunnels


def connect_in_process(transport: Transport, forwards: list[Forward]) -> Tunnels:
    """Forwards served by this process (sshtunnel), on a connection of their own with the
    host key vp pinned: for a long-lived server. Raises NeedsOpenSSH when paramiko cannot
    reach the host the way OpenSSH does; `connect` can then."""
    from vp.ssh import SshTransport
    from vp.sshconfig import resolved_options

    if not isinstance(transport, SshTransport):
        raise VpError(f"cannot forward ports over {type(transport).__name__}")
    for f in forwards:
        _check_free(f.local)
    transport.ensure()  # pins the host key on first contact, like every vp connection
    return InProcess(resolved_options(transport), transport.label, forwards)


@contextlib.contextmanager
def open_tunnels(
    host: Host, transport: Transport, specs: Iterable[str | Forward], *, say=lambda _m: None
) -> Iterator[list[Forward]]:
    """Keep forwards open for the `with` block (a run's lifetime); yields the open forwards,
    with any local port 0 replaced by the port actually bound."""
    tunnels = connect(host, transport, specs, say=say)
    try:
        yield tunnels.forwards
    finally:
        tunnels.close()


def serve(tunnels: Tunnels, *, warn=lambda _m: None, interval: float = 2.0) -> None:
    """Keep `tunnels` up until interrupted: a dropped link is reconnected with backoff."""
    delay = interval
    while True:
        time.sleep(interval)
        if tunnels.alive():
            delay = interval
            continue
        warn("tunnel connection lost; reconnecting")
        try:
            tunnels.restart()
            delay = interval
        except VpError as exc:
            warn(f"{exc}; retrying in {delay:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 30)
