"""Upload the workspace and bring results back, with rsync over the shared connection.

The file list is computed here, not by rsync's own filters, and fed with `--files-from=- --from0`
so names with spaces, quotes, unicode and newlines round-trip. A manifest of what was uploaded
(path -> size, mtime) decides three things: whether an upload can be skipped, which remote files
vp may delete (only its own uploads), and whether a downloaded file would clobber a local edit.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vp.errors import ConnectionFailed, VpError
from vp.output import human_size
from vp.sync import tarpipe
from vp.sync.ignore import Entry, IgnoreRules
from vp.sync.rsync import files_from, run_rsync
from vp.transport import Transport

REMOTE_SUFFIX = ".vp-remote"

# (label, total bytes) -> a context manager whose value has `.callback(bytes_done)` or None.
ProgressFactory = Callable[[str, int], contextlib.AbstractContextManager]


def _no_progress(_label: str, _total: int) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext(None)


@dataclass
class Manifest:
    """What both sides agree on: files vp uploaded or downloaded, with local size and mtime.

    `uploaded` holds the entry each file had when vp last uploaded it. A file may be deleted
    on the host (because it was deleted here) only while its agreed entry is still that
    upload's: a result the run made and vp downloaded is never in it, and a file the host
    changed and vp brought back no longer matches it. Results are the host's to keep.
    """

    files: dict[str, list] = field(default_factory=dict)
    # False when the host may differ from `files` (a run changed things vp did not fetch).
    clean: bool = True
    uploaded: dict[str, list] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"files": self.files, "clean": self.clean, "uploaded": self.uploaded}

    @classmethod
    def from_json(cls, data: dict | None) -> Manifest:
        if not data:
            return cls(clean=False)
        # A manifest from before `uploaded` existed cannot tell results from uploads: none
        # is deletable until it is uploaded again (a stale file beats a lost result).
        return cls(
            files=data.get("files", {}),
            clean=bool(data.get("clean", False)),
            uploaded=data.get("uploaded") or {},
        )

    def deletable(self, path: str) -> bool:
        """May vp delete `path` on the host now that it is gone locally? Only its own upload."""
        entry = self.files.get(path)
        return entry is not None and self.uploaded.get(path) == entry

    def to_delete(self, root: Path, current: dict) -> list[str]:
        """Files vp uploaded that the user has since deleted locally."""
        return [
            p
            for p in self.files
            if p not in current and self.deletable(p) and not os.path.lexists(root / p)
        ]

    def after_upload(self, current: dict[str, list]) -> Manifest:
        """The manifest once `current` is on the host. A file is an upload if it changed
        here since vp last agreed on it (new, edited - an edited result becomes yours), or was
        an upload already; a result still as downloaded stays a result, even when re-sent."""
        uploaded = {
            p: e for p, e in current.items() if self.files.get(p) != e or self.uploaded.get(p) == e
        }
        return Manifest(files=current, clean=True, uploaded=uploaded)


@dataclass
class UploadResult:
    skipped: bool
    files: int = 0
    bytes: int = 0
    deleted: int = 0


@dataclass
class RemoteChange:
    kind: str  # "f" file, "l" symlink, "d" directory
    size: int
    mtime: float
    path: str


@dataclass
class DownloadResult:
    fetched: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def rsync_error(proc: subprocess.CompletedProcess[bytes], label: str, what: str) -> VpError:
    err = proc.stderr.decode(errors="replace").strip()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    detail = lines[0] if lines else f"rsync exited {proc.returncode}"
    if "No space left on device" in err:
        return VpError(
            f"{what} to {label} failed: the host's disk is full",
            hint="free space on the host, or raise [host] disk_gb",
        )
    if proc.returncode == 255 or "connection unexpectedly closed" in err:
        return ConnectionFailed(f"{what} to {label} failed: connection lost ({detail})")
    return VpError(f"{what} with {label} failed: {detail}")


def upload(
    transport: Transport,
    root: Path,
    workdir: str,
    rules: IgnoreRules,
    previous: Manifest,
    *,
    say: Callable[[str], None] = lambda _m: None,
    progress: ProgressFactory | None = None,
    confirm: Callable[[int, int], None] | None = None,
) -> tuple[UploadResult, Manifest]:
    """Send the workspace; remove remotely only files vp uploaded before and the user deleted.
    `confirm(files, bytes)` is called before a first upload and may refuse it by raising."""
    local = rules.walk(root)
    current = {path: entry.as_list() for path, entry in local.items()}
    if previous.clean and current == previous.files:
        return UploadResult(skipped=True), previous
    deleted = previous.to_delete(root, current)
    if previous.clean:
        # The host holds exactly what the manifest says: send only what differs from it.
        send = sorted(p for p, entry in current.items() if previous.files.get(p) != entry)
    else:
        send = sorted(current)
    if previous.clean and not send and not deleted:
        # Only results were deleted here (the host keeps them): nothing to move.
        return UploadResult(skipped=False), previous.after_upload(current)
    names = send + deleted
    total = sum(local[p].size for p in send)
    if confirm is not None and not previous.files:
        confirm(len(send), total)
    what = f"{len(send)} file{'s' if len(send) != 1 else ''}"
    if previous.clean and previous.files:
        what = f"{len(send)} changed file{'s' if len(send) != 1 else ''}"
    say(f"syncing {what} ({human_size(total)}) to {transport.label}:{workdir}")
    argv = [
        *transport.rsync_argv(),
        "-a",
        "--files-from=-",
        "--from0",
        "--protect-args",
        "--delete-missing-args",
        "--no-inc-recursive",
    ]
    if transport.is_local:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    else:
        # Create the workdir in the same session as the transfer: no extra round trip.
        mk = f"mkdir -p {transport.workdir_sh(workdir)} && rsync"
        argv.append(f"--rsync-path={mk}")
    argv += [str(root) + "/", transport.remote_path(transport.rsync_workdir(workdir))]
    transport.ensure()
    if not tarpipe.host_lacks_rsync(transport):
        payload = files_from(names)
        with (progress or _no_progress)("upload", total) as bar:
            proc = run_rsync(argv, payload, bar.callback if bar else None)
        if proc.returncode not in (0, 24):  # 24: a file vanished while we were copying it
            if not tarpipe.rsync_missing(proc):
                raise rsync_error(proc, transport.label, "upload")
            tarpipe.remember_no_rsync(transport)
            say(f"rsync is not installed on {transport.label}: copying with tar over ssh")
            tarpipe.upload(transport, root, workdir, send, deleted)
    else:
        tarpipe.upload(transport, root, workdir, send, deleted)
    return (
        UploadResult(skipped=False, files=len(send), bytes=total, deleted=len(deleted)),
        previous.after_upload(current),
    )


def parse_changes(blob: bytes) -> list[RemoteChange]:
    """Parse `find -printf '%y %s %T@ %P\\0'` records from the run wrapper."""
    out = []
    for record in blob.split(b"\0"):
        if not record:
            continue
        try:
            kind, size, mtime, path = record.split(b" ", 3)
            out.append(
                RemoteChange(
                    kind.decode(),
                    int(size),
                    float(mtime),
                    path.decode("utf-8", "surrogateescape"),
                )
            )
        except ValueError:
            continue
    return out


def _safe_relpath(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts and "" not in parts


def plan_download(
    root: Path, changes: list[RemoteChange], rules: IgnoreRules, manifest: Manifest
) -> tuple[list[str], bool]:
    """Which changed remote files to fetch; and whether the host may still differ from us.

    A file already identical locally (same size and whole-second mtime; rsync preserves
    mtimes) is skipped, which filters out the files this very call just uploaded.
    """
    wanted: list[str] = []
    dirs_changed = False
    for ch in changes:
        if ch.kind == "d" and ch.path == "":  # the workdir itself
            dirs_changed = True
            continue
        if not _safe_relpath(ch.path) or rules.ignored(ch.path, is_dir=ch.kind == "d"):
            continue
        if ch.kind == "d":
            dirs_changed = True  # something may have been deleted or renamed there
            continue
        if ch.kind not in ("f", "l"):
            continue
        try:
            st = os.lstat(root / ch.path)
        except (FileNotFoundError, NotADirectoryError):
            wanted.append(ch.path)
            continue
        same = st.st_size == ch.size and int(st.st_mtime) == int(ch.mtime)
        if not same:
            wanted.append(ch.path)
    return wanted, dirs_changed


def download(
    transport: Transport,
    root: Path,
    workdir: str,
    names: list[str],
    manifest: Manifest,
    *,
    say: Callable[[str], None] = lambda _m: None,
    warn: Callable[[str], None] = lambda _m: None,
    progress: ProgressFactory | None = None,
    total_bytes: int = 0,
) -> DownloadResult:
    """Fetch `names` into a staging dir, then move each into place, never clobbering a local
    edit: a file that changed locally since the upload stays, and the host's copy lands
    beside it as NAME.vp-remote. Nothing local is ever deleted; renames make each file
    appear whole or not at all (Ctrl-C included)."""
    result = DownloadResult()
    if not names:
        return result
    say(
        f"fetching {len(names)} changed file{'s' if len(names) != 1 else ''} from {transport.label}"
    )
    staging = Path(tempfile.mkdtemp(prefix=".vp-dl-", dir=root))
    try:
        argv = [
            *transport.rsync_argv(),
            "-a",
            "--files-from=-",
            "--from0",
            "--protect-args",
            "--ignore-missing-args",
            transport.remote_path(transport.rsync_workdir(workdir)),
            str(staging) + "/",
        ]
        transport.ensure()
        if tarpipe.host_lacks_rsync(transport):
            tarpipe.download(transport, workdir, names, staging)
        else:
            payload = files_from(names)
            with (progress or _no_progress)("download", total_bytes) as bar:
                proc = run_rsync(argv, payload, bar.callback if bar else None)
            if proc.returncode not in (0, 23, 24):
                if not tarpipe.rsync_missing(proc):
                    raise rsync_error(proc, transport.label, "download")
                tarpipe.remember_no_rsync(transport)
                tarpipe.download(transport, workdir, names, staging)
        for name in names:
            src = staging / name
            if not os.path.lexists(src):
                continue
            _place(src, root, name, manifest, result, warn)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _place(
    src: Path,
    root: Path,
    name: str,
    manifest: Manifest,
    result: DownloadResult,
    warn: Callable[[str], None],
) -> None:
    dest = root / name
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        warn(f"{name}: a parent is a file locally; kept the host's copy out")
        return
    if st is None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
    else:
        recorded = manifest.files.get(name)
        unchanged = recorded is not None and [st.st_size, st.st_mtime_ns] == recorded[:2]
        if unchanged:  # the manifest holds only files and links: safe to replace
            os.replace(src, dest)
        elif _same_content(src, dest):
            pass  # already here, e.g. fetched by another run of this project: no conflict
        else:
            side = root / (name + REMOTE_SUFFIX)
            if os.path.isdir(side) and not os.path.islink(side):
                warn(f"{name}: changed locally and on the host; {side.name} is a directory")
                return
            os.replace(src, side)
            result.conflicts.append(name)
            warn(
                f"{name} changed locally during the run: kept yours, "
                f"the host's version is {name}{REMOTE_SUFFIX}"
            )
            return
    new = os.lstat(dest)
    manifest.files[name] = Entry(new.st_size, new.st_mtime_ns, os.path.islink(dest)).as_list()
    result.fetched.append(name)


def _same_content(a: Path, b: Path) -> bool:
    """Two regular files with equal bytes, or two symlinks to the same target."""
    if os.path.islink(a) or os.path.islink(b):
        return os.path.islink(a) and os.path.islink(b) and os.readlink(a) == os.readlink(b)
    if not (os.path.isfile(a) and os.path.isfile(b)):
        return False
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    return filecmp.cmp(a, b, shallow=False)
