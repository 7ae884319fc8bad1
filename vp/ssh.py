"""Every ssh and rsync argv vp runs is built here, so connection reuse, host-key pinning and
quoting are decided once.

One OpenSSH ControlMaster per host is shared by every phase (sync, run, download) and by the
next `vp` call for ControlPersist's ten minutes. vp runs ssh with `-F` on a config of its own
that includes the user's `$HOME/.ssh/config` and the system one: OpenSSH finds `~` from the
user database, which containers and test harnesses relocate.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vp import paths
from vp.errors import ConnectionFailed, UsageError, VpError
from vp.transport import Transport

CONTROL_PERSIST = 600
# sshd refuses more than MaxSessions (default 10) sessions on one connection. Each vp process
# takes one of SESSION_SLOTS per master (a lock file it holds until it exits) and so never
# asks a master for more than that; when a master's slots stay taken for OVERFLOW_AFTER
# seconds (long runs), the next process opens another master, up to MASTERS; beyond that,
# runs queue for a slot rather than fail.
SESSION_SLOTS = 8
MASTERS = 8
OVERFLOW_AFTER = 2.0
SERVER_ALIVE_INTERVAL = 5
SERVER_ALIVE_COUNT = 3

_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.][A-Za-z0-9_.-]*)$")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass
class SshTarget:
    """Where and how to log in. `host` may be an ssh_config alias."""

    host: str
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    host_key_alias: str | None = None
    # First contact with a host vp just created: accept its key once, then pin it.
    accept_new: bool = True

    @property
    def label(self) -> str:
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{who}{self.host}{port}"


def parse_target(spec: str) -> SshTarget:
    """Parse `alias`, `host`, `user@host`, `user@host:port` (or `[v6]:port`).

    Host strings come from flags and config files, so anything that could be read as an ssh
    option or shell text is refused here, before it reaches any argv.
    """
    original = spec
    spec = spec.strip()
    if spec.startswith("ssh://"):
        spec = spec[len("ssh://") :]
    user = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
        if not _USER_RE.match(user):
            raise UsageError(f"invalid ssh user in host '{original}'", hint="use user@host:port")
    port = None
    m = re.match(r"^(.*):(\d+)$", spec)
    if m and (spec.count(":") == 1 or spec.startswith("[")):
        spec, port_s = m.group(1), m.group(2)
        port = int(port_s)
        if not 0 < port < 65536:
            raise UsageError(f"invalid port {port} in host '{original}'")
    if not spec or not _HOST_RE.match(spec):
        raise UsageError(
            f"invalid ssh host '{original}'",
            hint="use an ~/.ssh/config alias or user@host:port",
        )
    return SshTarget(host=spec, user=user, port=port)


def known_hosts_file() -> Path:
    path = paths.ensure_private_dir(paths.state_dir()) / "known_hosts"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    return path


def base_config_file() -> Path:
    """vp's own ssh config: the user's config (at $HOME, not the passwd home), then the system's."""
    path = paths.ensure_private_dir(paths.state_dir()) / "ssh_config"
    lines = ["# Written by vp; regenerated on every run.\n"]
    user_config = Path.home() / ".ssh" / "config"
    if user_config.is_file():
        lines.append(f"Include {_ssh_quote(str(user_config))}\n")
    if Path("/etc/ssh/ssh_config").is_file():
        lines.append("Include /etc/ssh/ssh_config\n")
    text = "".join(lines)
    try:
        current = path.read_text()
    except FileNotFoundError:
        current = None
    if current != text:
        # per thread too: `vp --nodes` prepares its hosts from several threads at once
        tmp = path.with_name(f".ssh_config.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def _ssh_quote(value: str) -> str:
    """Quote a value for ssh_config / `-o` parsing (double quotes, no escapes inside)."""
    if re.search(r'[\s"]', value):
        if '"' in value:
            raise UsageError(f"path {value!r} contains a double quote, which ssh cannot parse")
        return f'"{value}"'
    return value


class HostKeyMismatch(VpError):
    """The host answered with a key other than the one pinned for it."""


def _keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh-keygen", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        timeout=30,
    )


