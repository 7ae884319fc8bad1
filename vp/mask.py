"""Secret values printed by a run show as *** in vp's output and in the run's stored log.

Two places filter, with the same rule:
- on the host, the run wrapper pipes the setup's and the command's output through a small
  filter (`PERL_FILTER`, else `PYTHON_FILTER`: perl is in every Debian/Ubuntu base system,
  python3 on nearly every GPU image) before it reaches `~/.vp/runs/ID/log`. A secret can hold
  any byte, newlines included, so no line-based tool (sed, awk) would do. The values reach the
  filter through its environment (`vp.remote.ship_env`), never its argv. A host with neither
  keeps an unmasked log (the wrapper says so in it);
- here, `LogView` masks what vp prints live and what `vp logs` shows, whatever the host did.

Both work on byte chunks as they come. A value split across two chunks is still caught: the
end of a chunk that could begin a secret (at most len(secret)-1 bytes) is held back until the
next chunk (or the end) says whether it does. Output that ends in such bytes therefore shows
them a little late; nothing else is delayed. Values shorter than 4 bytes are not masked (an
"a" or "1" would turn all such text into ***). A program that transforms a secret (base64,
one character per line) before printing it is not caught: masking is a net, not a seal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import BinaryIO

from vp.remote import SETUP_END, SETUP_START
from vp.secretstore import mask_values

MASK = b"***"

PERL_FILTER = r"""$| = 1;
binmode STDIN; binmode STDOUT;
$SIG{INT} = $SIG{TERM} = 'IGNORE';
my %seen;
my @s = sort { length($b) <=> length($a) }
        grep { length($_) >= 4 && !$seen{$_}++ }
        map { $ENV{$_} } grep { /^_VP_MASK_/ } keys %ENV;
delete $ENV{$_} for grep { /^_VP_MASK_/ } keys %ENV;
my $re = @s ? join('|', map { quotemeta } @s) : undef;
my $buf = '';
while (1) {
    my $n = sysread(STDIN, my $c, 65536);
    if (!defined $n) { next if $!{EINTR}; last; }
    last if $n == 0;
    $buf .= $c;
    if (!defined $re) { print $buf; $buf = ''; next; }
    $buf =~ s/$re/***/g;
    my $keep = 0;
    for my $s (@s) {
        my $max = length($s) - 1;
        $max = length($buf) if $max > length($buf);
        for (my $k = $max; $k > $keep; $k--) {
            if (substr($buf, -$k) eq substr($s, 0, $k)) { $keep = $k; last; }
        }
    }
    print substr($buf, 0, length($buf) - $keep);
    $buf = substr($buf, length($buf) - $keep);
}
print $buf;
"""

PYTHON_FILTER = r"""import os, re, signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
keys = [k for k in os.environb if k.startswith(b"_VP_MASK_")]
vals = sorted({os.environb[k] for k in keys if len(os.environb[k]) >= 4}, key=len, reverse=True)
for k in keys:
    del os.environb[k]
pat = re.compile(b"|".join(re.escape(v) for v in vals)) if vals else None
buf = b""

def out(data):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]

while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    buf += chunk
    if pat is None:
        out(buf)
        buf = b""
        continue
    buf = pat.sub(b"***", buf)
    keep = 0
    for v in vals:
        for k in range(min(len(v) - 1, len(buf)), keep, -1):
            if buf.endswith(v[:k]):
                keep = k
                break
    out(buf[: len(buf) - keep])
    buf = buf[len(buf) - keep :]
out(buf)
"""


class Masker:
    """Replace secret values in a byte stream fed in chunks (the rule the host filters use)."""

    def __init__(self, values: Iterable[str]) -> None:
        self.needles = [v.encode("utf-8", "surrogateescape") for v in mask_values(values)]
        alternatives = b"|".join(re.escape(n) for n in self.needles)
        self._re = re.compile(alternatives) if self.needles else None
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        if self._re is None:
            return chunk
        data = self._re.sub(MASK, self._held + chunk)
        keep = 0
        for needle in self.needles:
            for k in range(min(len(needle) - 1, len(data)), keep, -1):
                if data.endswith(needle[:k]):
                    keep = k
                    break
        self._held = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep]

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


class LogView:
    """Where a run's log bytes go on this machine: secrets masked, and the setup's output
    (between the wrapper's SETUP_START and SETUP_END lines) on stderr, so a command's stdout
    stays the command's. `on_setup` is called when a setup starts."""

    def __init__(
        self,
        out: BinaryIO,
        err: BinaryIO,
        values: Iterable[str] = (),
        on_setup: Callable[[], None] | None = None,
    ) -> None:
        self.out, self.err = out, err
        self.masker = Masker(values)
        self.on_setup = on_setup
        self.in_setup = False
        self.saw_setup = False
        self._held = b""

    def write(self, chunk: bytes) -> None:
        self._route(self.masker.feed(chunk))

    def close(self) -> None:
        self._route(self.masker.flush())
        if self._held:
            self._emit(self._held)
            self._held = b""

    def _route(self, data: bytes) -> None:
        data = self._held + data
        self._held = b""
        while data:
            i = data.find(b"\x1e")
            if i < 0:
                self._emit(data)
                return
            if i:
                self._emit(data[:i])
                data = data[i:]
            if data.startswith(SETUP_START):
                self.in_setup = self.saw_setup = True
                if self.on_setup is not None:
                    self.on_setup()
                data = data[len(SETUP_START) :]
            elif data.startswith(SETUP_END):
                self.in_setup = False
                data = data[len(SETUP_END) :]
            elif SETUP_START.startswith(data) or SETUP_END.startswith(data):
                self._held = data  # maybe a marker, cut by the chunk boundary
                return
            else:
                self._emit(data[:1])
                data = data[1:]

    def _emit(self, data: bytes) -> None:
        stream = self.err if self.in_setup else self.out
        stream.write(data)
        stream.flush()
