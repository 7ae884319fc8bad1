"""`vp sync --status` (what an upload would move, without moving it) and `vp sync --watch`
(an incremental upload after every local change, until Ctrl-C).

Both read the same facts as the upload itself: the ignore rules' walk of the project and the
manifest of the last upload, so what `--status` shows is what `vp sync` would send.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vp.errors import VpError
from vp.sync.ignore import IgnoreRules
from vp.sync.transfer import Manifest

# Files whose change alters the rules themselves.
RULE_FILES = {".vpignore", ".gitignore"}


@dataclass
class Plan:
    """What an upload would do now, compared with the last upload's manifest."""

    upload: dict[str, int] = field(default_factory=dict)  # path -> size (new or changed)
    delete: list[str] = field(default_factory=list)  # uploaded before, deleted locally
    unchanged: int = 0
    # False: the host may hold changes vp did not fetch (or nothing was ever uploaded),
    # so the upload re-checks every file; rsync still sends only what differs.
    manifest_clean: bool = True

    @property
    def bytes(self) -> int:
        return sum(self.upload.values())

    @property
    def empty(self) -> bool:
        return not self.upload and not self.delete

    def to_dict(self) -> dict:
        return {
            "upload": {
                "files": len(self.upload),
                "bytes": self.bytes,
                "paths": sorted(self.upload),
            },
            "delete": {"files": len(self.delete), "paths": sorted(self.delete)},
            "unchanged": self.unchanged,
            "manifest_clean": self.manifest_clean,
        }


def plan_upload(root: Path, rules: IgnoreRules, manifest: Manifest) -> Plan:
    """Compare the walk with the manifest, as `vp.sync.transfer.upload` does (no transfer)."""
    local = rules.walk(root)
    plan = Plan(manifest_clean=manifest.clean and bool(manifest.files))
    for path, entry in local.items():
        if manifest.files.get(path) == entry.as_list():
            plan.unchanged += 1
        else:
            plan.upload[path] = entry.size
    plan.delete = manifest.to_delete(root, {p: e.as_list() for p, e in local.items()})
    return plan


def change_filter(root: Path, rules: Callable[[], IgnoreRules]) -> Callable[[object, str], bool]:
    """A watchfiles filter: events under ignored paths are dropped; rule-file edits pass."""
    root_s = os.path.realpath(root)

    def keep(_change: object, path: str) -> bool:
        rel = os.path.relpath(os.path.realpath(path), root_s)
        if rel == "." or rel.startswith(".." + os.sep) or rel == "..":
            return False
        rel = rel.replace(os.sep, "/")
        if rel in RULE_FILES:
            return True
        return not rules().ignored(rel, is_dir=os.path.isdir(path))

    return keep


def watch(
    root: Path,
    rules: Callable[[], IgnoreRules],
    sync: Callable[[], None],
    *,
    ready: Callable[[], None] = lambda: None,
    warn: Callable[[str], None] = lambda _m: None,
    debounce_ms: int = 300,
) -> None:
    """Call `sync()` after every batch of relevant local changes, until KeyboardInterrupt.

    `ready()` is called once the watcher is in place, after one catch-up `sync()` for
    anything that changed between the caller's first upload and the watcher starting.
    A failing sync (host unreachable) is reported and retried on the next change.
    """
    import watchfiles

    current = {"rules": rules()}

    def get_rules() -> IgnoreRules:
        return current["rules"]

    def attempt() -> None:
        try:
            sync()
        except VpError as exc:
            warn(f"sync failed: {exc} (will retry on the next change)")

    started = False
    for changes in watchfiles.watch(
        root,
        watch_filter=change_filter(root, get_rules),
        debounce=debounce_ms,
        step=50,
        rust_timeout=500,
        yield_on_timeout=True,
        raise_interrupt=True,
    ):
        if not started:
            started = True
            attempt()
            ready()
            continue
        if not changes:
            continue
        if any(os.path.basename(p) in RULE_FILES for _c, p in changes):
            current["rules"] = rules()
        attempt()
