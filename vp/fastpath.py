"""The dispatch fast path: `vp CMD ...` straight to the run pipeline, without typer.

Most `vp` calls run a command. Parsing them with typer costs more than the rest of a warm
call (typer and click alone import in ~40-60 ms), so `main` asks `try_run` first: when the
arguments are plain global options followed by a command that is not a subcommand, the run
starts here; anything else (a subcommand, an option this parser does not know, a malformed
value) returns None and the typer app in `vp.cli` handles it, with its usage errors. Both read
the global options from one table, vp/options.py. Before either, `vp`, `vp --help` and
`vp CMD --help` print the screens typer rendered into vp/helptext.py (`stored_help`), with
nothing else imported (issue #17: `vp --help` <= 100 ms).
"""

from __future__ import annotations

import os
import sys

# Nothing else at import time: `vp --help` is served from here before any vp module loads.


def __getattr__(name: str):
    """`Globals` and `SUBCOMMANDS` for older importers, loaded on first use."""
    if name == "Globals":
        from vp.options import Globals

        return Globals
    if name == "SUBCOMMANDS":
        from vp.commands import SUBCOMMANDS

        return SUBCOMMANDS
    raise AttributeError(name)


def run_command(g, argv: list[str]) -> int:
    """`vp [GLOBAL...] CMD ...`: the pipeline, then a hint if CMD looks like a mistyped
    subcommand. Shared by `vp run` (vp.cli) and the fast path."""
    from vp.platforms import kind
    from vp.run import RunOptions, execute

    cfg = g.load()
    opts = RunOptions(
        argv=argv,
        sync=not g.no_sync,
        sync_only=g.sync_only,
        download=False if g.no_download else None,
        detach=g.detach,
        docker=g.docker,
        host_name=g.host if kind(cfg.platform) != "ssh" else None,
        tunnels=g.tunnel,
        yes=g.yes,
        recover=True if g.recover else None,
        nodes=g.nodes,
        all_logs=g.all_logs,
    )
    code = execute(cfg, opts, g.ui)
    if code == 127:  # not found on the host: perhaps a vp subcommand with a typo (`vp stauts`)
        suggestion = near_subcommand(argv[0])
        if suggestion:
            g.ui.hint(f"did you mean vp {suggestion}?")
    return code


def near_subcommand(word: str) -> str | None:
    """The visible subcommand `word` is a likely typo of, if any. A name that is a command on
    this machine (`sh`, close to `ssh`) was meant as itself: no guess then."""
    import difflib
    import shutil

    from vp.commands import COMMANDS

    name = (word.split() or [""])[0]
    if not name.replace("-", "_").isidentifier() or shutil.which(name):
        return None
    visible = sorted({"run"} | {n for n, e in COMMANDS.items() if not e.hidden})
    close = difflib.get_close_matches(name, visible, n=1, cutoff=0.75)
    return close[0] if close and close[0] != name else None


def parse(argv: list[str]):
    """(global options, command argv) when `argv` is a plain remote command, else None."""
    from vp.commands import SUBCOMMANDS
    from vp.options import parse as parse_options

    return parse_options(argv, SUBCOMMANDS)


def try_run(argv: list[str]) -> int | None:
    """Run `argv` on the fast path and return the exit code, or None to use the full CLI."""
    parsed = parse(argv)
    if parsed is None:
        return None
    g, command = parsed
    from vp.errors import report

    ui = g.ui
    try:
        code = run_command(g, command)
    except (Exception, KeyboardInterrupt) as exc:
        code = report(exc, ui)
    return code


def stored_help(argv: list[str]) -> str | None:
    """The help screen `vp ARGV` prints, from vp/helptext.py, when typer would print exactly
    that: `vp`, `vp [PATH] --help|-h` with PATH a subcommand (or `group sub`), the typer
    version the screens were rendered with, a terminal at least as wide as theirs (click
    wraps at min(columns, 80) - 2), no shell-completion request, and the sources unchanged
    since. Else None: typer."""
    if argv:
        if argv[-1] not in ("--help", "-h") or len(argv) > 3:
            return None
        argv = argv[:-1]
    if any(a.startswith("-") for a in argv) or "_VP_COMPLETE" in os.environ:
        return None
    if "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION" in os.environ:
        return None  # changes the completion options' help
    from vp import helptext

    screen = helptext.SCREENS.get(" ".join(argv))
    if screen is None:
        return None
    if _columns() < helptext.WIDTH or _typer_version() != helptext.TYPER:
        return None
    return screen if sources_digest() == helptext.DIGEST else None  # else edited since


def sources_digest() -> int:
    """A checksum of the files the help screens are rendered from (vp/cli.py, vp/options.py,
    the command modules, the provider names), so a screen is not printed after any of them
    changed without `python -m vp.helpgen`: typer prints the new text instead (~1 ms)."""
    import zlib

    here = os.path.dirname(os.path.abspath(__file__))
    commands, platforms = os.path.join(here, "commands"), os.path.join(here, "platforms")
    try:  # not a plain directory (a zip app): no stored screens, typer prints
        files = [os.path.join(here, "cli.py"), os.path.join(here, "options.py")]
        files += sorted(os.path.join(commands, n) for n in os.listdir(commands) if n[-3:] == ".py")
        providers = sorted(n for n in os.listdir(platforms) if n[-3:] == ".py")
        digest = zlib.crc32(" ".join(providers).encode())
        for path in files:
            with open(path, "rb") as f:
                digest = zlib.crc32(f.read(), digest)
    except OSError:
        return -1
    return digest


def _columns() -> int:
    """shutil.get_terminal_size().columns, which click's help formatter reads, without
    importing shutil (it loads the compression modules): $COLUMNS, else stdout's terminal,
    else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
        except (AttributeError, ValueError, OSError):
            columns = 80
    return columns


def _typer_version() -> str | None:
    """typer's `__version__`, read from its source without importing it (~40 ms)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("typer")
    if spec is None or not spec.origin:
        return None
    try:
        with open(spec.origin, encoding="utf-8") as f:
            head = f.read(4096)
    except OSError:
        return None
    found = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", head, re.M)
    return found.group(1) if found else None


def main() -> None:
    screen = stored_help(sys.argv[1:])
    if screen is not None:
        try:
            sys.stdout.write(screen)
            sys.stdout.flush()
        except BrokenPipeError:  # `vp --help | head -3`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    from vp import prespawn

    prespawn.start(sys.argv[1:])  # the run's session, opened while the rest is imported
    code = try_run(sys.argv[1:])
    prespawn.discard()
    if code is None:
        from vp.cli import main as cli_main

        cli_main()
        return
    _exit_now(code)


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown (~20 ms for the modules a run loads): every
    file vp wrote is closed and its state database commits each statement, so only the
    standard streams need flushing."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass
    os._exit(code if isinstance(code, int) and 0 <= code <= 255 else 1)
