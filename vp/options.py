"""The global options (`-p`, `-o`, `--host`, `-v`, ...): one table, read by both parsers.

`parse` below reads a plain `vp [GLOBAL...] CMD ...` with it on the fast path (no typer);
`vp.cli` builds the root command's typer options from the same rows, and knows from them
which options take a value and which may also follow a subcommand (`vp runs -o json`).
Adding a global option is one row here (plus the code that reads its `Globals` field).
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

from vp.ui import UI

OUTPUTS = ("text", "json", "yaml", "table")  # vp.output.FORMATS, checked by the tests


@dataclass(frozen=True)
class Option:
    dest: str  # the `Globals` field
    flags: tuple[str, ...]
    kind: str  # flag | value | int | path | list (a repeatable value)
    help: str  # "{platforms}" is filled in by vp.cli
    default: object = None
    off: tuple[str, ...] = ()  # a flag's negative names: --no-docker sets False
    metavar: str | None = None
    after: bool = False  # also accepted after a subcommand (issue #12: `vp offers -p vast`)

    @property
    def takes_value(self) -> bool:
        return self.kind != "flag"


# The order is the order of `vp --help`.
OPTIONS: tuple[Option, ...] = (
    Option("platform", ("-p", "--platform"), "value", "{platforms}", after=True),
    Option(
        "host", ("--host",), "value", "Host name or id (ssh: alias or user@host:port)", after=True
    ),
    Option("no_sync", ("--no-sync",), "flag", "Skip uploading and downloading", False),
    Option("sync_only", ("--sync-only",), "flag", "Upload the workspace; run nothing", False),
    Option("no_download", ("--no-download",), "flag", "Don't fetch results", False),
    Option("docker", ("--docker",), "flag", "Run inside the project image", off=("--no-docker",)),
    Option("detach", ("--detach",), "flag", "Start the run and print its id", False),
    Option("output", ("-o", "--output"), "value", " | ".join(OUTPUTS), "text", after=True),
    Option("verbose", ("-v", "--verbose"), "flag", "Say more", False, after=True),
    Option("quiet", ("-q", "--quiet"), "flag", "Say only warnings and errors", False, after=True),
    Option("config", ("--config",), "path", "Project config file to use", after=True),
    Option(
        "tunnel",
        ("--tunnel",),
        "list",
        "Forward a host port while the run lasts: REMOTE[:LOCAL], repeatable "
        "(Jupyter 8888, TensorBoard 6006)",
        metavar="REMOTE[:LOCAL]",
    ),
    Option(
        "yes",
        ("--yes",),
        "flag",
        "Don't ask: upload a big folder with no vp.toml and no .git, create a host "
        "with no max_price",
        False,
    ),
    Option(
        "over_budget",
        ("--over-budget",),
        "flag",
        "Go past the [budget] caps this once",
        False,
        after=True,
    ),
    Option(
        "timeout",
        ("--timeout",),
        "value",
        "End the run after 90s, 30m, 2h, 1d (exit 124)",
        metavar="DURATION",
    ),
    Option(
        "nodes",
        ("--nodes",),
        "int",
        "Run on N hosts at once for torchrun / Ray (rank, addresses in the environment)",
        metavar="N",
    ),
    Option(
        "all_logs",
        ("--all-logs",),
        "flag",
        "With --nodes: show every node's output, prefixed [nodeR]",
        False,
    ),
    Option(
        "recover",
        ("--recover",),
        "flag",
        "If the provider preempts or destroys the host, run again on a new one "
        "([run] recover, max_attempts)",
        False,
    ),
)

# name -> (option, the value a flag name sets)
BY_NAME: dict[str, tuple[Option, object]] = {
    **{n: (o, True) for o in OPTIONS for n in o.flags},
    **{n: (o, False) for o in OPTIONS for n in o.off},
}
VALUE_NAMES = frozenset(n for n, (o, _) in BY_NAME.items() if o.takes_value)
FLAG_NAMES = frozenset(n for n, (o, _) in BY_NAME.items() if not o.takes_value)


class _Loading:
    """What `Globals` does besides holding the parsed values."""

    @property
    def ui(self) -> UI:
        return UI(quiet=self.quiet, verbose=self.verbose, output=self.output)

    def load(self):
        """The project's config with these options applied (and stopped hosts swept)."""
        from vp import config
        from vp.platforms import PROVIDERS, kind

        g = self  # fields from OPTIONS
        overrides: dict = {}
        if g.platform:
            overrides.setdefault("host", {})["platform"] = g.platform
        if g.host and g.platform in PROVIDERS and kind(g.platform) == "ssh":
            overrides.setdefault("ssh", {})["host"] = g.host
        if g.timeout is not None:
            from vp.clock import parse_duration

            parse_duration(g.timeout, "--timeout")
            overrides.setdefault("run", {})["timeout"] = g.timeout
        cfg = config.load(
            config_path=g.config,
            overrides=overrides,
            yes=g.yes,
            over_budget=g.over_budget,
        )
        if g.host and "ssh" not in overrides and kind(cfg.platform) == "ssh":
            # the platform came from a file: --host is still the user's own ssh host
            cfg = cfg.replace("ssh", host=g.host)
        if cfg.host.destroy_after_stopped:  # else there is nothing to sweep: no vp.guard import
            from vp.guard import sweep_stopped

            sweep_stopped(cfg, self.ui)  # "the next vp call on that project"
        return cfg


_TYPES = {"flag": bool, "value": str, "int": int, "path": Path, "list": list}


def _field(o: Option):
    if o.kind == "list":
        return field(default_factory=list)
    return field(default=o.default)


# The parsed global options, one field per row of OPTIONS (by typer in vp.cli, or by `parse`).
Globals = make_dataclass(
    "Globals",
    [(o.dest, _TYPES[o.kind] | None, _field(o)) for o in OPTIONS],
    bases=(_Loading,),
)
Globals.__module__ = __name__


def parse(argv: list[str], subcommands: frozenset[str]):
    """(Globals, the command's argv) when `argv` is global options followed by a command that
    is not one of `subcommands`; None for anything else, which the typer app then handles
    (with its usage errors): `--help`, an unknown option, a malformed value."""
    values: dict[str, object] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if "=" in arg and arg.startswith("--"):
            arg, value = arg.split("=", 1)
            if arg not in VALUE_NAMES or not value:
                return None
            step = 1
        elif arg in FLAG_NAMES:
            option, value = BY_NAME[arg]
            values[option.dest] = value
            i += 1
            continue
        elif arg in VALUE_NAMES:
            if i + 1 >= len(argv):
                return None
            value, step = argv[i + 1], 2
        else:
            break
        option = BY_NAME[arg][0]
        if option.kind == "list":
            values.setdefault(option.dest, []).append(value)
        elif option.kind == "int":
            if not value.isdigit():
                return None  # typer names the bad value
            values[option.dest] = int(value)
        elif option.kind == "path":
            values[option.dest] = Path(value)
        else:
            values[option.dest] = value
        i += step
    command = argv[i:]
    if not command or command[0].startswith("-") or command[0] in subcommands:
        return None
    if values.get("output", "text") not in OUTPUTS:
        return None  # the typer app says which values are allowed
    return Globals(**values), command
