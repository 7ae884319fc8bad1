"""The walk, remembered: a warm `vp CMD` in a 100k-file project must not list and match every
directory again, nor parse and compare the whole manifest, to prove nothing changed.

The cache records, per walked directory, its (mtime, inode, device), which of its names were
synced files (with each one's size, mtime, ctime and kind) and which subdirectories were
walked. A directory whose stat is unchanged has the same names bound to the same inodes
(creating, deleting or renaming an entry moves its mtime), so its listing and ignore
decisions are reused; each of its files is still lstat'ed (relative to the directory's fd)
and compared with the recorded numbers, so an in-place edit is seen: whatever it does to
the size or mtime, the kernel moves the ctime, and nothing but the kernel sets it. The cache
is keyed by the exact ignore rules, so an edit of `.vpignore`, `.gitignore` or
`[sync] extra_ignore` invalidates it.

When nothing differs from the cache, the walk is `unchanged`, and the cache can vouch for
manifests: `stamps` names manifests (vp/sync/transfer.py `Manifest.stamp`, new on every save)
whose files were exactly this walk, clean and trusted, when they were recorded. A warm call
whose walk is unchanged and whose manifest's stamp is vouched for skips the upload without
reading the manifest's file table (13 MB of JSON at 100k files) or building the walk's.

Coarse clocks: a directory changed within one timestamp granule of the cache's own walk could
change again without its mtime moving, so anything whose mtime is not older than the walk
start minus a granule (`granule`) is listed again rather than trusted. A file's numbers are
only vouched for when they are older than the manifest's walk by a granule (the manifest's
`untrusted`), so a later change always moves its ctime past them.
"""

from __future__ import annotations

import marshal
import os
import stat
import threading
import time
from array import array
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vp.sync.ignore import Entry, IgnoreRules

VERSION = 3
MAX_STAMPS = 4  # manifests vouched for at once (one per host/workdir the project syncs to)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def granule(mtime_ns: int) -> int:
    """How far apart two writes may be and still get the same mtime. A whole-second mtime
    says a coarse filesystem (FAT: 2 s, HFS+/ext3: 1 s) or an archive's stamp: 2 s. Else the
    kernel's clock tick, at most 10 ms; twice that to be safe."""
    return 2_000_000_000 if mtime_ns % 1_000_000_000 == 0 else 20_000_000


def recent(mtime_ns: int, since_ns: int) -> bool:
    """Could a change right after `since_ns` have left `mtime_ns` where it is?"""
    return mtime_ns >= since_ns - granule(mtime_ns)


class Walk:
    """One walk of a project, with what the cache knew. `dirs` maps each walked directory
    to its record (see `IgnoreRules.list_dir`); the file entries are built only if asked."""

    def __init__(
        self,
        path: Path | None,
        key: str,
        when: int,
        dirs: dict,
        *,
        unchanged: bool,
        stamps: list[str] | None = None,
        cache_when: int = 0,
    ):
        self.path, self.key, self.when, self.dirs = path, key, when, dirs
        self.unchanged = unchanged
        self.stamps = list(stamps or []) if unchanged else []
        self._cache_when = cache_when if unchanged else when
        self._dirty = not unchanged
        self._lists: dict[str, list] | None = None
        # [watcher instance, generation, digest of `dirs`]: the project watcher's token that
        # saw nothing change since this walk started (vp/sync/watchclient.py)
        self.watch: list | None = None

    def vouches(self, stamp: str) -> bool:
        """Does the cache say the manifest `stamp` holds exactly this walk (clean, trusted)?"""
        return self.unchanged and bool(stamp) and stamp in self.stamps

    def lists(self) -> dict[str, list]:
        """path -> [size, mtime_ns, is_link, ctime_ns], as `Entry.as_list` (the manifest's
        form)."""
        if self._lists is None:
            out: dict[str, list] = {}
            for rel_dir, record in self.dirs.items():
                prefix = f"{rel_dir}/" if rel_dir else ""
                names, nums = _unpack(record)
                for i, name in enumerate(names):
                    size, mtime, ctime, link = nums[4 * i : 4 * i + 4]
                    out[prefix + name] = [size, mtime, link, ctime]
            self._lists = out
        return self._lists

    def entries(self) -> dict[str, Entry]:
        from vp.sync.ignore import Entry

        return {p: Entry(e[0], e[1], bool(e[2]), e[3]) for p, e in self.lists().items()}

    def vouch(self, stamp: str) -> None:
        """Record that the manifest `stamp` holds exactly this walk; saved by `save`."""
        self.stamps = [stamp, *(s for s in self.stamps if s != stamp)][:MAX_STAMPS]
        self._dirty = True

    def save(self) -> None:
        """Write the cache if this walk or its stamps differ from it (once)."""
        if not self._dirty or self.path is None:
            return
        self._dirty = False
        _save(self.path, self.key, self._cache_when, self.dirs, self.stamps, self.watch)


