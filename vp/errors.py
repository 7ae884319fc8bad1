"""One exception family, rendered once at the top of the CLI as a one-line message plus a hint."""

from __future__ import annotations

# Exit codes users and scripts can rely on (README "Exit status").
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class VpError(Exception):
    """A failure vp understands: `message` says what went wrong, `hint` what to do about it."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(VpError):
    """Bad input from the user: flags, config files, host strings. Exit 2, like click."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A config file is malformed or names an unknown key."""


class ConnectionFailed(VpError):
    """ssh could not reach the host (exit 255 with no run exit file)."""


class HostGone(VpError):
    """The host vanished (destroyed, or the provider says it no longer exists)."""


class Interrupted(VpError):
    """The user pressed Ctrl-C; we already cleaned up and say what happened."""

    exit_code = EXIT_INTERRUPTED


def unexpected(exc: BaseException) -> tuple[str, str]:
    """The one line for an exception no VpError wrapped: the last line of defence of both CLI
    entry points. A stalled host or network is common enough to get its own words rather than
    "internal error" (the user can do something about it, and it is not a bug in vp)."""
    import subprocess

    if isinstance(exc, subprocess.TimeoutExpired):
        cmd = exc.cmd if isinstance(exc.cmd, str) else " ".join(str(c) for c in (exc.cmd or [])[:1])
        return (
            f"{cmd or 'a command'} did not finish within {exc.timeout:.0f} s: the host or the"
            " network stalled",
            "run the command again when the host answers",
        )
    return (
        f"internal error: {type(exc).__name__}: {exc}",
        "rerun with VP_DEBUG=1 for a traceback, and please report it",
    )


def report(exc: BaseException, ui) -> int:
    """Show a failure as one line (plus a hint) on `ui` and return the exit code: the last
    part of both CLI entry points (vp.cli after click's own exceptions, and vp.fastpath).
    With VP_DEBUG set, an unexpected exception keeps its traceback."""
    import os

    if isinstance(exc, VpError):
        ui.error(exc.message, hint=exc.hint)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        ui.error("interrupted")
        return EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError):
        return 0
    if os.environ.get("VP_DEBUG"):
        raise exc
    message, hint = unexpected(exc)
    ui.error(message, hint=hint)
    return EXIT_FAILURE
