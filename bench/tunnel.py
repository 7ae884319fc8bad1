"""Port forwards: OpenSSH `ssh -O forward -L` on vp's ControlMaster against sshtunnel
(paramiko, its own connection), to the same real sshd test host.

For each backend, in-process and interleaved:
- open: time to make one forward usable (the master is already up, as it is for every vp
  command that reaches a host; sshtunnel opens and authenticates a connection of its own);
- ttfb: a fresh TCP connection to the forwarded port, one request byte, the first reply byte
  (what a browser pays per connection);
- throughput: one connection pulling `--mb` MB through the forward.

The far end is a small TCP server on the host side (the test host is this machine).

    .venv/bin/python bench/tunnel.py [--delay-ms 0|25] [--reps 20] [--mb 256]
"""

from __future__ import annotations

import os
import socket
import socketserver
import sys
import threading
import time

from common import ALIAS, Bench, fmt, header, interleaved, median, parse_args

CHUNK = 1 << 20


class _Source(socketserver.BaseRequestHandler):
    """Reads `N\\n`, answers with N bytes (1: the ttfb probe)."""

    def handle(self) -> None:
        line = b""
        while not line.endswith(b"\n"):
            got = self.request.recv(64)
            if not got:
                return
            line += got
        left = int(line)
        block = b"x" * CHUNK
        while left > 0:
            n = min(left, CHUNK)
            self.request.sendall(block[:n])
            left -= n


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _pull(port: int, size: int) -> float:
    """Bytes in `size`; returns the seconds to the first byte."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"{size}\n".encode())
        first = None
        got = 0
        while got < size:
            data = s.recv(CHUNK)
            if not data:
                raise SystemExit(f"forward on {port} closed after {got} of {size} bytes")
            if first is None:
                first = time.perf_counter() - t0
            got += len(data)
    return first or 0.0


def main() -> None:
    mb = 256
    if "--mb" in sys.argv:  # ours; the rest are common.parse_args'
        i = sys.argv.index("--mb")
        mb = int(sys.argv[i + 1])
        del sys.argv[i : i + 2]
    args = parse_args(__doc__.splitlines()[0], reps=20)
    header("tunnel: OpenSSH -O forward on the master vs sshtunnel (paramiko)", args)
    with Bench(args.delay_ms) as b:
        os.environ.update(b.env)
        from vp import tunnel
        from vp.platforms.base import Host
        from vp.ssh import SshTransport, parse_target

        server = _Server(("127.0.0.1", 0), _Source)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        remote = server.server_address[1]
        transport = SshTransport(parse_target(ALIAS))
        transport.ensure()  # vp's master, as after any vp command that reached the host
        host = Host(id=ALIAS, name=ALIAS, platform="ssh", ssh_host=ALIAS)

        def open_openssh() -> tunnel.Tunnels:
            return tunnel.connect(host, transport, [tunnel.Forward(remote, 0)])

        def open_sshtunnel() -> tunnel.Tunnels:
            return tunnel.connect_in_process(transport, [tunnel.Forward(remote, 0)])

        opened: dict[str, list[tunnel.Tunnels]] = {"openssh": [], "sshtunnel": []}
        times = interleaved(
            {
                "openssh": lambda: opened["openssh"].append(open_openssh()),
                "sshtunnel": lambda: opened["sshtunnel"].append(open_sshtunnel()),
            },
            args.reps,
        )
        for t in opened["openssh"] + opened["sshtunnel"]:
            t.close()
        kept = {"openssh": open_openssh(), "sshtunnel": open_sshtunnel()}
        ports = {name: t.forwards[0].local for name, t in kept.items()}
        for name in ports:
            _pull(ports[name], 1)  # warm both
        ttfb: dict[str, list[float]] = {name: [] for name in ports}
        for i in range(args.reps):
            for name in list(ports) if i % 2 == 0 else list(ports)[::-1]:
                ttfb[name].append(_pull(ports[name], 1))
        rate: dict[str, list[float]] = {name: [] for name in ports}
        for i in range(3):
            for name in list(ports) if i % 2 == 0 else list(ports)[::-1]:
                t0 = time.perf_counter()
                _pull(ports[name], mb * CHUNK)
                rate[name].append(mb / (time.perf_counter() - t0))
        for t in kept.values():
            t.close()
        server.shutdown()

        print(f"{'':12}{'open':>12}{'ttfb':>12}{'MB/s':>10}")
        for name in ports:
            print(
                f"{name:12}{fmt(median(times[name]))}{fmt(median(ttfb[name]))}"
                f"{median(rate[name]):10.0f}"
            )


if __name__ == "__main__":
    main()
