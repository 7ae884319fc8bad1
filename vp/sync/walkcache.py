"""The walk, remembered: a warm `vp CMD` in a 100k-file project must not list and match every
directory again to prove nothing changed.

The cache records, per walked directory, its (mtime, inode, device) and which of its names
were synced files and walked subdirectories. A directory whose stat is unchanged has the same
names bound to the same inodes (creating, deleting or renaming an entry moves its mtime), so
its listing and ignore decisions are reused; each of its files is still lstat'ed, so an
in-place edit is seen (size, mtime and ctime come fresh). The cache is keyed by the exact
ignore rules, so an edit of `.vpignore`, `.gitignore` or `[sync] extra_ignore` invalidates it.

Coarse clocks: a directory changed within one timestamp granule of the cache's own walk could
change again without its mtime moving, so anything whose mtime is not older than the walk
start minus a granule (`granule`) is listed again rather than trusted.
"""

from __future__ import annotations

import marshal
import os
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vp.sync.ignore import Entry, IgnoreRules

VERSION = 1


def granule(mtime_ns: int) -> int:
    """How far apart two writes may be and still get the same mtime. A whole-second mtime
    says a coarse filesystem (FAT: 2 s, HFS+/ext3: 1 s) or an archive's stamp: 2 s. Else the
    kernel's clock tick, at most 10 ms; twice that to be safe."""
    return 2_000_000_000 if mtime_ns % 1_000_000_000 == 0 else 20_000_000


def recent(mtime_ns: int, since_ns: int) -> bool:
    """Could a change right after `since_ns` have left `mtime_ns` where it is?"""
    return mtime_ns >= since_ns - granule(mtime_ns)


def _load(path: Path, key: str) -> tuple[int, dict] | None:
    try:
        with open(path, "rb") as fh:
            data = marshal.load(fh)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("v") != VERSION or data.get("key") != key:
        return None
    dirs, when = data.get("dirs"), data.get("t")
    if not isinstance(dirs, dict) or not isinstance(when, int):
        return None
    return when, dirs


def _save(path: Path, key: str, when: int, dirs: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(tmp, "wb") as fh:
            marshal.dump({"v": VERSION, "key": key, "t": when, "dirs": dirs}, fh)
        os.replace(tmp, path)
    except OSError:  # a cache that cannot be written is only a slower next call
        try:
            os.unlink(tmp)
        except OSError:
            pass


def cached_walk(rules: IgnoreRules, root: Path, cache: Path) -> dict[str, Entry]:
    """`rules.walk(root)`, reusing the listing of every directory unchanged since the cache."""
    from vp.sync.ignore import Entry

    start = time.time_ns()
    key = f"{os.path.abspath(root)}\0{rules.digest()}"
    loaded = _load(cache, key)
    if loaded is None:
        out: dict[str, Entry] = {}
        dirs: dict = {}
        rules.scan(root, out, dirs)
        _save(cache, key, start, dirs)
        return out
    when, old = loaded
    out = {}
    dirs = {}
    changed = False
    stack = [""]
    root_s = str(root)
    root_dev: int | None = None
    lstat, of = os.lstat, Entry.of
    S_ISREG, S_ISLNK, S_ISDIR = stat.S_ISREG, stat.S_ISLNK, stat.S_ISDIR
    while stack:
        rel_dir = stack.pop()
        directory = os.path.join(root_s, rel_dir) if rel_dir else root_s
        known = old.get(rel_dir)
        try:
            dst = lstat(directory) if rel_dir else os.stat(directory)
        except OSError:
            changed = True
            continue
        reuse = (
            known is not None
            and S_ISDIR(dst.st_mode)
            and known[0] == dst.st_mtime_ns
            and known[1] == dst.st_ino
            and known[2] == dst.st_dev
            and not recent(dst.st_mtime_ns, when)
        )
        prefix = f"{rel_dir}/" if rel_dir else ""
        if reuse:
            for name in known[3]:
                try:
                    st = lstat(f"{directory}/{name}")
                except OSError:
                    reuse = False
                    break
                if not (S_ISREG(st.st_mode) or S_ISLNK(st.st_mode)):
                    reuse = False
                    break
                out[prefix + name] = of(st)
            if not reuse:  # what was added is listed again below
                for name in known[3]:
                    out.pop(prefix + name, None)
        if reuse:
            dirs[rel_dir] = known
            stack.extend(prefix + name for name in known[4])
            continue
        # New or changed: list it again (its subdirectories are checked on their own).
        changed = True
        if root_dev is None:
            root_dev = os.stat(root_s).st_dev
        record = rules.list_dir(root_s, rel_dir, root_dev, out)
        if record is not None:
            dirs[rel_dir] = record
            stack.extend(prefix + name for name in record[4])
    if changed or len(dirs) != len(old):
        _save(cache, key, start, dirs)
    return out
