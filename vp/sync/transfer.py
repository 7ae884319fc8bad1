"""Upload the workspace and bring results back, with rsync over the shared connection.

The file list is computed here, not by rsync's own filters, and fed with `--files-from=- --from0`
so names with spaces, quotes, unicode and newlines round-trip. A manifest of what was uploaded
(path -> size, mtime) decides three things: whether an upload can be skipped, which remote files
vp may delete (only its own uploads), and whether a downloaded file would clobber a local edit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vp.errors import ConnectionFailed, VpError
from vp.output import human_size
from vp.sync import tarpipe, walkcache
from vp.sync.ignore import Entry, IgnoreRules
from vp.sync.place import DirWalker, Unsafe, lstat_at, same_at, sanitize_staged
from vp.sync.rsync import files_from, run_rsync
from vp.sync.walkcache import recent
from vp.transport import Transport
from vp.ui import one_line

REMOTE_SUFFIX = ".vp-remote"

# (label, total bytes) -> a context manager whose value has `.callback(bytes_done)` or None.
ProgressFactory = Callable[[str, int], contextlib.AbstractContextManager]


def _no_progress(_label: str, _total: int) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext(None)


class Manifest:
    """What both sides agree on: files vp uploaded or downloaded, with local size and mtime.

    `uploaded` holds the entry each file had when vp last uploaded it. A file may be deleted
    on the host (because it was deleted here) only while its agreed entry is still that
    upload's: a result the run made and vp downloaded is never in it, and a file the host
    changed and vp brought back no longer matches it. Results are the host's to keep.

    The file tables of a big project are megabytes of JSON: a manifest read from the state
    database holds only its head (`clean`, `pending`, `t`, `stamp`) until `files` or
    `uploaded` is asked for. `stamp` is new on every save (`Workspace.save_manifest`), so it
    names one exact manifest: the walk cache vouches for stamps (vp/sync/walkcache.py).
    """

    def __init__(
        self,
        files: dict[str, list] | None = None,
        clean: bool = True,
        pending: list[list] | None = None,
        uploaded: dict[str, list] | None = None,
        t: int = 0,
        stamp: str = "",
        load: Callable[[], dict | None] | None = None,
    ):
        self._files = files if files is not None or load is not None else {}
        self._uploaded = uploaded if uploaded is not None or load is not None else {}
        # False when the host may differ from `files` (a run changed things vp did not fetch).
        self.clean = clean
        # Results a run made that a download could not fetch (local disk full), as
        # [kind, size, mtime, path]: the next download fetches them.
        self.pending: list[list] = pending if pending is not None else []
        # When (ns) the walk behind `files` began: a file whose last change is within one
        # timestamp granule of it could change again without its times moving (coarse
        # clocks), so it is not trusted to be on the host until a later upload says so.
        self.t = t
        self.stamp = stamp
        self._load = load

    @property
    def files(self) -> dict[str, list]:
        if self._files is None:
            self._fill()
        return self._files  # type: ignore[return-value]

    @files.setter
    def files(self, value: dict[str, list]) -> None:
        self._files = value

    @property
    def uploaded(self) -> dict[str, list]:
        if self._uploaded is None:
            self._fill()
        return self._uploaded  # type: ignore[return-value]

    @uploaded.setter
    def uploaded(self, value: dict[str, list]) -> None:
        self._uploaded = value

    @property
    def loaded(self) -> bool:
        """Have the file tables been read (or were they given)?"""
        return self._files is not None and self._uploaded is not None

    def load(self) -> Manifest:
        """Read the file tables now (and with them the newest head, should another vp have
        saved since): decisions that need the tables then see one consistent manifest."""
        if not self.loaded:
            self._fill()
        return self

    def _fill(self) -> None:
        load, self._load = self._load, None
        data = load() if load is not None else None
        full = Manifest.from_json(data)
        if not data or full.stamp != self.stamp:
            # Another vp saved (or removed) the manifest since the head was read: take the
            # whole newer one, never its tables under the older head.
            self.clean, self.pending, self.t, self.stamp = (
                full.clean,
                full.pending,
                full.t,
                full.stamp,
            )
        if self._files is None:
            self._files = full.files
        if self._uploaded is None:
            self._uploaded = full.uploaded

    def head(self) -> dict:
        """The part read on every call: no file table."""
        out: dict = {"clean": self.clean, "stamp": self.stamp}
        if self.pending:
            out["pending"] = self.pending
        if self.t:
            out["t"] = self.t
        return out

    def to_json(self) -> dict:
        out: dict = {"files": self.files, "uploaded": self.uploaded, **self.head()}
        if not self.stamp:
            del out["stamp"]
        return out

    def untrusted(self, entry: list) -> bool:
        """Might the file have changed since the upload without its entry changing?"""
        changed = max(entry[1], entry[3]) if len(entry) > 3 else entry[1]
        return recent(changed, self.t)

    def stale(self, path: str, entry: list) -> bool:
        """Must `path` (now `entry`) be sent for the host to hold it?"""
        return self.files.get(path) != entry or self.untrusted(entry)

    @classmethod
    def from_json(cls, data: dict | None) -> Manifest:
        if not data:
            return cls(clean=False)
        # A manifest from before `uploaded` existed cannot tell results from uploads: none
        # is deletable until it is uploaded again (a stale file beats a lost result).
        return cls(
            files=data.get("files") or {},
            uploaded=data.get("uploaded") or {},
            **_head_fields(data),
        )

    @classmethod
    def from_head(cls, head: dict, load: Callable[[], dict | None]) -> Manifest:
        """A manifest of which only the head is read; `load()` returns the whole one."""
        return cls(load=load, **_head_fields(head))

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

    def after_upload(self, current: dict[str, list], when: int = 0) -> Manifest:
        """The manifest once `current` (walked from `when`, ns) is on the host. A file is an
        upload if it changed here since vp last agreed on it (new, edited - an edited result
        becomes yours), or was an upload already; a result still as downloaded stays a
        result, even when re-sent. Only size, mtime and kind count here: a new ctime alone
        (chmod, a rename) does not make a result yours."""
        uploaded = {
            p: e
            for p, e in current.items()
            if not _same(self.files.get(p), e) or _same(self.uploaded.get(p), e)
        }
        return Manifest(files=current, clean=True, pending=self.pending, uploaded=uploaded, t=when)


def _head_fields(data: dict) -> dict:
    return {
        "clean": bool(data.get("clean", False)),
        "pending": [p for p in data.get("pending", []) if isinstance(p, list) and len(p) == 4],
        "t": int(data.get("t") or 0),
        "stamp": str(data.get("stamp") or ""),
    }


def new_stamp() -> str:
    """Names one saved manifest (vp/sync/walkcache.py vouches for stamps)."""
    return os.urandom(8).hex()


def _same(recorded: list | None, entry: list) -> bool:
    return recorded is not None and recorded[:3] == entry[:3]


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
    pending: list[str] = field(default_factory=list)  # not fetched (local disk full)


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
    walk_cache: Path | None = None,
    before_send: Callable[[], None] = lambda: None,
) -> tuple[UploadResult, Manifest]:
    """Send the workspace; remove remotely only files vp uploaded before and the user deleted.
    `confirm(files, bytes)` is called before a first upload and may refuse it by raising.
    `walk_cache` is where the walk is remembered between calls (vp/sync/walkcache.py).
    `before_send()` is called once something is to be sent, before asking or sending.

    A manifest returned after an upload carries a new `stamp`, which the walk cache already
    vouches for when the upload left nothing untrusted: save it under that stamp."""
    when = time.time_ns()
    receiver = None
    if previous.loaded and not previous.files and transport.take_extra_slot():
        # A first upload: the host's side opens now, its set-up overlapping the walk (it
        # waits, touching nothing, until told to go; an extra session slot keeps MaxSessions).
        receiver = tarpipe.Receiver(transport, workdir)
    walk = walkcache.walk(rules, root, walk_cache)
    try:
        if previous.clean and walk.vouches(previous.stamp):
            # Nothing changed here since a call that found this very manifest current: no
            # file table to read, no entries to build.
            return UploadResult(skipped=True), previous
        return _upload(
            transport,
            root,
            workdir,
            walk,
            previous,
            when,
            say,
            progress,
            confirm,
            before_send,
            receiver,
        )
    finally:
        walk.save()
        if receiver is not None:
            receiver.close()


def _upload(
    transport: Transport,
    root: Path,
    workdir: str,
    walk: walkcache.Walk,
    previous: Manifest,
    when: int,
    say: Callable[[str], None],
    progress: ProgressFactory | None,
    confirm: Callable[[int, int], None] | None,
    before_send: Callable[[], None],
    receiver: tarpipe.Receiver | None = None,
) -> tuple[UploadResult, Manifest]:
    previous.load()
    current = walk.lists()
    if previous.clean and current == previous.files and not _any_untrusted(previous, current):
        if previous.stamp:
            walk.vouch(previous.stamp)
        return UploadResult(skipped=True), previous
    deleted = previous.to_delete(root, current)
    if previous.clean:
        # The host holds exactly what the manifest says: send only what differs from it.
        send = sorted(p for p, entry in current.items() if previous.stale(p, entry))
    else:
        send = sorted(current)
    if previous.clean and not send and not deleted:
        # Only results were deleted here (the host keeps them): nothing to move.
        return UploadResult(skipped=False), _agreed(previous, current, when, walk)
    before_send()
    total = sum(current[p][0] for p in send)
    if confirm is not None and not previous.files:
        confirm(len(send), total)
    what = f"{len(send)} file{'s' if len(send) != 1 else ''}"
    if previous.clean and previous.files:
        what = f"{len(send)} changed file{'s' if len(send) != 1 else ''}"
    say(f"syncing {what} ({human_size(total)}) to {transport.label}:{workdir}")
    transport.ensure()
    if not previous.files and not deleted:
        # Nothing of ours is there yet: one tar stream, no file-list exchange (rsync's
        # --files-from mode costs ~1.35x a plain `rsync -a`; tar is at or below it).
        with (progress or _no_progress)("upload", total) as bar:
            sent = tarpipe.upload(
                transport,
                root,
                workdir,
                send,
                [],
                on_bytes=bar.callback if bar else None,
                receiver=receiver,
            )
        if sent:
            return (
                UploadResult(skipped=False, files=len(send), bytes=total),
                _agreed(previous, current, when, walk),
            )
    names = send + deleted
    argv = [
        *transport.rsync_argv(),
        "-a",
        "--files-from=-",
        "--from0",
        "--protect-args",
        "--delete-missing-args",
        "--no-inc-recursive",
        # With a clean manifest vp already chose these files as changed: rsync's own quick
        # check (size + mtime to the second) would skip a same-size edit made within a second
        # or one whose mtime was restored. Otherwise every file is listed and the quick check
        # decides, comparing mtimes to the nanosecond.
        "--ignore-times" if previous.clean else "--modify-window=-1",
    ]
    if transport.is_local:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    else:
        # Create the workdir in the same session as the transfer: no extra round trip.
        mk = f"mkdir -p {transport.workdir_sh(workdir)} && rsync"
        argv.append(f"--rsync-path={mk}")
    argv += [str(root) + "/", transport.remote_path(transport.rsync_workdir(workdir))]
    transport.ensure()

    def rsync() -> subprocess.CompletedProcess[bytes]:
        with (progress or _no_progress)("upload", total) as bar:
            return run_rsync(argv, files_from(names), bar.callback if bar else None)

    proc = transport.copy(
        rsync,
        lambda: tarpipe.upload(transport, root, workdir, send, deleted),
        on_fallback=lambda: say(
            f"rsync is not installed on {transport.label}: copying with tar over ssh"
        ),
    )
    if proc is not None and proc.returncode not in (0, 24):  # 24: a file vanished meanwhile
        raise rsync_error(proc, transport.label, "upload")
    return (
        UploadResult(skipped=False, files=len(send), bytes=total, deleted=len(deleted)),
        _agreed(previous, current, when, walk),
    )


def _agreed(previous: Manifest, current: dict, when: int, walk: walkcache.Walk) -> Manifest:
    """The manifest after this upload, with a new stamp the walk cache vouches for unless a
    file is too recent to trust (then the next call compares in full, and sends it)."""
    manifest = previous.after_upload(current, when)
    manifest.stamp = new_stamp()
    if not _any_untrusted(manifest, current):
        walk.vouch(manifest.stamp)
    return manifest


def _any_untrusted(previous: Manifest, current: dict[str, list]) -> bool:
    floor = previous.t - 2_000_000_000  # no granule is wider: most entries stop here
    return any(max(e[1], e[3]) >= floor and previous.untrusted(e) for e in current.values())


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
    root: Path,
    changes: list[RemoteChange],
    rules: IgnoreRules,
    manifest: Manifest,
    results: IgnoreRules | None = None,
) -> tuple[list[str], bool]:
    """Which changed remote files to fetch; and whether the host may still differ from us.

    A file already identical locally (same size and whole-second mtime; rsync preserves
    mtimes) is skipped, which filters out the files this very call just uploaded. With
    `results` (`[sync] results`), only paths those patterns match come back.
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
        if results is not None and not results.ignored(ch.path):
            if ch.path in manifest.files:
                dirs_changed = True  # a synced file changed on the host and stays there
            continue
        try:
            st = os.lstat(root / ch.path)
        except (FileNotFoundError, NotADirectoryError, OSError):
            wanted.append(ch.path)
            continue
        same = st.st_size == ch.size and int(st.st_mtime) == int(ch.mtime)
        if not same:
            wanted.append(ch.path)
    return wanted, dirs_changed


