"""`[sync] checkpoint_dir`: a run's checkpoints come home while it runs, so a resumed attempt
on a new host starts from the last one.

A background thread asks the host, at most every `[sync] checkpoint_interval`, what is in the
folder, and fetches what differs from the local copy through the same download as sync down
(vp/sync/transfer.py: staging, placement that never writes through a link nor clobbers a
local edit, control files protected). The next attempt's upload carries the folder back up
with the rest of the workspace.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from vp.errors import ConfigError, VpError
from vp.sync.transfer import download, parse_changes, plan_download
from vp.ui import UI

if TYPE_CHECKING:
    from vp.run import Workspace


def check_dir(value: str, where: str) -> None:
    """A folder inside the project: relative, no `..`, no control characters."""
    parts = value.strip("/").split("/")
    if (
        value.startswith("/")
        or ".." in parts
        or not value.strip("/")
        or any(ord(c) < 32 for c in value)
    ):
        raise ConfigError(
            f"{where} {value!r} must be a folder inside the project",
            hint='a relative path such as "checkpoints/"',
        )


def puller(ws: Workspace, ui: UI) -> contextlib.AbstractContextManager:
    """While the context is open, pull `[sync] checkpoint_dir` down whenever it changed."""
    folder = ws.cfg.sync.checkpoint_dir
    if not folder:
        return contextlib.nullcontext()
    from vp.clock import parse_duration

    interval = parse_duration(
        ws.cfg.sync.checkpoint_interval or "60s", "[sync] checkpoint_interval"
    )
    rules = ws.rules()
    if rules.ignored(folder.strip("/"), is_dir=True):
        ui.warn(
            f"[sync] checkpoint_dir {folder} is ignored by the sync rules (.vpignore): "
            "it is not pulled down nor uploaded to a resumed run"
        )
        return contextlib.nullcontext()
    return _pulling(ws, ui, folder.strip("/"), interval)


@contextlib.contextmanager
def _pulling(ws: Workspace, ui: UI, folder: str, interval: float) -> Iterator[None]:
    # The manifest is written here, in the caller's thread. The thread works on this copy
    # only; its file tables are read (State is safe across threads) when a pull first needs
    # them, so a run that pulls nothing reads and writes none.
    manifest = ws.manifest()
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                pull(ws, ui, folder, manifest)
            except VpError as exc:  # the host may be going away: the follow decides
                ui.debug(f"checkpoints not pulled: {exc.message}")
            except Exception as exc:  # noqa: BLE001 - never take the run down with it
                ui.debug(f"checkpoints not pulled: {exc}")

    thread = threading.Thread(target=loop, name="vp-checkpoints", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)
        if manifest.loaded:  # its tables are read when a pull places a file, not before
            ws.save_manifest(manifest)


def pull(ws: Workspace, ui: UI, folder: str, manifest) -> int:
    """Fetch the files of `folder` on the host that differ from the local ones; how many."""
    t = ws.transport
    q = shlex.quote(folder)
    script = (
        f"cd {t.workdir_sh(ws.workdir)} 2>/dev/null && [ -d {q} ] && "
        f"find {q} -type f -printf '%y %s %T@ %p\\0' || true\n"
    )
    proc = t.run(script, timeout=60)
    changes = [c for c in parse_changes(proc.stdout) if c.path.startswith(folder + "/")]
    names, _ = plan_download(ws.root, changes, ws.rules(), manifest)
    if not names:
        return 0
    sizes = {c.path: c.size for c in changes}
    download(
        t,
        ws.root,
        ws.workdir,
        names,
        manifest,
        say=ui.debug,
        warn=ui.warn,
        total_bytes=sum(sizes.get(n, 0) for n in names),
        sizes=sizes,
        protected=ws.protected(),
    )
    ui.debug(f"checkpoints: fetched {len(names)} file(s) from {folder}/")
    return len(names)
