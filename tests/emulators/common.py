"""Plumbing shared by the provider emulators: a threaded HTTP server, timed state changes,
bearer-token auth, and the real sshd hosts that stand in for rented machines."""

from __future__ import annotations

import heapq
import itertools
import json
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

try:  # pytest puts either the repo root or tests/ on sys.path, depending on the import mode
    from tests.sshhost import SshHost
    from tests.waiting import wait_for  # noqa: F401 - the emulators' and tests' one wait
except ImportError:  # pragma: no cover - depends on how pytest was started
    from sshhost import SshHost  # type: ignore[no-redef]
    from waiting import wait_for  # type: ignore[no-redef]  # noqa: F401


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""

    @property
    def json(self) -> Any:
        if not self.body:
            return None
        return json.loads(self.body)

    @property
    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        if value.lower().startswith("bearer "):
            return value[7:].strip()
        return None


@dataclass
class Response:
    status: int = 200
    body: Any = None  # dict/list -> JSON; str -> text/plain; None -> empty JSON object
    headers: dict[str, str] = field(default_factory=dict)


class Scheduler:
    """Runs callbacks after a delay on one background thread: how emulated state moves on."""

    def __init__(self, on_error: Callable[[BaseException], None]):
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._on_error = on_error
        self._thread = threading.Thread(target=self._run, name="emulator-scheduler", daemon=True)
        self._thread.start()

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._seq), fn))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported to the test through .errors
                self._on_error(exc)


class Emulator:
    """Base class: subclasses implement `handle(request) -> Response` and the instance model.

    Fault switches (set them on the object at any time):
      fail_auth       every request is answered with the provider's 401
      capacity_error  creating an instance fails with the provider's "no capacity" error
      never_ready     created/started instances stay in the provider's provisioning state
      boot_delay      seconds from create/start until the instance runs and sshd answers
      stop_delay      seconds from stop until the instance is stopped and sshd is down
      fail_requests   {regex on "METHOD /path": Response}: answer matching requests with that
                      response instead (e.g. a 500 after the provider accepted a create)
      delay_requests  {regex searched in "METHOD /path\nBODY": seconds}: answer matching
                      requests that much later (a slow API; time to press Ctrl-C)
      hold_responses  {regex searched as above: seconds}: handle matching requests at once
                      (a create makes its instance) but send the answer that much later, as
                      when the network drops the answer to a create the provider carried out
    """

    provider = "emulator"

    def __init__(self, workdir: Path, *, api_key: str | None = None, boot_delay: float = 0.6):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.api_key = api_key or f"{self.provider}-key-{secrets.token_hex(12)}"
        self.fail_auth = False
        self.capacity_error = False
        self.never_ready = False
        self.boot_delay = boot_delay
        self.stop_delay = 0.3
        self.fail_requests: dict[str, Response] = {}
        self.delay_requests: dict[str, float] = {}
        self.hold_responses: dict[str, float] = {}
        self.instances: dict[str, dict] = {}  # provider id -> the provider's own record
        self.hosts: dict[str, SshHost] = {}  # provider id -> sshd standing in for the machine
        self.running_sshd: set[str] = set()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.request_texts: list[str] = []  # "METHOD /path\nBODY" of every request, in order
        self.held: list[str] = []  # requests handled whose answer `hold_responses` is holding
        self.errors: list[str] = []  # exceptions raised inside the emulator (tests assert empty)
        self.lock = threading.RLock()
        self.scheduler: Scheduler | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "emulator not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Emulator:
        self.scheduler = Scheduler(self._record_error)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name=f"{self.provider}-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self.scheduler:
            self.scheduler.close()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        with self.lock:
            hosts = list(self.hosts.values())
            self.hosts.clear()
            self.running_sshd.clear()
        for host in hosts:
            try:
                host.close()
            except Exception as exc:  # noqa: BLE001
                self._record_error(exc)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers for subclasses -----------------------------------------------------------------

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        assert self.scheduler is not None
        self.scheduler.after(delay, fn)

    def new_host(self, iid: str, keys: list[str]) -> SshHost:
        """A stopped sshd for instance `iid` that accepts `keys`."""
        host = SshHost(self.workdir / f"{self.provider}-{iid}", authorized_keys=list(keys))
        with self.lock:
            self.hosts[iid] = host
        return host

    def sshd_up(self, iid: str) -> SshHost | None:
        with self.lock:
            host = self.hosts.get(iid)
        if host is None:
            return None
        if iid not in self.running_sshd:
            host.start()
            with self.lock:
                self.running_sshd.add(iid)
        return host

    def sshd_down(self, iid: str) -> None:
        with self.lock:
            host = self.hosts.get(iid)
            was_running = iid in self.running_sshd
            self.running_sshd.discard(iid)
        if host is not None and was_running:
            host.stop()

    def sshd_gone(self, iid: str) -> None:
        with self.lock:
            host = self.hosts.pop(iid, None)
            self.running_sshd.discard(iid)
        if host is not None:
            host.close()

    def live_sshd(self) -> int:
        with self.lock:
            return len(self.running_sshd)

    def slow_seen(self, pattern: re.Pattern[str]) -> bool:
        """Whether a request matching `pattern` has arrived (and is being delayed)."""
        with self.lock:
            return any(pattern.search(text) for text in self.request_texts)

    def authorized(self, request: Request) -> bool:
        return not self.fail_auth and request.bearer == self.api_key

    def handle(self, request: Request) -> Response:  # pragma: no cover - abstract
        raise NotImplementedError

    def _record_error(self, exc: BaseException) -> None:
        self.errors.append("".join(traceback.format_exception(exc)))