# known_hosts is read and written only through ssh-keygen (-F find, -R remove, -l list), never
# parsed here: hashed files (HashKnownHosts yes), markers and comments are its business.


def pinned_lines(name: str, files: list[Path] | None = None) -> list[str]:
    """The known_hosts lines pinning `name` (an alias or `[host]:port`), hashed or not."""
    found: list[str] = []
    for path in files if files is not None else [known_hosts_file()]:
        if not path.is_file():
            continue
        proc = _keygen("-F", name, "-f", str(path))
        found += [ln for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
    return found


def is_pinned(name: str) -> bool:
    """Has vp already recorded this host's key? Then a mismatch must be refused, not accepted."""
    return bool(pinned_lines(name))


def forget_pin(alias: str) -> bool:
    """Remove the key pinned under `alias` (a host that no longer exists); was there one?"""
    path = known_hosts_file()
    if not is_pinned(alias):
        return False
    _keygen("-R", alias, "-f", str(path))
    Path(str(path) + ".old").unlink(missing_ok=True)
    return True


def pinned_names() -> set[str]:
    """The names pinned in vp's known_hosts that can be read (a hashed entry's cannot)."""
    proc = _keygen("-l", "-f", str(known_hosts_file()))
    names: set[str] = set()
    for line in proc.stdout.splitlines():  # "BITS FINGERPRINT NAMES (TYPE)"
        fields = line.split()
        if len(fields) >= 3 and not fields[2].startswith("|"):
            names.update(fields[2].split(","))
    return names


def _classify_failure(stderr: str, target: SshTarget) -> VpError:
    text = stderr.strip()
    last = text.splitlines()[-1] if text else "ssh failed"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "Host key verification failed" in text:
        message = (
            f"host key for {target.label} does not match the one vp pinned: refusing to connect"
        )
        if target.host_key_alias:  # a host vp created: only its provider can say what happened
            return HostKeyMismatch(
                message,
                hint="vp asks the provider on the next `vp` command; if you no longer trust "
                "the host, destroy it with `vp down`",
            )
        return HostKeyMismatch(
            message,
            hint=(
                "if the host was really reinstalled, remove its line from "
                f"{known_hosts_file()} (ssh-keygen -R '{target.host}' -f that file) and retry"
            ),
        )
    if "Permission denied" in text:
        return VpError(
            f"ssh login to {target.label} was refused: {last}",
            hint="check the user and key (ssh.identity_file) or your ~/.ssh/config",
        )
    if "Could not resolve hostname" in text:
        return ConnectionFailed(
            f"cannot resolve ssh host '{target.host}'",
            hint="use an ~/.ssh/config alias or user@host:port",
        )
    return ConnectionFailed(f"cannot connect to {target.label}: {last}")


class SshTransport(Transport):
    """A host reached over OpenSSH with a shared, pinned, kept-alive connection."""

    def __init__(self, target: SshTarget, connect_timeout: int = 10):
        self.target = target
        self.label = target.label
        self.connect_timeout = connect_timeout
        digest = hashlib.sha1(
            "\0".join(
                str(x)
                for x in (
                    target.host,
                    target.user,
                    target.port,
                    target.host_key_alias,
                    target.identity_file,
                )
            ).encode()
        ).hexdigest()[:20]
        self.control_path = str(paths.control_dir() / digest)
        self._base_path = self.control_path
        self._checked_at = 0.0
        self._slot: int | None = None
        self._master = 0  # which of the MASTERS our slot is on
        self._extra: int | None = None  # a second slot, held while an upload runs

    # argv ----------------------------------------------------------------------
    def options(self) -> list[str]:
        t = self.target
        user_known = Path.home() / ".ssh" / "known_hosts"
        known = _ssh_quote(str(known_hosts_file()))
        if t.host_key_alias is None and user_known.is_file():
            # A host the user already trusts with plain ssh is trusted by vp too.
            known += " " + _ssh_quote(str(user_known))
        opts = [
            "-F",
            str(base_config_file()),
            "-o",
            f"ControlPath={_ssh_quote(self.control_path)}",
            "-o",
            "ControlMaster=no",
            "-o",
            f"ServerAliveInterval={SERVER_ALIVE_INTERVAL}",
            "-o",
            f"ServerAliveCountMax={SERVER_ALIVE_COUNT}",
            "-o",
            f"ConnectTimeout={self.connect_timeout}",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            f"StrictHostKeyChecking={'accept-new' if t.accept_new else 'yes'}",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ]
        if t.host_key_alias:
            opts += ["-o", f"HostKeyAlias={t.host_key_alias}"]
        if t.identity_file:
            opts += [
                "-o",
                f"IdentityFile={_ssh_quote(t.identity_file)}",
                "-o",
                "IdentitiesOnly=yes",
            ]
        if t.port:
            opts += ["-p", str(t.port)]
        if t.user:
            opts += ["-l", t.user]
        return opts

    def ssh_argv(self, *extra: str) -> list[str]:
        return ["ssh", *self.options(), *extra]

    def shared_master(self) -> tuple[str, int] | None:
        if self._slot is None or self.control_path != self._base_path:
            return None  # an overflow master: the next run starts on the first one
        return self._base_path, SESSION_SLOTS

    def shell_argv(self) -> list[str]:
        return self.ssh_argv("-T", "--", self.target.host, "sh -s")

    def exec_argv(self, script: str) -> list[str]:
        return self.ssh_argv("-T", "--", self.target.host, script)

    def rsync_argv(self) -> list[str]:
        ssh_cmd = " ".join(shlex.quote(a) for a in self.ssh_argv())
        return ["rsync", "-e", ssh_cmd]

    def remote_path(self, path: str) -> str:
        host = self.target.host
        return f"{host}:{path}"

    def interactive_argv(self, command: str | None = None) -> list[str]:
        extra = ["-t"] if command is None else ["-T"]
        argv = self.ssh_argv(*extra, "--", self.target.host)
        return argv if command is None else [*argv, command]

    # the shared connection ---------------------------------------------------
    def _take_slot(self) -> None:
        """Hold one session slot on a master for the rest of this process (see SESSION_SLOTS);
        sets `control_path` to that master's socket."""
        if self._slot is not None:
            return
        from vp import prespawn

        fd = prespawn.slot_for(self._base_path)  # taken at start-up for an early session
        if fd is not None:
            self._slot, self.control_path = fd, self._base_path
            return
        import random

        started = time.monotonic()
        while True:
            waited = time.monotonic() - started
            masters = MASTERS if waited >= OVERFLOW_AFTER else 1
            for m in range(masters):
                fd = prespawn.free_slot(self._base_path, m, SESSION_SLOTS)
                if fd is not None:
                    self._slot, self._master = fd, m
                    self.control_path = self._base_path if m == 0 else f"{self._base_path}-{m}"
                    return
            time.sleep(0.03 + random.random() * 0.07)

    def take_extra_slot(self) -> bool:
        if self._slot is None or self._extra is not None:
            return self._extra is not None
        from vp.prespawn import free_slot

        self._extra = free_slot(self._base_path, self._master, SESSION_SLOTS)
        return self._extra is not None

    def release_extra_slot(self) -> None:
        if self._extra is not None:
            os.close(self._extra)
            self._extra = None

    def _check(self) -> str:
        """'up', 'down' or 'wedged' for the master at our ControlPath."""
        if not os.path.exists(self.control_path):
            return "down"
        state = _mux_hello(self.control_path)
        if state is not None:
            return state
        try:
            proc = subprocess.run(
                self.ssh_argv("-O", "check", "--", self.target.host),
                capture_output=True,
                timeout=5,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            return "wedged"
        return "up" if proc.returncode == 0 else "down"

    def ensure(self) -> None:
        """Start (or verify) the ControlMaster. Raises a one-line VpError on failure."""
        self._take_slot()
        now = time.monotonic()
        if now - self._checked_at < 1.0 and os.path.exists(self.control_path):
            return
        lock_path = self.control_path + ".lock"
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._check()
            if state == "up":
                self._checked_at = time.monotonic()
                return
            from vp import prespawn

            prespawn.discard()  # an early session on a master that is not up is no use
            if state == "wedged":
                self._control("exit", timeout=5)
            if os.path.exists(self.control_path):
                os.unlink(self.control_path)
            self._start_master()
            self._checked_at = time.monotonic()

    def _start_master(self) -> None:
        # ssh takes the first value given for an option, so these win over options()' "no".
        argv = [
            "ssh",
            "-o",
            "ControlMaster=yes",
            "-o",
            f"ControlPersist={CONTROL_PERSIST}",
            *self.options(),
            "-N",
            "-f",
            "--",
            self.target.host,
        ]
        import tempfile  # only when a master starts

        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    timeout=self.connect_timeout + 30,
                    start_new_session=True,
                )
            except subprocess.TimeoutExpired:
                raise ConnectionFailed(f"ssh to {self.label} did not answer in time") from None
            err.seek(0)
            stderr = err.read().decode(errors="replace")
        if proc.returncode != 0:
            raise _classify_failure(stderr, self.target)
        if not os.path.exists(self.control_path):
            raise ConnectionFailed(f"ssh to {self.label} started but left no control socket")

    def _control(self, op: str, timeout: float) -> None:
        """`ssh -O op` to the master; a wedged master that does not answer is left behind
        (its socket is replaced), never waited on."""
        try:
            subprocess.run(
                self.ssh_argv("-O", op, "--", self.target.host),
                capture_output=True,
                timeout=timeout,
                start_new_session=True,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pass

    # port forwards ------------------------------------------------------------
    def forward(self, local: str, remote: str) -> None:
        """Forward `local` (`ADDR:PORT` or a unix socket path here) to `remote` (`HOST:PORT`
        or a socket path, resolved by the host's sshd) over the shared master, which has
        already authenticated and verified the host: no new connection, no second stack."""
        self.ensure()
        proc = self._forward_op("forward", local, remote)
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["ssh -O forward failed"])[-1]
            if "in use" in detail or "bind" in detail.lower():
                raise ForwardBusy(f"{local} is not free here ({detail})")
            raise ForwardFailed(f"cannot forward {remote} of {self.label}: {detail}")

    def cancel_forward(self, local: str, remote: str) -> None:
        """Stop a forward `forward` opened (a master already gone took it along)."""
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self._forward_op("cancel", local, remote)

    def _forward_op(self, op: str, local: str, remote: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.ssh_argv("-O", op, "-L", f"{local}:{remote}", "--", self.target.host),
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def alive(self) -> bool:
        """Does the shared master answer (a forward rides on it)?"""
        return self._check() == "up"

    def close(self) -> None:
        if os.path.exists(self.control_path):
            self._control("exit", timeout=10)


class ForwardFailed(ConnectionFailed):
    """The master refused a forward."""


class ForwardBusy(UsageError):
    """The local end of a forward is taken."""


def _mux_hello(path: str) -> str | None:
    """Ask the master at `path` for its hello (OpenSSH's PROTOCOL.mux: both sides send
    MUX_MSG_HELLO first) in-process: 'up', 'down', 'wedged', or None when unsure (then
    `ssh -O check` decides). Saves an ssh start-up (~10 ms) on every warm call."""
    import socket
    import struct

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(3)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return "down"
        except TimeoutError:
            return "wedged"
        except OSError:
            return None
        try:
            sock.sendall(struct.pack(">III", 8, 1, 4))  # length, MUX_MSG_HELLO, version 4
            data = b""
            while len(data) < 8:
                chunk = sock.recv(64)
                if not chunk:
                    return "down"
                data += chunk
        except TimeoutError:
            return "wedged"
        except OSError:
            return None
        _length, kind = struct.unpack(">II", data[:8])
        return "up" if kind == 1 else None
    finally:
        sock.close()
