"""The global options every subcommand sees (`-p`, `--host`, `-o`, ...), parsed once by the
root command in `vp.cli` and read by each command module through `globals_of(ctx)`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import typer

from vp.platforms import PROVIDERS, kind
from vp.ui import UI


@dataclass
class Globals:
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
        from vp.guard import sweep_stopped

        sweep_stopped(cfg, self.ui)  # "the next vp call on that project"
        return cfg


def globals_of(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Globals) else Globals()


def command_app() -> typer.Typer:
    """The `app` a command module defines its commands on: plain help like the root's (no
    rich markup: importing rich's help renderer costs half a second)."""
    return typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False)
