"""The dispatch fast path: `vp CMD ...` straight to the run pipeline, without typer.

Most `vp` calls run a command. Parsing them with typer costs more than the rest of a warm
call (typer and click alone import in ~40-60 ms), so `vp/__main__.py` asks `try_run` first:
when the arguments are plain global options followed by a command that is not a subcommand,
the run starts here; anything else (a subcommand, `--help`, an option this parser does not
know, a malformed value) returns None and the typer app in `vp.cli` handles it, with its
usage errors. The meaning of every option is the same as in `vp.cli.main_options`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vp.commands import COMMANDS
from vp.ui import UI

# Every subcommand name, so dispatch can tell `vp ls` from `vp python ...` without importing
# the command modules: `run` and the registry's (vp/commands/__init__.py, a light module).
SUBCOMMANDS = frozenset({"run", *COMMANDS})

_FLAGS = {
    "--no-sync": ("no_sync", True),
    "--sync-only": ("sync_only", True),
    "--no-download": ("no_download", True),
    "--docker": ("docker", True),
    "--no-docker": ("docker", False),
    "--detach": ("detach", True),
    "--yes": ("yes", True),
    "--recover": ("recover", True),
    "--all-logs": ("all_logs", True),
    "--over-budget": ("over_budget", True),
    "-v": ("verbose", True),
    "--verbose": ("verbose", True),
    "-q": ("quiet", True),
    "--quiet": ("quiet", True),
}
_VALUES = {
    "-p": "platform",
    "--platform": "platform",
    "--host": "host",
    "-o": "output",
    "--output": "output",
    "--config": "config",
    "--tunnel": "tunnel",
    "--timeout": "timeout",
    "--nodes": "nodes",
}
_OUTPUTS = ("text", "json", "yaml", "table")  # vp.output.FORMATS, checked by the tests


@dataclass
class Globals:
    """The global options, parsed by typer (vp.cli) or by `parse` below."""

    platform: str | None = None
    host: str | None = None
    no_sync: bool = False
    sync_only: bool = False
    no_download: bool = False
    docker: bool | None = None
    detach: bool = False
    output: str = "text"
    verbose: bool = False
    quiet: bool = False
    config: Path | None = None
    tunnel: list[str] = field(default_factory=list)
    yes: bool = False
    recover: bool = False
    over_budget: bool = False
    timeout: str | None = None
    nodes: int | None = None
    all_logs: bool = False

    @property
    def ui(self) -> UI:
        return UI(quiet=self.quiet, verbose=self.verbose, output=self.output)

    def load(self):
        from vp import config
        from vp.platforms import PROVIDERS, kind

        overrides: dict = {}
        if self.platform:
            overrides.setdefault("host", {})["platform"] = self.platform
        if self.host and self.platform in PROVIDERS and kind(self.platform) == "ssh":
            overrides.setdefault("ssh", {})["host"] = self.host
        if self.timeout is not None:
            from vp.clock import parse_duration

            parse_duration(self.timeout, "--timeout")
            overrides.setdefault("run", {})["timeout"] = self.timeout
        cfg = config.load(
            config_path=self.config,
            overrides=overrides,
            yes=self.yes,
            over_budget=self.over_budget,
        )
        if self.host and "ssh" not in overrides and kind(cfg.platform) == "ssh":
            # the platform came from a file: --host is still the user's own ssh host
            cfg = cfg.replace("ssh", host=self.host)
        from vp.guard import sweep_stopped

        sweep_stopped(cfg, self.ui)  # "the next vp call on that project"
        return cfg


def run_command(g: Globals, argv: list[str]) -> int:
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

    name = (word.split() or [""])[0]
    if not name.replace("-", "_").isidentifier() or shutil.which(name):
        return None
    visible = sorted({"run"} | {n for n, e in COMMANDS.items() if not e.hidden})
    close = difflib.get_close_matches(name, visible, n=1, cutoff=0.75)
    return close[0] if close and close[0] != name else None


def parse(argv: list[str]) -> tuple[Globals, list[str]] | None:
    """(global options, command argv) when `argv` is a plain remote command, else None."""
    g = Globals()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _FLAGS:
            name, value = _FLAGS[arg]
            setattr(g, name, value)
            i += 1
            continue
        if "=" in arg and arg.startswith("--"):
            arg, value = arg.split("=", 1)
            if arg not in _VALUES or not value:
                return None
            rest = 1
        elif arg in _VALUES:
            if i + 1 >= len(argv):
                return None
            value, rest = argv[i + 1], 2
        else:
            break
        name = _VALUES[arg]
        if name == "tunnel":
            g.tunnel.append(value)
        elif name == "nodes":
            if not value.isdigit():
                return None  # typer names the bad value
            g.nodes = int(value)
        elif name == "config":
            g.config = Path(value)
        else:
            setattr(g, name, value)
        i += rest
    command = argv[i:]
    if not command or command[0].startswith("-") or command[0] in SUBCOMMANDS:
        return None
    if g.output not in _OUTPUTS:
        return None  # the typer app says which values are allowed
    return g, command


def try_run(argv: list[str]) -> int | None:
    """Run `argv` on the fast path and return the exit code, or None to use the full CLI."""
    parsed = parse(argv)
    if parsed is None:
        return None
    g, command = parsed
    from vp.errors import EXIT_INTERRUPTED, VpError

    ui = g.ui
    try:
        code = run_command(g, command)
    except VpError as exc:
        ui.error(exc.message, hint=exc.hint)
        code = exc.exit_code
    except KeyboardInterrupt:
        ui.error("interrupted")
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        code = 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence, as in vp.cli.main
        if os.environ.get("VP_DEBUG"):
            raise
        ui.error(
            f"internal error: {type(exc).__name__}: {exc}",
            hint="rerun with VP_DEBUG=1 for a traceback, and please report it",
        )
        code = 1
    return code


def main() -> None:
    code = try_run(sys.argv[1:])
    if code is None:
        from vp.cli import main as cli_main

        cli_main()
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    sys.exit(code)
