"""Real OpenSSH test hosts: `sshd -D` on loopback, or alone in a network namespace.

A host is a real sshd with its own generated ed25519 host key and one generated client
key that may log in as root, so tests exercise the same ssh/rsync code paths a cloud host
would. Remote commands run as root on this machine and see the same filesystem.

- loopback hosts listen on 127.0.0.1:<free port>;
- namespace hosts (``netns=True``) live in ``ip netns`` ``vpt-XXXXXXXX`` behind a veth pair
  with a /30 from 10.213.0.0/16 and listen on port 22, so a link can be cut to model a dead
  network (packets silently dropped);
- namespace hosts can be given directories of their own (``private_dirs``: each is bind-mounted
  over in the host's own mount namespace, so two hosts see different files at one path, as two
  machines do) and be linked to each other (`link_hosts`: a veth pair between each two
  namespaces, so the nodes of a multi-node run reach each other's addresses directly).

sshd is started with PR_SET_CHILD_SUBREAPER set, so every process a session leaves behind
(double-forked daemons, tmux servers, ``setsid`` jobs) stays below it; `stop()` freezes and
kills that whole tree. Traffic only ever goes to 127.0.0.0/8 or to our own veth addresses.

Fixtures for conftests: ``ssh_host``, ``netns_host`` and ``make_ssh_host``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import ipaddress
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
NETNS_PREFIX = "vpt-"
NETNS_RANGE = ipaddress.ip_network("10.213.0.0/16")
# Owner records of live namespaces (one file per namespace, "owner_pid block_index"),
# used to avoid /30 collisions between concurrent pytest-xdist workers and to reap the
# namespaces of test processes that died without cleaning up.
NETNS_STATE_DIR = Path("/run/vpt-netns")
NETNS_LOCK = Path("/tmp/vpt-netns.lock")

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _ip_binary() -> str:
    found = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip") if os.path.exists(p)),
        None,
    )
    if found is None:
        raise RuntimeError("`ip` (iproute2) is not installed; run ./scripts/test to install it")
    return found


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run([_ip_binary(), *args], check=check)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair at `path` (private 0600); return the public key line."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    path.chmod(0o600)
    kind, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"{kind} {blob}"


_sshd_version: tuple[int, int] | None = None


def _openssh_version() -> tuple[int, int]:
    global _sshd_version
    if _sshd_version is None:
        out = _run([SSHD, "-V"], check=False)
        m = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stderr + out.stdout)
        _sshd_version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return _sshd_version


def _password_locked(user: str) -> bool:
    """True if `user`'s shadow entry is locked ("!..."), which sshd refuses without PAM."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user and len(fields) > 1:
                return fields[1].startswith("!")
    return False


