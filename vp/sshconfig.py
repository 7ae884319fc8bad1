"""The user's `~/.ssh/config` alias for a project (`vp ssh-config`), and tidying what vp left
behind there and in its known_hosts (`vp cleanup`).

vp owns only the blocks between its markers; every other line of the user's file is kept
byte for byte. Settings come from `ssh -G` run with vp's own options, so the alias reaches
the host exactly the way vp does: same address, user, key, and the same pinned host key
(vp's known_hosts, with `StrictHostKeyChecking yes`).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vp.errors import VpError
from vp.platforms.base import Host
from vp.ssh import (
    SERVER_ALIVE_COUNT,
    SERVER_ALIVE_INTERVAL,
    SshTransport,
    forget_pin,
    known_hosts_file,
    pinned_names,
)

BEGIN = "# >>> vp {name} >>>"
END = "# <<< vp {name} <<<"
HOST_TAG = "# vp-host: "
_BEGIN_RE = re.compile(r"^# >>> vp (\S+) >>>$")


def alias_for(project: str) -> str:
    """`vp-PROJECT`, reduced to characters ssh_config patterns and tmux names accept."""
    return "vp-" + (re.sub(r"[^A-Za-z0-9_-]", "-", project).strip("-") or "project")


def user_config_path() -> Path:
    """`$HOME/.ssh/config` (following a symlink, so dotfile managers keep their link)."""
    path = Path.home() / ".ssh" / "config"
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def resolved_options(transport: SshTransport) -> dict[str, list[str]]:
    """What vp's ssh would use for this host: `ssh -G` with vp's options (keys lowercased)."""
    proc = subprocess.run(
        transport.ssh_argv("-G", "--", transport.target.host),
        capture_output=True,
        text=True,
        timeout=15,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["ssh -G failed"])[-1]
        raise VpError(f"cannot read the ssh settings for {transport.label}: {detail}")
    out: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key:
            out.setdefault(key.lower(), []).append(value)
    return out


def expand_home(path: str) -> str:
    """`~/x` as OpenSSH would read it in vp's model ($HOME, not the passwd home)."""
    if path == "~" or path.startswith("~/"):
        return str(Path.home()) + path[1:]
    return path


def identity_files(options: dict[str, list[str]]) -> list[str]:
    """The identity files ssh would offer, that exist."""
    files = [expand_home(p) for p in options.get("identityfile", [])]
    return [p for p in files if os.path.isfile(p)]


def _value(text: str) -> str:
    """Quote a value for ssh_config if it has spaces (ssh_config has no escapes)."""
    if re.search(r"\s", text) and not (text.startswith('"') and text.endswith('"')):
        return f'"{text}"'
    return text


def render_block(project: str, host: Host, options: dict[str, list[str]]) -> str:
    """The marked `Host vp-PROJECT` block for `host`, from `ssh -G` output."""

    def first(key: str) -> str | None:
        values = options.get(key)
        return values[0] if values else None

    lines = [
        BEGIN.format(name=project),
        f"# Written by `vp ssh-config` for {host.name} ({host.key}); "
        "`vp ssh-config --remove` deletes this block.",
        f"{HOST_TAG}{host.key}",
        f"Host {alias_for(project)}",
        f"    HostName {first('hostname') or host.ssh_host}",
        f"    Port {first('port') or host.ssh_port or 22}",
    ]
    user = first("user") or host.ssh_user
    if user:
        lines.append(f"    User {user}")
    keys = [host.key_path] if host.key_path else identity_files(options)
    for key in keys:
        lines.append(f"    IdentityFile {_value(key)}")
    if host.key_path or first("identitiesonly") == "yes":
        lines.append("    IdentitiesOnly yes")
    known = options.get("userknownhostsfile") or [str(known_hosts_file())]
    # -G prints the list space separated; each path was quoted by vp if it had spaces.
    lines.append("    UserKnownHostsFile " + " ".join(_value(k) for k in known))
    alias = first("hostkeyalias") or host.host_key_alias
    if alias and alias != "none":
        lines.append(f"    HostKeyAlias {alias}")
    lines += [
        "    StrictHostKeyChecking yes",
        f"    ServerAliveInterval {SERVER_ALIVE_INTERVAL}",
        f"    ServerAliveCountMax {SERVER_ALIVE_COUNT}",
    ]
    for key, name in (("proxyjump", "ProxyJump"), ("proxycommand", "ProxyCommand")):
        value = first(key)
        if value and value != "none":
            lines.append(f"    {name} {value}")
    # The block sits at the top of the file: hand the rest back to global scope, so
    # options the user wrote before any `Host` line keep applying to every host.
    lines += ["Host *", END.format(name=project)]
    return "\n".join(lines) + "\n"


