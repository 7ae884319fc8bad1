"""Subcommands beyond `run`: each a thin function over the domain modules.

Importing this package registers them on `vp.cli.app`.
"""

import contextlib

from vp.commands import hosts as _hosts  # noqa: F401

with contextlib.suppress(ImportError):  # TODO: plain import once access.py lands
    from vp.commands import access as _access  # noqa: F401
