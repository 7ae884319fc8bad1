"""Per-host ssh key pairs that vp creates for the hosts it provisions."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vp import paths
from vp.errors import VpError


@dataclass
class KeyPair:
    private_path: Path
    public_key: str  # one line, "ssh-ed25519 AAAA... comment"


def keys_dir() -> Path:
    return paths.ensure_private_dir(paths.state_dir() / "keys")


def new_keypair(label: str) -> KeyPair:
    """Make a fresh ed25519 key pair for one host, private half 0600 in vp's state dir.

    Each host gets its own key so destroying one host (or leaking one image) never
    grants access to another.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:80] or "host"
    path = keys_dir() / safe
    n = 0
    while path.exists() or path.with_suffix(".pub").exists():
        n += 1
        path = keys_dir() / f"{safe}-{n}"
    proc = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"vp:{safe}", "-f", str(path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise VpError(f"ssh-keygen failed: {proc.stderr.strip()}", hint="is OpenSSH installed?")
    os.chmod(path, 0o600)
    return KeyPair(path, path.with_suffix(".pub").read_text().strip())
