"""vp: prefix any command with `vp` to run it on a GPU host, as if it ran locally."""

__version__ = "0.1.0"
