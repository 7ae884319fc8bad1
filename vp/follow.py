"""Stream a detached run's log live, reconnecting after a dropped connection, and turn Ctrl-C
into SIGINT for the remote process group (a second Ctrl-C detaches).

The byte offset already shown is the resume point, so output is never repeated or lost.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from vp import remote
from vp.errors import ConnectionFailed, HostGone, VpError
from vp.mask import LogView
from vp.transport import Transport
from vp.ui import UI

INTERRUPT_GRACE = 15.0  # seconds to wait for the command to exit after SIGINT
HOST_CHECK_INTERVAL = 15.0  # while reconnecting, ask the provider this often if the host exists


@dataclass
class FollowResult:
    exit_code: int | None = None  # None: the run is still going (detached) or was lost
    changes: bytes | None = None
    interrupted: bool = False
    detached: bool = False
    lost: bool = False  # the wrapper is gone without an exit code (host rebooted, killed)
    setup_exit: int | None = None  # the setup failed with this code: the command did not run


class _Interrupts:
    """Count Ctrl-Cs without raising in the middle of I/O."""

    def __init__(self) -> None:
        self.count = 0
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.wfd, False)
        self._old = None

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, _signum, _frame) -> None:
        self.count += 1
        try:
            os.write(self.wfd, b"x")
        except BlockingIOError:
            pass

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        os.close(self.rfd)
        os.close(self.wfd)


def _drain(stream, sink: list[bytes]) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):
        sink.append(chunk)


def _parse_stderr(blob: bytes) -> tuple[int | None, bool, bytes | None, bool, str, int | None]:
    """-> (exit code, saw exit marker, changes, no-run, other stderr text, setup's exit)."""
    text_part, _, changes = blob.partition(remote.CHANGES_MARK.encode())
    saw_exit = False
    code: int | None = None
    setup_exit: int | None = None
    norun = False
    other = []
    for line in text_part.decode(errors="replace").split("\n"):
        if line.startswith(remote.SETUP_FAIL_MARK):
            value = line[len(remote.SETUP_FAIL_MARK) :].strip()
            setup_exit = int(value) if value.lstrip("-").isdigit() else 1
        elif line.startswith(remote.EXIT_MARK):
            saw_exit = True
            value = line[len(remote.EXIT_MARK) :].strip()
            code = int(value) if value.lstrip("-").isdigit() else None
        elif line.startswith(remote.NORUN_MARK):
            norun = True
        elif line.strip():
            other.append(line)
    has_changes = remote.CHANGES_MARK.encode() in blob
    return code, saw_exit, (changes if has_changes else None), norun, "\n".join(other), setup_exit


def follow(
    transport: Transport,
    run_id: str,
    workdir_sh: str,
    first_script: str,
    ui: UI,
    *,
    reconnect_timeout: float = 300,
    changes: bool = True,
    out=None,
    launched: bool = False,
    interruptible: bool = True,
    host_gone: Callable[[], str | None] | None = None,
    view: LogView | None = None,
    session: subprocess.Popen[bytes] | None = None,
) -> FollowResult:
    """Run `first_script` (launch+follow, or only follow when `launched`) until the run ends.

    With `interruptible` false (`vp logs -f`), Ctrl-C only stops watching. `host_gone`, asked
    while reconnecting fails, says why the host can never answer again (the provider destroyed
    or stopped it) or None: then vp stops at once instead of waiting out `reconnect_timeout`.
    `view` masks secrets and shows a setup's output on stderr (default: no masking).
    `session`: an early session (vp.transport.EarlySession) for `first_script`.
    """
    view = view or LogView(out or sys.stdout.buffer, sys.stderr.buffer)
    try:
        return _follow(
            transport,
            run_id,
            workdir_sh,
            first_script,
            ui,
            reconnect_timeout=reconnect_timeout,
            changes=changes,
            view=view,
            launched=launched,
            interruptible=interruptible,
            host_gone=host_gone,
            session=session,
        )
    finally:
        view.close()


def _follow(
    transport: Transport,
    run_id: str,
    workdir_sh: str,
    first_script: str,
    ui: UI,
    *,
    reconnect_timeout: float,
    changes: bool,
    view: LogView,
    launched: bool,
    interruptible: bool,
    host_gone: Callable[[], str | None] | None,
    session: subprocess.Popen[bytes] | None = None,
) -> FollowResult:
    offset = 0
    script = first_script
    expect_started = not launched
    started = False
    lost_since: float | None = None
    announced = False
    interrupt_deadline: float | None = None
    result = FollowResult()
    with _Interrupts() as intr:
        while True:
            proc, session = transport.popen(script, session), None
            err: list[bytes] = []
            drain = threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True)
            drain.start()
            sel = selectors.DefaultSelector()
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            sel.register(fd, selectors.EVENT_READ)
            sel.register(intr.rfd, selectors.EVENT_READ)
            pending = b""
            handled = intr.count
            try:
                while True:
                    if intr.count > handled:
                        handled = intr.count
                        os.read(intr.rfd, 64)
                        if intr.count >= 2 or interrupt_deadline is not None or not interruptible:
                            result.detached = True
                            result.interrupted = True
                            if interrupt_deadline is not None:  # it was sent SIGINT: check
                                _settle(transport, run_id, result)
                            return result
                        ui.note(
                            "Ctrl-C: interrupting the remote command "
                            "(press Ctrl-C again to detach and leave it running)"
                        )
                        _send_signal(transport, run_id, ui)
                        interrupt_deadline = time.monotonic() + INTERRUPT_GRACE
                        result.interrupted = True
                    if interrupt_deadline is not None and time.monotonic() > interrupt_deadline:
                        ui.warn(f"the command did not stop within {INTERRUPT_GRACE:.0f}s")
                        result.detached = True
                        return result
                    events = sel.select(timeout=0.25)
                    if not any(key.fd == fd for key, _ in events):
                        continue
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    if expect_started and not started:
                        pending += chunk
                        if len(pending) < len(remote.STARTED):
                            continue
                        if pending.startswith(remote.STARTED):
                            started = True
                            chunk = pending[len(remote.STARTED) :]
                        else:
                            chunk, pending = pending, b""
                            started = True
                    if chunk:
                        view.write(chunk)
                        offset += len(chunk)
                        lost_since = None
            finally:
                sel.close()
                if result.detached:
                    _stop(proc)
            proc.wait()
            drain.join(timeout=5)
            code, saw_exit, change_blob, norun, other, setup_exit = _parse_stderr(b"".join(err))
            if pending and not started:
                view.write(pending)
            if saw_exit:
                result.exit_code = code
                result.setup_exit = setup_exit
                result.lost = code is None
                result.changes = change_blob
                return result
            if norun:
                if expect_started and not started:
                    raise VpError(f"the run could not be started on {transport.label}: {other}")
                raise VpError(f"run {run_id} no longer exists on {transport.label}")
            if "VPERR" in other:
                raise VpError(other.split("VPERR", 1)[1].strip() + f" ({transport.label})")
            # The connection dropped (or ssh failed): the run goes on; reconnect and resume.
            now = time.monotonic()
            lost_since = lost_since or now
            if not announced:
                detail = f": {other.splitlines()[-1]}" if other.strip() else ""
                ui.warn(
                    f"connection to {transport.label} lost{detail}; reconnecting "
                    f"(the run continues; Ctrl-C to stop waiting)"
                )
                announced = True
            if now - lost_since > reconnect_timeout:
                raise ConnectionFailed(
                    f"lost the connection to {transport.label} for {reconnect_timeout:.0f}s",
                    hint=f"the run may still be going: vp logs -f {run_id}",
                )
            if intr.count == handled:
                _wait_reconnect(
                    transport, intr, handled, lost_since, reconnect_timeout, run_id, host_gone
                )
            if intr.count > handled:
                result.detached = True
                result.interrupted = True
                return result
            script = remote.follow_script(
                transport.runs_dir_sh, run_id, offset, workdir_sh, changes=changes
            )
            expect_started = False