def _load(path: Path, key: str) -> tuple[int, dict, list, list | None] | None:
    try:
        with open(path, "rb") as fh:
            data = marshal.load(fh)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("v") != VERSION or data.get("key") != key:
        return None
    dirs, when, stamps = data.get("dirs"), data.get("t"), data.get("stamps")
    if not isinstance(dirs, dict) or not isinstance(when, int) or not isinstance(stamps, list):
        return None
    watch = data.get("watch")
    if not (isinstance(watch, list) and len(watch) == 3):
        watch = None
    return when, dirs, stamps, watch


def _save(
    path: Path, key: str, when: int, dirs: dict, stamps: list[str], watch: list | None = None
) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(tmp, "wb") as fh:
            data = {"v": VERSION, "key": key, "t": when, "dirs": dirs, "stamps": stamps}
            if watch is not None:
                data["watch"] = watch
            marshal.dump(data, fh)
        os.replace(tmp, path)
    except OSError:  # a cache that cannot be written is only a slower next call
        try:
            os.unlink(tmp)
        except OSError:
            pass


def compact(record: tuple) -> tuple:
    """A directory's record as `IgnoreRules.list_dir` gives it, in the cache's form: the file
    names joined by NUL (no name holds one) and their numbers as one int64 array, so the
    cache of a 100k-file project loads as a few thousand strings, not 100k tuples."""
    mtime, ino, dev, files, subdirs, stats = record
    nums = array("q", [n for st in stats for n in st])
    return (mtime, ino, dev, "\0".join(files), list(subdirs), nums.tobytes())


def _unpack(record: tuple) -> tuple[list[str], array]:
    """(file names, [size, mtime_ns, ctime_ns, is_link] * n) of a compact record."""
    nums = array("q")
    nums.frombytes(record[5])
    return (record[3].split("\0") if record[3] else []), nums


def _same_files(fd: int, record: tuple) -> bool:
    """Are the files of `record` (in the directory `fd`) exactly as it says?"""
    names, nums = _unpack(record)
    if len(nums) != 4 * len(names):
        return False
    lstat = os.lstat
    try:
        for name, size, mtime, ctime in zip(names, nums[0::4], nums[1::4], nums[2::4], strict=True):
            st = lstat(name, dir_fd=fd)
            if st.st_ctime_ns != ctime or st.st_mtime_ns != mtime or st.st_size != size:
                return False
    except OSError:
        return False
    return True


def _restat(fd: int, record: tuple) -> tuple | None:
    """`record` with fresh numbers, or None when a name is gone or no longer a file or
    link."""
    names, _ = _unpack(record)
    nums = array("q")
    try:
        for name in names:
            st = os.lstat(name, dir_fd=fd)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                return None
            link = int(stat.S_ISLNK(st.st_mode))
            nums.extend((st.st_size, st.st_mtime_ns, st.st_ctime_ns, link))
    except OSError:
        return None
    return (*record[:5], nums.tobytes())


def _cold(rules: IgnoreRules, root: Path, cache: Path | None, key: str, start: int) -> Walk:
    dirs: dict = {}
    rules.scan(root, None, dirs)
    return Walk(cache, key, start, {d: compact(r) for d, r in dirs.items()}, unchanged=False)


def walk(rules: IgnoreRules, root: Path, cache: Path | None) -> Walk:
    """`rules.walk(root)`, reusing the listing of every directory unchanged since the cache,
    and saying whether anything at all changed since (`Walk.unchanged`). In a big project,
    the project's watcher (vp/sync/watchclient.py) may say so without a `stat`."""
    start = time.time_ns()
    key = f"{os.path.abspath(root)}\0{rules.digest()}"
    loaded = _load(cache, key) if cache is not None else None
    if loaded is None:
        found = _cold(rules, root, cache, key, start)
        check = _watcher_for(root, found.dirs) if cache is not None else None
        if check is not None:
            check.tell(found.dirs)
        return found
    when, old, stamps, watch = loaded
    check = _watcher_for(root, old)
    if check is not None and check.unchanged_since(watch):
        found = Walk(cache, key, start, old, unchanged=True, stamps=stamps, cache_when=when)
        found.watch = watch
        return found
    try:
        if _all_unchanged(str(root), when, old):
            found = Walk(cache, key, start, old, unchanged=True, stamps=stamps, cache_when=when)
            found.watch = watch
        else:
            found = _walk_cached(rules, root, cache, key, start, when, old, stamps)
    except (ValueError, TypeError, IndexError, AttributeError, KeyError):  # not our cache
        found = _cold(rules, root, cache, key, start)
    if check is not None:
        token = check.token_for(found.dirs)
        if token is not None and token != found.watch:
            found.watch = token
            found._dirty = True
    return found


WATCH_MIN_FILES = 20_000  # synced files from which a project gets a watcher


def _watcher_for(root: Path, dirs: dict):
    """The watcher's side of this call (vp/sync/watchclient.py `Check`) when the project is
    big enough for one (`VP_WATCH_MIN_FILES` overrides the threshold) and may have one."""
    try:
        least = int(os.environ.get("VP_WATCH_MIN_FILES", WATCH_MIN_FILES))
    except ValueError:
        least = WATCH_MIN_FILES
    try:
        if sum(len(record[5]) for record in dirs.values()) // 32 < least:
            return None
    except (TypeError, IndexError, AttributeError):  # not our cache: the walk finds out
        return None
    from vp.sync import watchclient

    return watchclient.Check(root, dirs) if watchclient.enabled() else None