def _handler_for(emulator: Emulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = f"{emulator.provider}-emulator"

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(
                method=self.command,
                path=parts.path,
                query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            with emulator.lock:
                emulator.requests.append((request.method, request.path))
                emulator.request_texts.append(
                    f"{request.method} {request.path}\n{body.decode(errors='replace')}"
                )
            line = f"{request.method} {request.path}"
            canned = [r for p, r in emulator.fail_requests.items() if re.fullmatch(p, line)]
            text = f"{line}\n{body.decode(errors='replace')}"
            delay = max(
                [d for p, d in emulator.delay_requests.items() if re.search(p, text)] or [0]
            )
            if delay:
                time.sleep(delay)
            try:
                response = canned[0] if canned else emulator.handle(request)
            except Exception as exc:  # noqa: BLE001 - a 500 the client sees, and the test too
                emulator._record_error(exc)
                response = Response(500, {"error": "internal emulator error"})
            hold = max([d for p, d in emulator.hold_responses.items() if re.search(p, text)] or [0])
            if hold:
                with emulator.lock:
                    emulator.held.append(text)
                time.sleep(hold)
            if isinstance(response.body, str):
                data = response.body.encode()
                ctype = "text/plain; charset=utf-8"
            else:
                data = json.dumps({} if response.body is None else response.body).encode()
                ctype = "application/json"
            self.send_response(response.status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            try:
                self.wfile.write(data)
            except OSError:  # the client gave up (e.g. interrupted while we were slow)
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


def ssh_run(
    ssh_host: str,
    ssh_port: int,
    user: str,
    key_path: str,
    host_public_key: str,
    workdir: Path,
    command: str = "true",
) -> subprocess.CompletedProcess[str]:
    """Run `command` over a real ssh with a pinned host key (StrictHostKeyChecking=yes)."""
    known = Path(workdir) / f"known_hosts-{ssh_port}"
    known.write_text(f"[{ssh_host}]:{ssh_port} {host_public_key}\n")
    argv = [
        "ssh", "-F", "/dev/null", "-i", key_path, "-p", str(ssh_port),
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5",
        f"{user}@{ssh_host}", command,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


_CREATE_SCRIPT = """
import json, sys
from vp.errors import VpError
from vp.platforms import get_platform
from vp.platforms.base import HostSpec
platform = get_platform(sys.argv[1], json.loads(sys.argv[2]))
try:
    platform.create(HostSpec(**json.loads(sys.argv[3])), "vp-interrupted")
except VpError as exc:
    print(type(exc).__name__, exc.message)
    sys.exit(exc.exit_code)
print("created")
"""


def interrupt_create(
    emulator: Emulator, platform: str, settings: dict, spec: dict, slow: str, *, hold: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `create` in a child vp process, make the request matching `slow` hang after the
    provider accepted the create, press Ctrl-C (SIGINT) then, and return what the child said.
    With `hold`, `slow` is the create request itself: the provider makes the instance and its
    answer is held, so vp is interrupted before it learns the instance's id."""
    waits = emulator.hold_responses if hold else emulator.delay_requests
    waits[slow] = 30.0
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", _CREATE_SCRIPT, platform, json.dumps(settings), json.dumps(spec)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pattern = re.compile(slow)
        if hold:
            wait_for(lambda: any(pattern.search(t) for t in emulator.held), timeout=30)
        else:
            wait_for(lambda: emulator.instances and emulator.slow_seen(pattern), timeout=30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        waits.pop(slow, None)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
