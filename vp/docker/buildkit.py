"""Plain progress lines from the BuildKit trace the engine streams during `POST /build?version=2`.

The engine wraps BuildKit's `StatusResponse` protobuf (moby/buildkit control.proto) in JSON
messages `{"id": "moby.buildkit.trace", "aux": "<base64>"}`. Only a handful of fields matter for
a progress line and for naming the failing step, so this decodes the protobuf wire format itself
instead of pulling in protobuf and BuildKit's generated code:

    StatusResponse { repeated Vertex vertexes = 1; repeated VertexStatus statuses = 2;
                     repeated VertexLog logs = 3; }
    Vertex         { string digest = 1; string name = 3; bool cached = 4;
                     Timestamp started = 5; Timestamp completed = 6; string error = 7; }
    VertexStatus   { string ID = 1; string vertex = 2; string name = 3; int64 current = 4;
                     int64 total = 5; }
    VertexLog      { string vertex = 1; bytes msg = 4; }
"""

from __future__ import annotations

import base64
import binascii
import collections
import time
from collections.abc import Callable

from vp.output import human_size

# Lines of a step's output kept for the hint when it fails.
TAIL_LINES = 12
# At most one byte-progress line per transfer (pull, push, context upload) per this many seconds.
PROGRESS_INTERVAL = 1.0


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes) -> dict[int, list[int | bytes]]:
    """Decode one protobuf message into field number → values (ints, or bytes for
    length-delimited fields). Unknown wire types end the decode (we only read what we know)."""
    out: dict[int, list[int | bytes]] = collections.defaultdict(list)
    pos = 0
    try:
        while pos < len(buf):
            key, pos = _varint(buf, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = _varint(buf, pos)
                out[number].append(value)
            elif wire == 2:
                length, pos = _varint(buf, pos)
                out[number].append(buf[pos : pos + length])
                pos += length
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                break
    except IndexError:
        pass
    return out


def _text(values: list[int | bytes], default: str = "") -> str:
    for value in values:
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
    return default


def _int(values: list[int | bytes]) -> int:
    for value in values:
        if isinstance(value, int):
            return value
    return 0


class Trace:
    """Feeds BuildKit trace messages, says one line per step started and per line a step
    prints, and remembers which step failed and its last lines of output."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.names: dict[str, str] = {}
        self.started: set[str] = set()
        self.partial: dict[str, str] = {}
        self.tails: dict[str, collections.deque[str]] = {}
        self.order: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.failed_step: str | None = None
        self.failed_error: str | None = None
        self._progress_at: dict[str, float] = {}

    def feed(self, aux: str) -> None:
        try:
            message = fields(base64.b64decode(aux))
        except (binascii.Error, ValueError):
            return
        for raw in message.get(1, []):
            if isinstance(raw, bytes):
                self._vertex(fields(raw))
        for raw in message.get(2, []):
            if isinstance(raw, bytes):
                self._status(fields(raw))
        for raw in message.get(3, []):
            if isinstance(raw, bytes):
                self._log(fields(raw))

    def _vertex(self, v: dict[int, list[int | bytes]]) -> None:
        digest = _text(v.get(1, []))
        name = _text(v.get(3, [])) or self.names.get(digest, digest[:19])
        self.names[digest] = name
        if (v.get(5) or v.get(6) or _int(v.get(4, []))) and digest not in self.started:
            self.started.add(digest)
            self.say(f"CACHED {name}" if _int(v.get(4, [])) else name)
        error = _text(v.get(7, []))
        if error and self.failed_step is None and "context canceled" not in error:
            self.failed_step = name
            self.failed_error = error

    def _status(self, s: dict[int, list[int | bytes]]) -> None:
        ident = _text(s.get(1, []))
        current, total = _int(s.get(4, [])), _int(s.get(5, []))
        if not current or s.get(8):
            return
        now = time.monotonic()
        if now - self._progress_at.get(ident, 0.0) < PROGRESS_INTERVAL:
            return
        self._progress_at[ident] = now
        name = _text(s.get(3, [])) or ident
        amount = f"{human_size(current)}/{human_size(total)}" if total else human_size(current)
        self.say(f"{name}: {amount}")

    def _log(self, entry: dict[int, list[int | bytes]]) -> None:
        digest = _text(entry.get(1, []))
        data = next((v for v in entry.get(4, []) if isinstance(v, bytes)), b"")
        text = self.partial.pop(digest, "") + data.decode("utf-8", "replace")
        *lines, rest = text.replace("\r\n", "\n").split("\n")
        if rest:
            self.partial[digest] = rest
        tail = self.tails.setdefault(digest, collections.deque(maxlen=TAIL_LINES))
        for line in lines:
            line = line.rsplit("\r", 1)[-1]
            if line.strip():
                tail.append(line)
                self.order.append(line)
                self.say(line)

    def failed_output(self) -> list[str]:
        """The last lines of output of the step that failed (else of the whole build)."""
        for digest, name in self.names.items():
            if name == self.failed_step:
                tail = list(self.tails.get(digest, ()))
                if self.partial.get(digest):
                    tail.append(self.partial[digest])
                return tail
        return list(self.order)
