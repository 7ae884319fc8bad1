"""`vp cleanup`: forget what is gone (ssh-config aliases, pinned host keys), find instances
tagged for vp that this machine does not know, and the hosts a failed create left recorded as
orphans (its destroy failed or was interrupted: vp's state labels them `orphan`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from vp.errors import VpError
from vp.state import State
from vp.ui import UI


@dataclass
class CleanupReport:
    ssh_config: list[str] = field(default_factory=list)
    known_hosts: list[str] = field(default_factory=list)
    orphans: list[dict] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # platforms that could not be listed

    def to_dict(self) -> dict:
        return {
            "ssh_config_removed": self.ssh_config,
            "known_hosts_removed": self.known_hosts,
            "orphans": self.orphans,
            "destroyed": self.destroyed,
            "unchecked_platforms": self.unchecked,
        }


def cleanup(cfg, state: State, ui: UI, *, destroy_orphans: bool) -> CleanupReport:
    """Drop ssh-config blocks and known_hosts pins of hosts that are gone; find (and with
    `destroy_orphans`, destroy) hosts labelled for vp that this machine's state doesn't know."""
    from vp import sshconfig
    from vp.offers import platform_for
    from vp.platforms import clouds, declaration
    from vp.platforms.cloud import Ownership

    report = CleanupReport()
    known = {h.key: h for h in state.hosts()}
    from vp.orphans import configured_clouds

    # Every provider with credentials here, so a new laptop finds what vp made elsewhere.
    platforms = {h.platform for h in known.values()} | {cfg.platform} | set(configured_clouds(cfg))
    gone: set[str] = set()
    for name in sorted(p for p in platforms if p in clouds()):
        try:
            platform = platform_for(cfg, name)
            listed = platform.list(None)
        except Exception as exc:  # noqa: BLE001 - one unreachable provider must not stop the rest
            ui.warn(f"could not list hosts on {name} ({exc}); left its entries alone")
            report.unchecked.append(name)
            continue
        keys = {h.key for h in listed}
        gone |= {k for k, h in known.items() if h.platform == name and k not in keys}
        now = {h.key: h for h in listed}
        for k, h in known.items():
            if h.platform == name and "orphan" in h.labels:
                seen = now.get(k)
                if seen is not None:
                    h = replace(h, status=seen.status, gpu=seen.gpu or h.gpu)
                if _recorded_orphan(
                    platform, state, ui, report, h, gone=k in gone, destroy=destroy_orphans
                ):
                    gone.add(k)
        if declaration(name).ownership is not Ownership.LABEL:
            continue  # the account's hosts are not marked as vp's: none can be called orphaned
        for h in listed:
            if h.key in known:
                continue
            report.orphans.append(
                {"platform": name, "id": h.id, "name": h.name, "status": h.status, "gpu": h.gpu}
            )
            if destroy_orphans:
                try:
                    platform.destroy(h.id)
                    report.destroyed.append(h.key)
                    ui.info(f"destroyed orphaned {h.name} ({h.id}) on {name}")
                except VpError as exc:
                    ui.warn(f"could not destroy {h.id} on {name}: {exc}")
    blocks = sshconfig.find_blocks(_read_text(sshconfig.user_config_path()))
    stale = {
        b.project for b in blocks if b.host_key and (b.host_key not in known or b.host_key in gone)
    }
    report.ssh_config = [f"vp-{p}" for p in sshconfig.remove_blocks(stale)] if stale else []
    live = {
        h.host_key_alias or f"vp-{h.platform}-{h.id}" for k, h in known.items() if k not in gone
    }
    dead = {h.host_key_alias or f"vp-{h.platform}-{h.id}" for k, h in known.items() if k in gone}
    report.known_hosts = sshconfig.prune_known_hosts(live, dead)
    return report


def _recorded_orphan(
    platform, state: State, ui: UI, report: CleanupReport, host, *, gone: bool, destroy: bool
) -> bool:
    """A host vp made whose create failed and whose destroy failed too: vp's own, so it is
    listed, and destroyed with `destroy` (`--yes`); once gone, its record and key go."""
    from vp.platforms.common import discard_key

    if not gone:
        report.orphans.append(
            {
                "platform": host.platform,
                "id": host.id,
                "name": host.name,
                "status": host.status,
                "gpu": host.gpu,
                "why": host.labels["orphan"],
            }
        )
        if not destroy:
            return False
        try:
            platform.destroy(host.id)
        except VpError as exc:
            ui.warn(f"could not destroy {host.id} on {host.platform}: {exc}")
            return False
        report.destroyed.append(host.key)
        ui.info(f"destroyed {host.name} ({host.id}) on {host.platform}, left by a failed create")
    state.forget_host(host.key)
    if host.key_path:
        discard_key(Path(host.key_path))
    return True


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