# rsync flags for anything fetched from a host: no owner, group, device, fifo or socket, no
# setuid/setgid/sticky bit, no link pointing out of the tree, holes kept as holes. The
# placement step checks all of this again in Python; these keep the staging dir clean too.
SAFE_FETCH = [
    "--no-owner",
    "--no-group",
    "--no-devices",
    "--no-specials",
    "--safe-links",
    "--sparse",
    "--chmod=ug-s,-t",
]


class DownloadIncomplete(VpError):
    """The local disk filled: what fit was placed; `result.pending` is fetched next time."""

    def __init__(self, message: str, hint: str, result: DownloadResult):
        super().__init__(message, hint=hint)
        self.result = result


def local_disk_full(label: str, root: Path, missing: int, missing_bytes: int) -> VpError:
    import shutil

    free = shutil.disk_usage(root).free
    return VpError(
        f"download from {label} stopped: this computer's disk is full ({root}: "
        f"{human_size(free)} free, {missing} file{'s' if missing != 1 else ''} "
        f"({human_size(missing_bytes)}) not fetched)",
        hint="free space on that disk; the next run (or `vp download PATH`) fetches the rest",
    )


def _fitting(root: Path, names: list[str], sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    """Split `names` into what fits on the local disk now (smallest first) and the rest."""
    import shutil

    free = shutil.disk_usage(root).free - (1 << 16)  # room for directories and staging
    if sum(sizes.get(n, 0) for n in names) <= free:
        return names, []
    fits: set[str] = set()
    for name in sorted(names, key=lambda n: sizes.get(n, 0)):
        size = sizes.get(name, 0) + 4096
        if size > free:
            break
        fits.add(name)
        free -= size
    return [n for n in names if n in fits], [n for n in names if n not in fits]


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
    sizes: dict[str, int] | None = None,
    links: frozenset[str] | set[str] = frozenset(),
    protected: frozenset[str] | set[str] = frozenset(),
) -> DownloadResult:
    """Fetch `names` into a staging dir, then move each into place, never clobbering a local
    edit: a file that changed locally since the upload stays, and the host's copy lands
    beside it as NAME.vp-remote. Nothing local is ever deleted; renames make each file
    appear whole or not at all (Ctrl-C included).

    The host is not trusted (vp/sync/place.py): nothing is written through a link, only
    regular files and contained links land, and the `protected` control files are never
    replaced (the host's copy is NAME.vp-remote). When the local disk is full, what was
    fetched is placed and DownloadIncomplete names the rest (`result.pending`)."""
    result = DownloadResult()
    if not names:
        return result
    sizes = sizes or {}
    names, result.pending = _fitting(root, names, sizes)
    disk_full = bool(result.pending)
    if names:
        say(
            f"fetching {len(names)} changed file{'s' if len(names) != 1 else ''} "
            f"from {transport.label}"
        )
        import shutil
        import tempfile

        staging = Path(tempfile.mkdtemp(prefix=".vp-dl-", dir=root))
        try:
            disk_full = (
                _fetch(transport, workdir, names, staging, progress, total_bytes) or disk_full
            )
            with DirWalker(root) as dest, DirWalker(staging) as src:
                for name in names:
                    try:
                        placed = _place(src, dest, name, manifest, result, warn, protected)
                    except Unsafe as exc:
                        warn(one_line(f"{name}: {exc}; skipped"))
                        continue
                    except OSError as exc:
                        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                            disk_full = True
                            result.pending.append(name)
                            continue
                        warn(f"{one_line(name)}: not placed ({exc.strerror}); skipped")
                        continue
                    if placed is None and disk_full:
                        result.pending.append(name)
                    elif placed is None and name in links:
                        warn(f"{one_line(name)}: a link pointing outside the project; skipped")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if disk_full:
        err = local_disk_full(
            transport.label, root, len(result.pending), sum(sizes.get(n, 0) for n in result.pending)
        )
        raise DownloadIncomplete(err.message, err.hint or "", result)
    return result


