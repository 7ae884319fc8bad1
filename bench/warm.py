"""Where a warm no-change `vp CMD` spends its time in a big project, in process: the local
walk against its cache, the manifest read, the comparison, and the host's change listing
(the run wrapper's `find`, here over the same tree). No ssh: the stages alone.

Runs against whichever vp is first on sys.path (this tree, or another checkout through
PYTHONPATH), so the same script gives before/after figures:

    .venv/bin/python bench/warm.py [--files 100000] [--reps 5]
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/warm.py
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if os.environ.get("PYTHONPATH"):
    sys.path.insert(0, os.environ["PYTHONPATH"].split(os.pathsep)[0])
else:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import vp  # noqa: E402
from vp import remote  # noqa: E402
from vp.state import State  # noqa: E402
from vp.sync import walkcache  # noqa: E402
from vp.sync.ignore import IgnoreRules  # noqa: E402
from vp.sync.transfer import Manifest  # noqa: E402

FILES_PER_DIR = 100


def make_tree(root: Path, files: int) -> None:
    """The tree bench/scale.py builds: ~200 B files in dirs of 100, made to look old."""
    old = time.time() - 3600
    for i in range(files):
        d = root / f"d{i // FILES_PER_DIR:04d}"
        if i % FILES_PER_DIR == 0:
            d.mkdir()
        f = d / f"f{i:06d}.py"
        f.write_bytes(f"# file {i}\nVALUE = {i}\n".encode() * 8)
        os.utime(f, (old, old))
    for d in root.iterdir():
        os.utime(d, (old, old))
    os.utime(root, (old, old))


def timed(fn, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _watched(rules: IgnoreRules, root: Path, cache: Path, reps: int) -> float | None:
    """The warm check answered by the project's watcher (vp/sync/watchclient.py), if this
    vp has one: started by a call that finds none, vouched by the next, then timed."""
    if not hasattr(walkcache, "_watcher_for"):
        return None
    from vp.sync import watchclient

    del os.environ["VP_NO_WATCH"]
    walkcache.walk(rules, root, cache).save()  # starts it
    deadline = time.monotonic() + 60
    while watchclient.status(root) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    walkcache.walk(rules, root, cache).save()  # the full check, vouched with its token

    def walk() -> walkcache.Walk:
        found = walkcache.walk(rules, root, cache)
        found.save()
        return found

    before = (watchclient.status(root) or {}).get("unchanged_answers", 0)
    secs, found = timed(walk, reps)
    answered = (watchclient.status(root) or {}).get("unchanged_answers", 0) - before
    assert found.unchanged and found.vouches("bench"), "the watcher should keep the vouch"
    print(f"   (the watcher answered {answered} of {reps} checks)")
    os.environ["VP_NO_WATCH"] = "1"
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vpwarm-"))
    root, cache = tmp / "proj", tmp / "walk"
    root.mkdir()
    make_tree(root, args.files)
    rules = IgnoreRules.for_project(root)
    state = State(tmp / "state.db")
    key = ("host", str(root), "/ws")
    new = hasattr(walkcache, "walk")
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"== warm no-change call, in process: {args.files} files, vp at {vp.__file__}")
    print(f"   ({args.reps} reps, median; {os.cpu_count()} cores, load {load})")

    rows: list[tuple[str, float | None]] = []
    # vp's runtime dir (the watcher's socket) for this run only; no watcher until asked for
    os.environ["XDG_STATE_HOME"] = str(tmp / "state")
    os.environ.pop("XDG_RUNTIME_DIR", None)
    os.environ["VP_NO_WATCH"] = "1"
    if new:
        cold, found = timed(lambda: walkcache.walk(rules, root, cache), 1)
        current = found.lists()
        manifest = Manifest().after_upload(current, time.time_ns())
        manifest.stamp = "bench"
        found.vouch(manifest.stamp)
        found.save()
        state.save_manifest(*key, manifest.to_json(), manifest.head())
        rows.append(("cold walk (first call)", cold))
        warm, w = timed(lambda: walkcache.walk(rules, root, cache), args.reps)
        assert w.vouches("bench"), "the cache should vouch for the manifest"
        rows.append(("cached walk, every file lstat'ed and compared", warm))
        watched = _watched(rules, root, cache, args.reps)
        if watched is not None:
            rows.append(("watcher says nothing changed (no lstat)", watched))
        rows.append(("manifest head read", timed(lambda: state.manifest_head(*key), args.reps)[0]))
        rows.append(("when the cache does not vouch (a change, a new manifest):", None))
        full = timed(lambda: state.manifest(*key), 3)[0]
        rows.append(("   full manifest read + json.loads", full))

        def compare() -> bool:
            w._lists = None  # built afresh each time
            return w.lists() == current

        rows.append(("   walk entries built + compared", timed(compare, 3)[0]))
    else:
        cold, found = timed(lambda: rules.walk(root, cache=cache), 1)
        current = {p: e.as_list() for p, e in found.items()}
        manifest = Manifest().after_upload(current, time.time_ns())
        state.save_manifest(*key, manifest.to_json())
        rows.append(("cold walk (first call)", cold))
        warm, local = timed(lambda: rules.walk(root, cache=cache), args.reps)
        rows.append(("cached walk, every file lstat'ed", warm))
        rows.append(("full manifest read + json.loads", timed(lambda: state.manifest(*key), 3)[0]))

        def compare() -> bool:
            now = {p: e.as_list() for p, e in local.items()}
            return now == manifest.files

        rows.append(("walk entries built + compared", timed(compare, 3)[0]))

    # The host's change listing: the run wrapper's own `find`, against a marker made now.
    marker = tmp / "since"
    marker.touch()
    if hasattr(remote, "changes_script"):  # one find, or split over the cores (a hint file)
        hint = tmp / "hint"
        listing = remote.changes_script(
            shlex.quote(str(root)), '"$1"', shlex.quote(str(hint)), shlex.quote(str(tmp))
        ).replace(">&2", "")
        for k in sorted({1, min(os.cpu_count() or 1, remote.MAX_FINDS)}):

            def run(k: int = k) -> None:
                hint.write_text(f"{k}\n")  # the listing itself rewrites it
                subprocess.run(["sh", "-c", listing, "sh", str(marker)], capture_output=True)

            label = "one find" if k == 1 else f"split over {k} finds"
            rows.append((f"host change listing ({label})", timed(run, args.reps)[0]))
    else:
        script = remote.follow_script('"$HOME"/runs', "r1", 0, shlex.quote(str(root)))
        listing = script[script.index("cd ") :].replace('"$R/since"', '"$1"').replace(">&2", "")
        listed = timed(
            lambda: subprocess.run(
                ["sh", "-c", listing, "sh", str(marker)], capture_output=True, check=False
            ),
            args.reps,
        )[0]
        rows.append(("host change listing (the wrapper's find)", listed))
    for label, secs in rows:
        print(f"  {label:<52} {secs * 1000:8.2f} ms" if secs is not None else f"  {label}")
    subprocess.run(["rm", "-rf", str(tmp)], check=False)
    print(json.dumps({k.strip(): round(v * 1000, 1) for k, v in rows if v is not None}))


if __name__ == "__main__":
    main()