PARALLEL_FROM = 4000  # files: below this, threads cost more than they save
THREADS = 4


def _all_unchanged(root_s: str, when: int, old: dict) -> bool:
    """Is every cached directory, and every file in it, exactly as the cache says? Then the
    walk is the cache's (a directory whose stat holds has the same names, so the walk reaches
    exactly these). Checked from a few threads: `lstat` releases the GIL, and the kernel's
    part of it is most of a warm call in a big project. Any doubt (a change, a recent
    directory, a subdirectory the cache has no record of) says no: the walk then goes
    directory by directory and lists what changed."""
    if "" not in old:
        return False
    rels = list(old)
    files = sum(len(record[5]) for record in old.values()) // 32
    workers = max(1, min(THREADS, os.cpu_count() or 1)) if files >= PARALLEL_FROM else 1
    stop = threading.Event()

    def check(chunk: list[str]) -> None:
        try:
            for rel in chunk:
                if stop.is_set() or not _dir_unchanged(root_s, rel, old[rel], when, old):
                    stop.set()
                    return
        except Exception:  # noqa: BLE001 - a malformed record: the careful walk decides
            stop.set()

    threads = [
        threading.Thread(target=check, args=(rels[i::workers],), daemon=True)
        for i in range(1, workers)
    ]
    for thread in threads:
        thread.start()
    check(rels[0::workers])
    for thread in threads:
        thread.join()
    return not stop.is_set()


def _dir_unchanged(root_s: str, rel_dir: str, known: tuple, when: int, old: dict) -> bool:
    directory = os.path.join(root_s, rel_dir) if rel_dir else root_s
    try:
        fd = os.open(directory, _DIR_FLAGS if rel_dir else _DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        dst = os.fstat(fd)
        if not (
            stat.S_ISDIR(dst.st_mode)
            and known[0] == dst.st_mtime_ns
            and known[1] == dst.st_ino
            and known[2] == dst.st_dev
            and not recent(dst.st_mtime_ns, when)
        ):
            return False
        prefix = f"{rel_dir}/" if rel_dir else ""
        if any(prefix + name not in old for name in known[4]):
            return False  # a subdirectory that could not be read last time: look again
        return _same_files(fd, known)
    finally:
        os.close(fd)


def _walk_cached(
    rules: IgnoreRules,
    root: Path,
    cache: Path | None,
    key: str,
    start: int,
    when: int,
    old: dict,
    stamps: list,
) -> Walk:
    dirs = {}
    changed = False
    relisted = False
    stack = [""]
    root_s = str(root)
    root_dev: int | None = None
    S_ISDIR = stat.S_ISDIR
    while stack:
        rel_dir = stack.pop()
        directory = os.path.join(root_s, rel_dir) if rel_dir else root_s
        known = old.get(rel_dir)
        try:
            # The root may be reached through a link (a project under a linked home).
            fd = os.open(directory, _DIR_FLAGS if rel_dir else _DIR_FLAGS & ~os.O_NOFOLLOW)
        except OSError:
            changed = True
            continue
        try:
            dst = os.fstat(fd)
            reuse = (
                known is not None
                and S_ISDIR(dst.st_mode)
                and known[0] == dst.st_mtime_ns
                and known[1] == dst.st_ino
                and known[2] == dst.st_dev
                and not recent(dst.st_mtime_ns, when)
            )
            if reuse and not _same_files(fd, known):
                changed = True
                fresh = _restat(fd, known)
                if fresh is None:
                    reuse = False  # a name is gone or is a directory now: list it again
                else:
                    known = fresh
        finally:
            os.close(fd)
        prefix = f"{rel_dir}/" if rel_dir else ""
        if reuse:
            dirs[rel_dir] = known
            stack.extend(prefix + name for name in known[4])
            continue
        # New or changed: list it again (its subdirectories are checked on their own).
        if root_dev is None:
            root_dev = os.stat(root_s).st_dev
        listed = rules.list_dir(root_s, rel_dir, root_dev)
        if listed is not None:
            record = compact(listed)
            relisted = True
            # A directory listed again because its mtime is recent may hold exactly what
            # the cache says: then nothing changed.
            if known is None or record[3:] != known[3:]:
                changed = True
            dirs[rel_dir] = record
            stack.extend(prefix + name for name in record[4])
        elif known is not None:
            changed = True
    if changed or len(dirs) != len(old):
        return Walk(cache, key, start, dirs, unchanged=False)
    result = Walk(cache, key, start, dirs, unchanged=True, stamps=stamps, cache_when=when)
    if relisted:
        # A recent directory was listed again and held the same: remember it with this
        # walk's time, so the next call trusts it once it is a granule old.
        result._cache_when = start
        result._dirty = True
    return result


def cached_walk(rules: IgnoreRules, root: Path, cache: Path) -> dict[str, Entry]:
    """`rules.walk(root)` through the cache, which it updates."""
    found = walk(rules, root, cache)
    found.save()
    return found.entries()