def _fetch(
    transport: Transport,
    workdir: str,
    names: list[str],
    staging: Path,
    progress: ProgressFactory | None,
    total_bytes: int,
) -> bool:
    """rsync (or tar) `names` into `staging`; True when the local disk filled on the way."""
    argv = [
        *transport.rsync_argv(),
        "-a",
        *SAFE_FETCH,
        "--files-from=-",
        "--from0",
        "--protect-args",
        "--ignore-missing-args",
        transport.remote_path(transport.rsync_workdir(workdir)),
        str(staging) + "/",
    ]
    transport.ensure()

    def rsync() -> subprocess.CompletedProcess[bytes]:
        with (progress or _no_progress)("download", total_bytes) as bar:
            return run_rsync(argv, files_from(names), bar.callback if bar else None)

    try:
        proc = transport.copy(rsync, lambda: tarpipe.download(transport, workdir, names, staging))
    except tarpipe.LocalDiskFull:
        return True
    if proc is None or proc.returncode in (0, 23, 24):
        return False
    if b"No space left on device" in proc.stderr or b"Disk quota exceeded" in proc.stderr:
        return True
    raise rsync_error(proc, transport.label, "download")


def _place(
    src: DirWalker,
    dest: DirWalker,
    name: str,
    manifest: Manifest,
    result: DownloadResult,
    warn: Callable[[str], None],
    protected: frozenset[str] | set[str] = frozenset(),
) -> bool | None:
    """Move one staged name into place; None when it is not in staging (not fetched)."""
    parts = name.split("/")
    if "." in parts or not _safe_relpath(name):
        raise Unsafe("not a plain relative path")
    base = parts[-1]
    try:
        src_fd = src.parent(parts[:-1], create=False)
    except Unsafe:
        return None  # rsync/tar put nothing there (a link in the way was refused)
    if lstat_at(src_fd, base) is None:
        return None
    sanitize_staged(src_fd, base, name)
    try:
        dest_fd = dest.parent(parts[:-1], create=True)
    except Unsafe as exc:
        raise Unsafe(f"not placed: {exc}") from None
    st = lstat_at(dest_fd, base)
    shown = one_line(name)
    if name in protected:
        if st is not None and same_at(src_fd, base, dest_fd, base):
            return True
        side = base + REMOTE_SUFFIX
        side_st = lstat_at(dest_fd, side)
        if side_st is not None and stat.S_ISDIR(side_st.st_mode):
            warn(f"{shown}: the host changed it; {shown}{REMOTE_SUFFIX} is a directory")
            return True
        os.replace(base, side, src_dir_fd=src_fd, dst_dir_fd=dest_fd)
        result.conflicts.append(name)
        warn(
            f"{shown} is vp's own control file: the host's version was not used; "
            f"it is {shown}{REMOTE_SUFFIX}"
        )
        return True
    if st is None:
        os.replace(base, base, src_dir_fd=src_fd, dst_dir_fd=dest_fd)
    else:
        recorded = manifest.files.get(name)
        unchanged = recorded is not None and [st.st_size, st.st_mtime_ns] == recorded[:2]
        if unchanged and not stat.S_ISDIR(st.st_mode):
            os.replace(base, base, src_dir_fd=src_fd, dst_dir_fd=dest_fd)
        elif same_at(src_fd, base, dest_fd, base):
            pass  # already here, e.g. fetched by another run of this project: no conflict
        else:
            side = base + REMOTE_SUFFIX
            side_st = lstat_at(dest_fd, side)
            if side_st is not None and stat.S_ISDIR(side_st.st_mode):
                warn(f"{shown}: changed here and on the host; {shown}{REMOTE_SUFFIX} is a folder")
                return True
            os.replace(base, side, src_dir_fd=src_fd, dst_dir_fd=dest_fd)
            result.conflicts.append(name)
            warn(
                f"{shown} changed locally during the run: kept yours, "
                f"the host's version is {shown}{REMOTE_SUFFIX}"
            )
            return True
    new = os.lstat(base, dir_fd=dest_fd)
    manifest.files[name] = Entry.of(new).as_list()
    result.fetched.append(name)
    return True
