"""Subcommands beyond `run`: each a thin function over the domain modules.

Importing this package registers them on `vp.cli.app`.
"""

from vp.commands import hosts as _hosts  # noqa: F401
