"""The global options every subcommand sees (`-p`, `--host`, `-o`, ...): `Globals` (defined
with the typer-free fast path, vp/fastpath.py), parsed by the root command in `vp.cli` and
read by each command module through `globals_of(ctx)`."""

from __future__ import annotations

import typer

from vp.options import Globals


def globals_of(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Globals) else Globals()


def command_app() -> typer.Typer:
    """The `app` a command module defines its commands on: plain help like the root's (no
    rich markup: importing rich's help renderer costs half a second)."""
    return typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False)
