"""Where vp keeps its files on this machine (XDG base directories)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def config_dir() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "vp"


def user_config_file() -> Path:
    return config_dir() / "config.toml"


def state_dir() -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state") / "vp"


def data_dir() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share") / "vp"


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) readable only by us: it holds keys, sockets and run logs."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def control_dir() -> Path:
    """A short directory for ssh ControlMaster sockets.

    Unix socket paths are limited to ~108 bytes and ssh appends a 17-byte suffix while creating
    one, so the sockets cannot live under a deep XDG path. The state dir's hash keeps two vp
    installs (or two test sessions) from sharing masters.
    """
    digest = hashlib.sha1(str(state_dir()).encode()).hexdigest()[:8]
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")
    path = base / f"vp-{os.getuid()}-{digest}"
    if len(str(path)) > 60:
        path = Path("/tmp") / f"vp-{os.getuid()}-{digest}"
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        st = path.lstat()
        if not path.is_dir() or path.is_symlink() or st.st_uid != os.getuid():
            from vp.errors import VpError

            raise VpError(
                f"{path} exists but is not a private directory of ours",
                hint="remove it; vp keeps ssh connection sockets there",
            ) from None
        os.chmod(path, 0o700)
    return path
