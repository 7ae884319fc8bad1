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

# Every subcommand name (tests/test_fastpath.py checks it against vp.cli.SUBCOMMANDS).
SUBCOMMANDS = frozenset(
    {"run", "init", "config", "runs", "logs", "attach", "kill"}
    | {"ls", "list-instances", "offers", "up", "create", "start", "stop", "down", "destroy"}
    | {"status", "gpu", "modify", "clone"}
    | {"ssh", "ssh-config", "cleanup", "tunnel", "upload", "download", "sync"}
)

_FLAGS = {
    "--no-sync": ("no_sync", True),
    "--sync-only": ("sync_only", True),
    "--no-download": ("no_download", True),
    "--docker": ("docker", True),
    "--no-docker": ("docker", False),
    "--detach": ("detach", True),
    "--yes": ("yes", True),
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
}
_OUTPUTS = ("text", "json", "yaml", "table")  # vp.output.FORMATS, checked by the tests


def parse(argv: list[str]) -> tuple[dict, list[str]] | None:
    """(global options, command argv) when `argv` is a plain remote command, else None."""
    opts: dict = {"tunnel": []}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _FLAGS:
            name, value = _FLAGS[arg]
            opts[name] = value
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
            opts["tunnel"].append(value)
        else:
            opts[name] = value
        i += rest
    command = argv[i:]
    if not command or command[0].startswith("-") or command[0] in SUBCOMMANDS:
        return None
    if opts.get("output", "text") not in _OUTPUTS:
        return None  # the typer app says which values are allowed
    return opts, command


def try_run(argv: list[str]) -> int | None:
    """Run `argv` on the fast path and return the exit code, or None to use the full CLI."""
    parsed = parse(argv)
    if parsed is None:
        return None
    opts, command = parsed
    from vp.errors import EXIT_INTERRUPTED, VpError
    from vp.ui import UI

    ui = UI(
        quiet=opts.get("quiet", False),
        verbose=opts.get("verbose", False),
        output=opts.get("output", "text"),
    )
    try:
        from pathlib import Path

        from vp import config
        from vp.run import RunOptions, execute

        platform, host = opts.get("platform"), opts.get("host")
        overrides: dict = {}
        if platform:
            overrides.setdefault("host", {})["platform"] = platform
        if host and (platform or "") == "ssh":
            overrides.setdefault("ssh", {})["host"] = host
        path = opts.get("config")
        cfg = config.load(config_path=Path(path) if path else None, overrides=overrides)
        run = RunOptions(
            argv=command,
            sync=not opts.get("no_sync", False),
            sync_only=opts.get("sync_only", False),
            download=False if opts.get("no_download") else None,
            detach=opts.get("detach", False),
            docker=opts.get("docker"),
            host_name=host if cfg.platform != "ssh" else None,
            tunnels=opts["tunnel"],
            yes=opts.get("yes", False),
        )
        code = execute(cfg, run, ui)
        if code == 127:  # not found on the host: perhaps a subcommand with a typo
            from vp.cli import near_subcommand

            suggestion = near_subcommand(command[0])
            if suggestion:
                ui.hint(f"did you mean vp {suggestion}?")
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