@dataclass
class Block:
    project: str
    host_key: str | None
    start: int  # line index of the BEGIN marker
    end: int  # line index of the END marker (inclusive)


def find_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _BEGIN_RE.match(lines[i])
        if m:
            name = m.group(1)
            end_line = END.format(name=name)
            j = next((k for k in range(i + 1, len(lines)) if lines[k] == end_line), None)
            if j is not None:
                key = next(
                    (ln[len(HOST_TAG) :] for ln in lines[i:j] if ln.startswith(HOST_TAG)), None
                )
                blocks.append(Block(name, key, i, j))
                i = j + 1
                continue
        i += 1
    return blocks


def _without(text: str, blocks: list[Block]) -> str:
    lines = text.splitlines(keepends=True)
    drop: set[int] = set()
    for b in blocks:
        drop.update(range(b.start, b.end + 1))
        # the blank line vp put after its block goes with it
        if b.end + 1 < len(lines) and lines[b.end + 1].strip() == "":
            drop.add(b.end + 1)
    return "".join(line for i, line in enumerate(lines) if i not in drop)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _write(path: Path, text: str) -> None:
    """Atomic replace; a new file (and ~/.ssh) is private, an existing one keeps its mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
    fd, tmp = tempfile.mkstemp(prefix=".config.vp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_block(project: str, block: str, path: Path | None = None) -> Path:
    """Put `block` in the user's ssh config: in place of the project's old block, or first."""
    path = path or user_config_path()
    text = _read(path)
    mine = [b for b in find_blocks(text) if b.project == project]
    if mine:
        lines = text.splitlines(keepends=True)
        first = mine[0]
        rest = _without("".join(lines[first.end + 1 :]), _shift(mine[1:], first.end + 1))
        text = "".join(lines[: first.start]) + block + rest
    else:
        text = block + ("\n" + text if text else "")
    _write(path, text)
    return path


def _shift(blocks: list[Block], offset: int) -> list[Block]:
    return [Block(b.project, b.host_key, b.start - offset, b.end - offset) for b in blocks]


def remove_blocks(projects: set[str], path: Path | None = None) -> list[str]:
    """Remove the blocks of `projects`; return the projects whose block was there."""
    path = path or user_config_path()
    text = _read(path)
    gone = [b for b in find_blocks(text) if b.project in projects]
    if gone:
        _write(path, _without(text, gone))
    return [b.project for b in gone]


def prune_known_hosts(live_aliases: set[str], dead_aliases: set[str] = frozenset()) -> list[str]:
    """Drop vp's pins of hosts vp no longer knows: every readable `vp-PLATFORM-ID` alias not
    in `live_aliases`, and `dead_aliases` (found even in a hashed file). Returns those removed."""
    stale = {n for n in pinned_names() if n.startswith("vp-") and n not in live_aliases}
    stale |= dead_aliases - live_aliases
    return sorted(alias for alias in stale if forget_pin(alias))


def remove_blocks_of_host(host_key: str, path: Path | None = None) -> list[str]:
    """Remove every block written for the host `host_key` (it was destroyed); return their
    projects."""
    path = path or user_config_path()
    text = _read(path)
    gone = [b for b in find_blocks(text) if b.host_key == host_key]
    if gone:
        _write(path, _without(text, gone))
    return [b.project for b in gone]