# ---------------------------------------------------------------------------- processes


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _descendants(pid: int) -> set[int]:
    children = _children_map()
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill `proc` (an sshd that is a child subreaper) and everything below it, leaving no
    zombies: freeze the tree so nothing new is forked, kill the descendants, let sshd reap
    them, then end sshd itself."""
    root = proc.pid
    if proc.poll() is None:
        _signal(root, signal.SIGSTOP)
        frozen: set[int] = set()
        while True:  # repeat until a scan finds nothing new (children forked mid-scan)
            new = _descendants(root) - frozen
            if not new:
                break
            for pid in new:
                _signal(pid, signal.SIGSTOP)
            frozen |= new
        for pid in frozen:
            _signal(pid, signal.SIGKILL)
        _signal(root, signal.SIGCONT)  # sshd reaps its (adopted) children
        deadline = time.monotonic() + 3
        while any(os.path.exists(f"/proc/{p}") for p in frozen) and time.monotonic() < deadline:
            time.sleep(0.005)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.terminate()
            proc.wait(timeout=5)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _preexec(pdeathsig: bool) -> Callable[[], None]:
    def setup() -> None:
        # Orphans of sessions re-parent to sshd rather than init, so stop() finds them.
        _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if pdeathsig:  # sshd dies with the test process (tied to the forking thread)
            _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return setup


# ---------------------------------------------------------------------------- namespaces


@contextlib.contextmanager
def _netns_lock() -> Iterator[None]:
    with open(NETNS_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _alive(pid)


def _delete_netns(name: str) -> None:
    """Kill what runs in namespace `name` and delete it (its veth pair goes with it)."""
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        _signal(int(pid), signal.SIGKILL)
    _ip("netns", "del", name, check=False)
    _ip("link", "del", _veth_names(name)[0], check=False)
    (NETNS_STATE_DIR / name).unlink(missing_ok=True)


def _veth_names(netns: str) -> tuple[str, str]:
    tag = netns.removeprefix(NETNS_PREFIX)
    return f"vpt{tag}h", f"vpt{tag}n"  # at most 15 characters


def _block_addresses(index: int) -> tuple[str, str]:
    base = NETNS_RANGE.network_address + 4 * index
    return str(base + 1), str(base + 2)


def _create_netns() -> tuple[str, str, str]:
    """Create a namespace with a veth pair; return (name, host-side addr, namespace addr)."""
    NETNS_STATE_DIR.mkdir(parents=True, exist_ok=True)
    with _netns_lock():
        used: set[int] = set()
        for record in NETNS_STATE_DIR.iterdir():
            try:
                owner, index = (int(x) for x in record.read_text().split())
            except (OSError, ValueError):
                continue
            if _pid_alive(owner):
                used.add(index)
            else:  # its test process died without cleaning up
                _delete_netns(record.name)
        for addr in re.findall(r"inet (10\.213\.\d+\.\d+)", _ip("-4", "-o", "addr").stdout):
            used.add((int(ipaddress.ip_address(addr)) - int(NETNS_RANGE.network_address)) // 4)
        blocks = NETNS_RANGE.num_addresses // 4
        free = [i for i in (secrets.randbelow(blocks) for _ in range(64)) if i not in used]
        if not free:
            raise RuntimeError("no free /30 left in 10.213.0.0/16 for a test namespace")
        index = free[0]
        name = NETNS_PREFIX + secrets.token_hex(4)
        (NETNS_STATE_DIR / name).write_text(f"{os.getpid()} {index}\n")
    host_if, ns_if = _veth_names(name)
    host_addr, ns_addr = _block_addresses(index)
    try:
        _ip("netns", "add", name)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", name)
        _ip("addr", "add", f"{host_addr}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "addr", "add", f"{ns_addr}/30", "dev", ns_if)
        _ip("-n", name, "link", "set", ns_if, "up")
    except BaseException:
        _delete_netns(name)
        raise
    return name, host_addr, ns_addr


# ---------------------------------------------------------------------------- the host

_live_hosts: set[SshHost] = set()  # closed at exit if a test forgot


@atexit.register
def _close_all() -> None:
    for host in list(_live_hosts):
        with contextlib.suppress(Exception):
            host.close()


class SshHost:
    """A real `sshd -D` test host, on 127.0.0.1:<free port>, or in its own network namespace
    at <veth addr>:22.

    All files live under `root`: sshd_config, host key, client key (`client_key`),
    authorized_keys, pid file and `sshd.log`.
    """

    address: str
    port: int
    user: str
    client_key: Path
    host_public_key: str

    def __init__(
        self,
        root: Path,
        *,
        netns: bool = False,
        user: str = "root",
        authorized_keys: Iterable[str] = (),
        max_sessions: int = 50,
        private_dirs: Iterable[Path] = (),
    ) -> None:
        self.max_sessions = max_sessions  # sshd's MaxSessions (OpenSSH's default is 10)
        self.root = Path(root)
        # path seen by the host's sessions -> the directory on this machine holding its files
        self.private_dirs: dict[Path, Path] = {}
        for i, path in enumerate(private_dirs):
            own = self.root / f"private{i}"
            own.mkdir()
            Path(path).mkdir(parents=True, exist_ok=True)
            self.private_dirs[Path(path)] = own
        self.root.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.netns: str | None = None
        self.host_address: str | None = None  # root-namespace end of the veth pair
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self.extra_config: list[str] = []  # more sshd_config lines, from the next (re)start
        self.config_path = self.root / "sshd_config"
        self.log_path = self.root / "sshd.log"
        self.authorized_keys_path = self.root / "authorized_keys"
        self.host_key_path = self.root / "ssh_host_ed25519_key"
        self.client_key = self.root / "id_ed25519"
        self.host_public_key = _keygen(self.host_key_path, f"vp-test-host@{self.root.name}")
        client_public = _keygen(self.client_key, f"vp-test-client@{self.root.name}")
        self.authorized_keys_path.write_text("")
        for key in [client_public, *authorized_keys]:
            self.add_authorized_key(key)
        if netns:
            self.netns, self.host_address, self.address = _create_netns()
            self.port = 22
        else:
            self.address = "127.0.0.1"
            self.port = _free_port()
        _live_hosts.add(self)

    def __repr__(self) -> str:
        where = f" netns={self.netns}" if self.netns else ""
        return f"<SshHost {self.user}@{self.address}:{self.port}{where}>"

    def __enter__(self) -> SshHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys and client configuration

    def add_authorized_key(self, pubkey: str) -> None:
        """Authorize one more public key line (takes effect for new connections)."""
        with self.authorized_keys_path.open("a") as f:
            f.write(pubkey.strip() + "\n")

    def ssh_config(self, alias: str) -> str:
        """A `Host alias` block for an ssh config file (no host key settings)."""
        return (
            f"Host {alias}\n"
            f"    HostName {self.address}\n"
            f"    Port {self.port}\n"
            f"    User {self.user}\n"
            f"    IdentityFile {self.client_key}\n"
            f"    IdentitiesOnly yes\n"
        )

    def known_hosts_line(self) -> str:
        host = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{host} {self.host_public_key}"

    # -- lifecycle

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The sshd listener's pid while running."""
        return self._proc.pid if self.running else None

    def start(self) -> None:
        """Start sshd; return once the port accepts connections and sends the SSH banner."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self.running:
            return
        self._start(keep_port=False)

    def stop(self) -> None:
        """Terminate sshd and every process its sessions spawned."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _kill_tree(proc)

    def restart(self) -> None:
        """Like a restart of sshd on a rebooted host: established sessions die; the same
        host key and port come back."""
        self.stop()
        self._start(keep_port=True)

    def cut_link(self) -> None:
        """Take the namespace's side of the link down: packets to it are silently dropped."""
        self._require_netns()
        self._ip_in_ns("link", "set", _veth_names(self.netns)[1], "down")

    def restore_link(self) -> None:
        """Bring the link back; connections work again at once."""
        self._require_netns()
        host_if, ns_if = _veth_names(self.netns)
        self._ip_in_ns("link", "set", ns_if, "up")
        # Neighbour entries that failed while the link was down would answer "No route to
        # host" for a few seconds; forget them.
        _ip("neigh", "flush", "dev", host_if, check=False)
        self._ip_in_ns("neigh", "flush", "dev", ns_if)

    def close(self) -> None:
        """Stop sshd and remove the namespace and veth pair, if any. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            if self.netns is not None:
                _delete_netns(self.netns)
            _live_hosts.discard(self)

    # -- internals

    def _require_netns(self) -> None:
        if self.netns is None:
            raise RuntimeError("cut_link/restore_link need a host made with netns=True")

    def _ip_in_ns(self, *args: str) -> None:
        assert self.netns is not None
        _ip("-n", self.netns, *args)

    def _write_config(self) -> None:
        listen = "0.0.0.0" if self.netns else self.address
        use_pam = "yes" if _password_locked(self.user) else "no"
        lines = [
            f"ListenAddress {listen}",
            f"Port {self.port}",
            f"HostKey {self.host_key_path}",
            f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            # A locked account ("!" in /etc/shadow) is refused outright without PAM.
            f"UsePAM {use_pam}",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "Subsystem sftp internal-sftp",
            "AllowTcpForwarding yes",
            "AllowStreamLocalForwarding yes",
            f"MaxSessions {self.max_sessions}",
            "MaxStartups 100",
            "ClientAliveInterval 0",
            "LogLevel VERBOSE",
        ]
        if _openssh_version() >= (9, 8):
            lines.append("PerSourcePenalties no")  # tests fail many connections on purpose
        lines += self.extra_config
        self.config_path.write_text("\n".join(lines) + "\n")

    def _argv(self) -> list[str]:
        sshd = [SSHD, "-D", "-e", "-f", str(self.config_path)]
        if self.private_dirs:
            if not self.netns:
                raise RuntimeError("private_dirs need a host made with netns=True")
            # `ip netns exec` runs in a mount namespace of its own (slave of ours), so these
            # bind mounts are seen by this sshd's sessions only.
            mounts = " && ".join(
                f"mount --bind {shlex.quote(str(own))} {shlex.quote(str(path))}"
                for path, own in self.private_dirs.items()
            )
            sshd = ["sh", "-c", f'{mounts} && exec "$@"', "sshd", *sshd]
        if self.netns:
            return [_ip_binary(), "netns", "exec", self.netns, *sshd]
        return sshd

    def _start(self, *, keep_port: bool) -> None:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
        deadline = time.monotonic() + 20
        attempt = 0
        while True:
            attempt += 1
            self._write_config()
            with self.log_path.open("ab") as log:
                log.write(f"--- start {attempt}: {' '.join(self._argv())}\n".encode())
                log.flush()
                self._proc = subprocess.Popen(
                    self._argv(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    preexec_fn=_preexec(threading.current_thread() is threading.main_thread()),
                )
            if self._wait_banner(deadline):
                return
            self.stop()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"sshd for {self!r} did not start:\n{self._log_tail()}")
            if keep_port or self.netns:
                time.sleep(0.2)  # port still held by someone: wait for it
            else:
                self.port = _free_port()  # lost a race for the port: take another

    def _wait_banner(self, deadline: float) -> bool:
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.address, self.port), timeout=2) as s:
                    s.settimeout(2)
                    if s.recv(256).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.01)
        return False

    def _log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def link_hosts(*hosts: SshHost) -> None:
    """Connect namespace hosts to each other: a veth pair between each two, carrying each
    host's own address (a /32 plus a host route), so any of them reaches the others at
    `host.address` directly, as machines on one private network do. The pairs go with the
    namespaces."""
    for i, a in enumerate(hosts):
        for b in hosts[i + 1 :]:
            if not (a.netns and b.netns):
                raise RuntimeError("link_hosts needs hosts made with netns=True")
            tag = secrets.token_hex(4)
            a_if, b_if = f"vpm{tag}a", f"vpm{tag}b"
            _ip("link", "add", a_if, "netns", a.netns, "type", "veth", "peer", "name", b_if,
                "netns", b.netns)  # fmt: skip
            for host, dev, other in ((a, a_if, b), (b, b_if, a)):
                assert host.netns is not None
                _ip("-n", host.netns, "addr", "add", f"{host.address}/32", "dev", dev)
                _ip("-n", host.netns, "link", "set", dev, "up")
                _ip("-n", host.netns, "route", "add", f"{other.address}/32", "dev", dev)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def make_ssh_host(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., SshHost]]:
    """Factory of started hosts: ``make_ssh_host(netns=False, user="root",
    authorized_keys=(), private_dirs=())``; all are closed at teardown."""
    hosts: list[SshHost] = []

    def make(
        *,
        netns: bool = False,
        user: str = "root",
        authorized_keys: Iterable[str] = (),
        private_dirs: Iterable[Path] = (),
    ) -> SshHost:
        root = tmp_path_factory.mktemp("sshhost")
        host = SshHost(
            root,
            netns=netns,
            user=user,
            authorized_keys=list(authorized_keys),
            private_dirs=list(private_dirs),
        )
        hosts.append(host)
        host.start()
        return host

    yield make
    errors = []
    for host in reversed(hosts):
        try:
            host.close()
        except Exception as e:  # close the rest anyway
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def ssh_host(make_ssh_host: Callable[..., SshHost]) -> SshHost:
    """A started sshd on 127.0.0.1:<free port>, closed after the test."""
    return make_ssh_host()


@pytest.fixture
def netns_host(make_ssh_host: Callable[..., SshHost]) -> SshHost:
    """A started sshd alone in a network namespace at <veth addr>:22, closed after the test."""
    return make_ssh_host(netns=True)
