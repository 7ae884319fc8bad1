"""Run rsync with a NUL-separated file list on stdin, optionally reporting bytes as they move.

With a progress callback, rsync runs with `--info=progress2` and its running byte count is
parsed from stdout; the list is written from a thread so a long list and a chatty rsync can
never block each other.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable

_PROGRESS = re.compile(rb"^\s*([\d,.]+)\s+(\d+)%")
_RECORD = re.compile(rb"^\s*[\d,.]+\s+\d+%\s+\S+/s\s+\d+:\d\d:\d\d")


def files_from(names: list[str]) -> bytes:
    """The NUL-separated list for `--files-from=- --from0` (or `tar --null -T -`). Every name
    is written as `./NAME`: rsync drops lines starting with `#` or `;` as comments even with
    --from0, and bsdtar reads a `-C` line as an option; `./` is a no-op to both."""
    return b"".join(b"./" + n.encode("utf-8", "surrogateescape") + b"\0" for n in names)


def run_rsync(
    argv: list[str], payload: bytes, on_bytes: Callable[[int], None] | None = None
) -> subprocess.CompletedProcess[bytes]:
    import shutil

    if shutil.which(argv[0]) is None:
        from vp.errors import VpError

        raise VpError(
            "rsync is not installed on this machine",
            hint="install it: apt-get install rsync (Debian/Ubuntu), brew install rsync (macOS)",
        )
    if on_bytes is None:
        return subprocess.run(argv, input=payload, capture_output=True, start_new_session=True)
    argv = [argv[0], "--info=progress2", "--no-human-readable", *argv[1:]]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # Ctrl-C reaches vp, which decides
    )
    assert proc.stdin and proc.stdout and proc.stderr
    err: list[bytes] = []

    def feed() -> None:
        try:
            proc.stdin.write(payload)  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except (BrokenPipeError, ValueError):
            pass

    threads = [
        threading.Thread(target=feed, daemon=True),
        threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True),  # type: ignore[union-attr]
    ]
    for t in threads:
        t.start()
    out = b""
    try:
        pending = b""
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
            out += chunk
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            # rsync ends a progress record with the next one's "\r": a record that already
            # shows its rate is complete, so report it now rather than a tick (a second) late.
            if _RECORD.match(pending):
                lines.append(pending)
            for line in lines:
                m = _PROGRESS.match(line)
                if m:
                    on_bytes(int(m.group(1).replace(b",", b"").replace(b".", b"")))
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    for t in threads:
        t.join(timeout=5)
    return subprocess.CompletedProcess(argv, proc.returncode, out, b"".join(err))
