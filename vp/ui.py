"""Everything vp says to a person goes to stderr, so stdout carries only the command's output or,
with `-o json|yaml|table`, only data."""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass
class UI:
    quiet: bool = False
    verbose: bool = False
    output: str = "text"

    @property
    def structured(self) -> bool:
        return self.output != "text"

    def _tty(self) -> bool:
        return sys.stderr.isatty()

    def _emit(self, text: str) -> None:
        # Messages name files, hosts and output the host made: escaped here, once for every
        # kind of message, so none can clear the screen or fake a line (one_line below).
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def info(self, message: str) -> None:
        """Progress: silent with -q and in structured modes."""
        if not (self.quiet or self.structured):
            self._emit(self._style(f"vp: {one_line(message)}", "2"))

    def debug(self, message: str) -> None:
        if self.verbose and not self.structured:
            self._emit(self._style(f"vp: {one_line(message)}", "2"))

    def note(self, message: str) -> None:
        """Things a person must see even with -q (Ctrl-C help, detach instructions)."""
        if not self.structured or sys.stderr.isatty():
            self._emit(self._style(f"vp: {one_line(message)}", "1"))

    def hint(self, message: str) -> None:
        """A suggestion after the fact (`did you mean vp status?`), shown like a note."""
        if not self.structured or sys.stderr.isatty():
            self._emit(f"vp: hint: {one_line(message)}")

    def warn(self, message: str) -> None:
        self._emit(self._style(f"vp: warning: {one_line(message)}", "33"))

    def error(self, message: str, hint: str | None = None) -> None:
        self._emit(self._style(f"vp: error: {one_line(message)}", "31"))
        if hint:
            self._emit(f"vp: hint: {one_line(hint)}")

    def _style(self, text: str, code: str) -> str:
        if self._tty():
            return f"\x1b[{code}m{text}\x1b[0m"
        return text


def one_line(text: str) -> str:
    """`text` with control characters escaped: input echoed in an error (a key, a host, a
    path) can never break the one-line message or smuggle terminal escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ByteProgress:
    """A bytes progress bar on a terminal (rich), nothing otherwise: plain lines already say
    what is moving, and structured output must stay clean."""

    def __init__(self, ui: UI, label: str, total: int):
        self._progress = None
        if not (ui.quiet or ui.structured) and sys.stderr.isatty() and total > 0:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._progress.add_task(label, total=total)

    @property
    def callback(self):
        return self.update if self._progress is not None else None

    def update(self, done: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done)

    def __enter__(self) -> ByteProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


class Status:
    """A live one-line status (spinner, elapsed time, latest detail) on a terminal; anywhere
    else each update is a plain progress line. For work with no byte count: create, build."""

    def __init__(self, ui: UI, label: str):
        self.ui = ui
        self.label = label
        self._progress = None

    def __enter__(self) -> Status:
        if not (self.ui.quiet or self.ui.structured) and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[detail]}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._progress.add_task(f"vp: {self.label}", total=None, detail="")
            self._progress.start()
        else:
            self.ui.info(self.label)
        return self

    def update(self, detail: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, detail=one_line(detail)[:100])
        else:
            self.ui.info(detail)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self.ui.info(self.label + " - done" if exc[0] is None else self.label)