def _wait_reconnect(
    transport: Transport,
    intr: _Interrupts,
    handled: int,
    since: float,
    limit: float,
    run_id: str = "",
    host_gone: Callable[[], str | None] | None = None,
) -> None:
    """Retry the connection with backoff until it is up, the limit passes, or Ctrl-C.

    Between failed attempts, ask the provider (`host_gone`) at most every HOST_CHECK_INTERVAL
    seconds whether the host still exists; if not, raise HostGone rather than keep waiting.
    """
    delay = 0.5
    asked_at: float | None = None
    while intr.count == handled and time.monotonic() - since <= limit:
        try:
            transport.ensure()
            return
        except ConnectionFailed:
            pass
        now = time.monotonic()
        if host_gone is not None and (asked_at is None or now - asked_at >= HOST_CHECK_INTERVAL):
            asked_at = now
            try:
                why = host_gone()
            except VpError:  # the provider's API is unreachable too: keep trying ssh
                why = None
            if why:
                raise HostGone(
                    f"{why}; run {run_id} on it is lost" if run_id else why,
                    hint="what was already streamed and fetched is kept; run again to get "
                    "a new host",
                )
        end = time.monotonic() + delay
        while time.monotonic() < end and intr.count == handled:
            time.sleep(0.1)
        delay = min(delay * 2, 5.0)


def _settle(transport: Transport, run_id: str, result: FollowResult) -> None:
    """Before detaching from a run that was just interrupted, ask whether it is still going:
    when it already ended, the result is its exit code (or lost), not "detached"."""
    try:
        proc = transport.run(remote.probe_script(transport.runs_dir_sh, run_id), timeout=20)
    except (VpError, subprocess.TimeoutExpired):
        return  # cannot tell: it may well keep going
    answer = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0 or not answer or answer == "running":
        return
    result.detached = False
    if answer.startswith("exit "):
        value = answer[5:].strip()
        result.exit_code = int(value) if value.lstrip("-").isdigit() else None
    result.lost = result.exit_code is None


def _send_signal(transport: Transport, run_id: str, ui: UI) -> None:
    try:
        transport.run(remote.signal_script(transport.runs_dir_sh, run_id, "INT"), timeout=20)
    except (VpError, subprocess.TimeoutExpired) as exc:
        ui.warn(f"could not signal the remote command: {exc}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
