"""The test hosts themselves: real sshd processes that real ssh clients can use, and the
delaying proxy the benchmarks put in front of them."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

try:
    from tests.sshhost import SshHost, make_ssh_host, netns_host, ssh_host  # noqa: F401
    from tests.tcpdelay import DelayProxy
except ImportError:  # tests/ itself is on sys.path (plain `pytest`, no tests/__init__.py)
    from sshhost import SshHost, make_ssh_host, netns_host, ssh_host  # noqa: F401
    from tcpdelay import DelayProxy


def ssh(
    host: SshHost,
    known_hosts: Path,
    command: str,
    *,
    port: int | None = None,
    connect_timeout: int = 10,
) -> subprocess.CompletedProcess[str]:
    if port is None:
        known_hosts.write_text(host.known_hosts_line() + "\n")
    else:
        known_hosts.write_text(f"[{host.address}]:{port} {host.host_public_key}\n")
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(host.client_key),
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={connect_timeout}",
            "-p",
            str(port or host.port),
            f"{host.user}@{host.address}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def sshd_pids(host: SshHost) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", str(host.config_path)], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


def test_loopback_host_runs_a_command_with_strict_host_key_checking(
    ssh_host: SshHost, tmp_path: Path
) -> None:
    assert ssh_host.address == "127.0.0.1"
    assert ssh_host.known_hosts_line().startswith(f"[127.0.0.1]:{ssh_host.port} ssh-ed25519 ")
    assert ssh_host.client_key.stat().st_mode & 0o777 == 0o600

    result = ssh(ssh_host, tmp_path / "known_hosts", "echo hi")

    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr


def test_a_wrong_host_key_is_refused(ssh_host: SshHost, make_ssh_host, tmp_path: Path) -> None:
    other = make_ssh_host()
    known_hosts = tmp_path / "known_hosts"

    known_hosts.write_text(f"[127.0.0.1]:{ssh_host.port} {other.host_public_key}\n")
    result = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(ssh_host.client_key), "-o", "BatchMode=yes"]
        + ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        + ["-p", str(ssh_host.port), "root@127.0.0.1", "true"],
        capture_output=True,
        text=True,
    )

    assert result.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_ssh_config_block_is_enough_to_connect(ssh_host: SshHost, tmp_path: Path) -> None:
    config = tmp_path / "config"
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(ssh_host.known_hosts_line() + "\n")
    config.write_text(
        ssh_host.ssh_config("box")
        + f"    UserKnownHostsFile {known_hosts}\n    StrictHostKeyChecking yes\n"
    )

    result = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "box", "pwd"],
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stderr


def test_restart_keeps_host_key_and_port_and_ends_sessions(
    ssh_host: SshHost, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    port, key = ssh_host.port, ssh_host.host_public_key
    session = subprocess.Popen(
        ["ssh", "-F", "/dev/null", "-i", str(ssh_host.client_key), "-o", "BatchMode=yes"]
        + ["-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path / 'kh2'}"]
        + ["-p", str(port), "root@127.0.0.1", "echo started; exec sleep 60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert session.stdout is not None and session.stdout.readline() == "started\n"

    ssh_host.restart()

    assert session.wait(timeout=10) != 0  # the established session died with sshd
    assert (ssh_host.port, ssh_host.host_public_key) == (port, key)
    result = ssh(ssh_host, known_hosts, "echo again")
    assert (result.returncode, result.stdout) == (0, "again\n"), result.stderr


@pytest.mark.parametrize("netns", [False, True], ids=["loopback", "netns"])
def test_stop_leaves_no_sshd_or_session_processes(
    make_ssh_host, tmp_path: Path, netns: bool
) -> None:
    host = make_ssh_host(netns=netns)
    marker = f"sleep {abs(hash(host.root)) % 10**6}.5"  # unique to this test
    # A daemonized child (own session, parent gone) and a tmux server must die with sshd.
    result = ssh(
        host,
        tmp_path / "known_hosts",
        f"(setsid {marker} </dev/null >/dev/null 2>&1 &); "
        f"tmux -S {tmp_path / 'tmux.sock'} new -d '{marker}'; echo ok",
    )
    assert result.stdout == "ok\n", result.stderr
    assert len(subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout.split()) >= 2
    assert sshd_pids(host)

    host.stop()

    assert sshd_pids(host) == []
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout == b""


def test_netns_host_listens_on_port_22_of_its_veth_address(
    netns_host: SshHost, tmp_path: Path
) -> None:
    assert netns_host.port == 22
    assert netns_host.address.startswith("10.213.")
    assert netns_host.known_hosts_line().startswith(f"{netns_host.address} ssh-ed25519 ")

    result = ssh(netns_host, tmp_path / "known_hosts", "echo hi")

    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr


def test_cut_link_drops_packets_until_restored(netns_host: SshHost, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"

    netns_host.cut_link()
    started = time.monotonic()
    cut = ssh(netns_host, known_hosts, "echo hi", connect_timeout=2)
    elapsed = time.monotonic() - started
    netns_host.restore_link()
    restored = ssh(netns_host, known_hosts, "echo hi", connect_timeout=2)

    assert cut.returncode == 255
    assert elapsed >= 1.5  # silently dropped, not refused
    assert (restored.returncode, restored.stdout) == (0, "hi\n"), restored.stderr


def test_close_removes_the_namespace(make_ssh_host) -> None:
    host = make_ssh_host(netns=True)
    name = host.netns

    host.close()

    assert (
        name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert name.removeprefix("vpt-") not in links


def echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_delay_proxy_adds_the_delay_in_each_direction() -> None:
    server, port = echo_server()
    with (
        server,
        DelayProxy("127.0.0.1", port, delay_ms=50) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s,
    ):
        s.sendall(b"warm")
        assert s.recv(100) == b"warm"
        started = time.monotonic()
        s.sendall(b"ping")
        assert s.recv(100) == b"ping"
        round_trip = time.monotonic() - started
        s.shutdown(socket.SHUT_WR)  # EOF goes through too
        assert s.recv(100) == b""

    assert 0.1 <= round_trip < 2


def test_ssh_through_the_delay_proxy(ssh_host: SshHost, tmp_path: Path) -> None:
    with DelayProxy("127.0.0.1", ssh_host.port, delay_ms=10) as proxy:
        result = ssh(ssh_host, tmp_path / "known_hosts", "echo hi", port=proxy.port)

    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr
    assert proxy.connections == 1


def test_hosts_need_a_netns_for_cut_link(ssh_host: SshHost) -> None:
    with pytest.raises(RuntimeError):
        ssh_host.cut_link()
