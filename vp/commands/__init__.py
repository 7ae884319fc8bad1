"""Subcommands beyond `run`: each a thin function over the domain modules.

Importing this package registers them on `vp.cli.app`.
"""

from vp.commands import access as _access  # noqa: F401
from vp.commands import hosts as _hosts  # noqa: F401
from vp.commands import modify as _modify  # noqa: F401
from vp.commands import secret as _secret  # noqa: F401
from vp.commands import spend as _spend  # noqa: F401
from vp.commands import web as _web  # noqa: F401
