"""Workspace sync: a generated 10k-file tree (10 dirs x 1000 small files), vp against raw
`rsync -a` of the same tree over the same (vp's) ControlMaster.

- initial upload: `vp --sync-only` into a fresh workdir vs `rsync -a` into a fresh dir;
- no-op sync (nothing changed): `vp --sync-only` vs `rsync -a` again (target <= 1.2x raw);
- one file changed: `vp --sync-only` vs `rsync -a`;
- warm `vp true` in this 10k-file project vs raw `ssh host true`;
- vp's local file walk alone (IgnoreRules.walk), in this process.

    .venv/bin/python bench/sync.py [--delay-ms 25] [--reps 3]
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time

from common import ALIAS, Bench, check, count_sessions, fmt, header, interleaved, median, parse_args

DIRS = 10
FILES_PER_DIR = 1000
TARGET_NOOP_RATIO = 1.2
SYNC_ONLY = ("--sync-only",)


def make_tree(root) -> tuple[int, int]:
    files = total = 0
    for d in range(DIRS):
        sub = root / f"pkg{d:02d}"
        sub.mkdir()
        for f in range(FILES_PER_DIR):
            body = (f"# module {d}/{f}\n" + f"VALUE_{f} = {d * FILES_PER_DIR + f}\n" * 12).encode()
            (sub / f"mod{f:04d}.py").write_bytes(body)
            files += 1
            total += len(body)
    return files, total


def vp_rsync(b: Bench, sock: str, dest, names: list[str]) -> subprocess.CompletedProcess:
    """The rsync step of vp's upload, with vp.sync.transfer.upload's flags, on `names`."""
    argv = [
        "rsync",
        "-e",
        shlex.join(b.raw_ssh_base(sock)),
        "-a",
        "--files-from=-",
        "--from0",
        "--protect-args",
        "--delete-missing-args",
        "--no-inc-recursive",
        f"--rsync-path=mkdir -p {shlex.quote(str(dest))} && rsync",
        f"{b.project}/",
        f"{ALIAS}:{dest}/",
    ]
    payload = b"".join(n.encode() + b"\0" for n in names)
    return subprocess.run(argv, input=payload, capture_output=True, timeout=300)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], reps=3)
    header("sync: vp --sync-only vs raw rsync -a, 10k files", args)
    from vp.sync.ignore import IgnoreRules

    with Bench(args.delay_ms) as b:
        files, size = make_tree(b.project)
        print(f"tree: {files} files in {DIRS} dirs, {size / 1e6:.1f} MB")
        # Warm-up: vp's ControlMaster exists and the first upload is done.
        check(b.vp(*SYNC_ONLY), "vp --sync-only (warm-up)")
        socks = b.vp_sockets()
        if len(socks) != 1:
            raise SystemExit(f"expected one vp ControlMaster socket, found {socks}")
        sock = socks[0]

        # 1. initial upload into a fresh dir each time
        def vp_initial() -> None:
            b.set_workdir(b.fresh_workdir())
            check(b.vp(*SYNC_ONLY), "vp --sync-only (initial)")

        def raw_initial() -> None:
            check(b.raw_rsync(b.project, b.fresh_workdir(), sock), "rsync -a (initial)")

        initial = interleaved({"vp": vp_initial, "raw": raw_initial}, args.reps)
        for d in b.remote.iterdir():  # keep the disk small; outside the timings
            shutil.rmtree(d, ignore_errors=True)

        # 2. no-op: both sides up to date
        vp_dir, raw_dir = b.fresh_workdir(), b.fresh_workdir()
        b.set_workdir(vp_dir)
        check(b.vp(*SYNC_ONLY), "vp --sync-only")
        check(b.raw_rsync(b.project, raw_dir, sock), "rsync -a")
        offset = b.log_size()
        check(b.vp(*SYNC_ONLY), "vp --sync-only (no-op)")
        noop_sessions, noop_logins = count_sessions(b.log_since(offset))
        noop = interleaved(
            {
                "vp": lambda: check(b.vp(*SYNC_ONLY), "vp --sync-only (no-op)"),
                "raw": lambda: check(b.raw_rsync(b.project, raw_dir, sock), "rsync -a (no-op)"),
            },
            args.reps,
        )

        # 3. one file changed, then each side syncs it. Besides vp itself, time the rsync
        # step of vp's upload alone (its exact flags, vp.sync.transfer.upload) fed the whole
        # file list as today, and fed only the changed name (a candidate fix).
        full_dir, delta_dir = b.fresh_workdir(), b.fresh_workdir()
        for d in (full_dir, delta_dir):
            check(b.raw_rsync(b.project, d, sock), "rsync -a")
        everything = sorted(IgnoreRules.for_project(b.project).walk(b.project))
        one: dict[str, list[float]] = {"vp": [], "raw": [], "full": [], "delta": []}
        for i in range(args.reps):
            name = f"pkg{i % DIRS:02d}/mod{i:04d}.py"
            target = b.project / name
            target.write_text(target.read_text() + f"CHANGED = {i}\n")
            sides = {
                "vp": lambda: check(b.vp(*SYNC_ONLY), "vp --sync-only (one change)"),
                "raw": lambda: check(b.raw_rsync(b.project, raw_dir, sock), "rsync -a (one)"),
                "full": lambda: check(vp_rsync(b, sock, full_dir, everything), "full list"),
                "delta": lambda n=name: check(vp_rsync(b, sock, delta_dir, [n]), "delta list"),
            }
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for side in order:
                t0 = time.perf_counter()
                sides[side]()
                one[side].append(time.perf_counter() - t0)

        # 4. warm dispatch in this big project: every `vp CMD` walks and compares the tree
        check(b.vp("true"), "vp true (warm-up)")
        check(b.vp("true"), "vp true (warm-up)")
        warm = interleaved(
            {
                "vp": lambda: check(b.vp("true"), "vp true"),
                "raw": lambda: check(b.raw_ssh("true", control_path=sock), "ssh true"),
            },
            args.reps,
        )

        # 5. vp's local walk alone
        walks = []
        walked = 0
        for _ in range(max(args.reps, 5)):
            t0 = time.perf_counter()
            walked = len(IgnoreRules.for_project(b.project).walk(b.project))
            walks.append(time.perf_counter() - t0)

    def row(label: str, t: dict[str, list[float]]) -> float:
        v, r = median(t["vp"]), median(t["raw"])
        print(f"{label:22s} vp {fmt(v)}   raw rsync {fmt(r)}   ratio {v / r:5.2f}x")
        return v / r

    row("initial upload", initial)
    ratio = row("no-op sync", noop)
    verdict = "ok" if ratio <= TARGET_NOOP_RATIO else "OVER TARGET"
    print(f"{'':22s} (target no-op <= {TARGET_NOOP_RATIO}x raw: {verdict})")
    row("one file changed", one)
    full, delta, raw = median(one["full"]), median(one["delta"]), median(one["raw"])
    print(f"  vp's rsync step alone, whole list (today) {fmt(full)}   {full / raw:5.2f}x raw")
    print(f"  vp's rsync step alone, changed name only  {fmt(delta)}   {delta / raw:5.2f}x raw")
    v, r = median(warm["vp"]), median(warm["raw"])
    print(f"warm vp true, 10k tree vp {fmt(v)}   raw ssh   {fmt(r)}   ratio {v / r:5.2f}x")
    print(f"vp local walk          {fmt(median(walks))}   ({walked} files, IgnoreRules.walk)")
    print(f"no-op vp sync opened   {noop_sessions} ssh session(s), {noop_logins} new connection(s)")


if __name__ == "__main__":
    main()
