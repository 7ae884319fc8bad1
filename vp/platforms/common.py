"""Pieces every cloud provider module needs the same way: readiness, offers, keys."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vp.errors import HostGone, VpError
from vp.platforms.base import GONE, RUNNING, STOPPED, Host, HostSpec, Offer
from vp.poll import poll


class _PerThreadStdout:
    """sys.stdout that drops what the threads inside `quiet_stdout` write and passes the rest
    to the real stream. contextlib.redirect_stdout swaps the one global sys.stdout: two
    threads using it at once (the creates of `vp --nodes`) restore each other's StringIO and
    leave it in place for good, and it swallows the other threads' output meanwhile."""

    def __init__(self, real) -> None:
        self.real = real
        self.quiet: set[int] = set()

    def write(self, text: str) -> int:
        if threading.get_ident() in self.quiet:
            return len(text)
        return self.real.write(text)

    def flush(self) -> None:
        if threading.get_ident() not in self.quiet:
            self.real.flush()

    def __getattr__(self, name: str):
        return getattr(self.real, name)


_install = threading.Lock()


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """What a provider SDK prints from this thread is dropped (the SDKs print progress and
    tables to stdout, which is the user's command's output in vp); other threads' output is
    untouched."""
    with _install:
        if not isinstance(sys.stdout, _PerThreadStdout):
            sys.stdout = _PerThreadStdout(sys.stdout)
        out = sys.stdout
    me = threading.get_ident()
    nested = me in out.quiet
    out.quiet.add(me)
    try:
        yield
    finally:
        if not nested:
            out.quiet.discard(me)


def ssh_banner(host: str, port: int, timeout: float) -> bool:
    """True once `host:port` accepts a TCP connection and sends an `SSH-` banner."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(256).startswith(b"SSH-")
    except OSError:
        return False


def wait_until_ready(
    get: Callable[[], Host],
    *,
    what: str,
    timeout: float,
    poll_interval: float,
    status_label: str | None,
    hint: str,
    stopped_grace: float | None = None,
) -> Host:
    """Poll `get` until the host is RUNNING with an ssh endpoint that answers with a banner.

    `what` names the instance in messages ("vast instance 42"); `status_label` is the
    `Host.labels` key holding the provider's own status, quoted when time runs out. With
    `stopped_grace`, a host still STOPPED after that many seconds is an error at once: a
    stopped VM never becomes ready by itself.
    """
    started = time.monotonic()
    deadline = started + timeout
    last: list[Host] = []

    def ready() -> Host | None:
        host = get()
        last[:] = [host]
        if host.status == GONE:
            raise HostGone(f"{what} is gone")
        if host.status == RUNNING and host.ssh_host:
            left = max(0.5, min(5.0, deadline - time.monotonic()))
            if ssh_banner(host.ssh_host, host.ssh_port or 22, left):
                return host
        stopped_for = time.monotonic() - started
        if host.status == STOPPED and stopped_grace is not None and stopped_for > stopped_grace:
            raise VpError(
                f"{what} is stopped; it will not become ready by itself",
                hint="start it with: vp start",
            )
        return None

    def timed_out() -> VpError:
        host = last[0]
        if status_label:
            status = host.labels.get(status_label) or "provisioning"
        else:
            status = host.status if host.status != RUNNING else "running, ssh not answering"
        return VpError(f"{what} was not ready after {timeout:.0f}s (status: {status})", hint=hint)

    return poll(
        ready, timeout=timeout, interval=poll_interval, what=f"{what} to boot", timed_out=timed_out
    )


def discard_key(path: Path) -> None:
    """Remove a host's key pair (private and .pub)."""
    for p in (path, path.with_suffix(".pub")):
        with contextlib.suppress(OSError):
            p.unlink()


def affordable(offer: Offer, spec: HostSpec) -> bool:
    return spec.max_price is None or offer.price <= spec.max_price


def describe(spec: HostSpec) -> str:
    return f"{spec.gpus}x {spec.gpu or 'any GPU'}"


def no_offer(
    spec: HostSpec, found: list[Offer], *, what: str, platform: str, unmatched: str | None = None
) -> VpError:
    """No offer fits: name the cheapest one above max_price, or say none matches at all.

    `what` is the provider's noun ("vast.ai offer"); `unmatched` overrides the message for
    the nothing-matches case.
    """
    if found:
        cheapest = found[0]
        return VpError(
            f"no {what} for {describe(spec)} at or below ${spec.max_price:.2f}/h; "
            f"the cheapest is ${cheapest.price:.2f}/h ({cheapest.gpus}x {cheapest.gpu})",
            hint="raise [host] max_price or pick another gpu",
        )
    return VpError(
        unmatched or f"no {what} for {describe(spec)}",
        hint=f"run `vp offers -p {platform}` to see what is available",
    )
