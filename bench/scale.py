"""Scale: how vp's initial upload and its warm no-change call grow with the project (1k, 10k,
100k small files), next to `rsync -a` and `ssh host true` over the same ControlMaster, and N
concurrent `vp sh -c 'echo i; exit i%5'` on one host whose sshd allows MaxSessions 10.

Each tree size gets a fresh project; vp and raw are interleaved (order flips every round).

    .venv/bin/python bench/scale.py [--sizes 1000,10000,100000] [--reps 3] [--concurrent 50]
                                    [--warm-only]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time

from common import ALIAS, VP, Bench, check, count_sessions, fmt, interleaved, median

FILES_PER_DIR = 100


def make_tree(root, files: int) -> int:
    total = 0
    for i in range(files):
        d = root / f"d{i // FILES_PER_DIR:04d}"
        if i % FILES_PER_DIR == 0:
            d.mkdir()
        body = f"# file {i}\nVALUE = {i}\n".encode() * 8
        (d / f"f{i:06d}.py").write_bytes(body)
        total += len(body)
    return total


def one_size(files: int, reps: int, warm_only: bool = False) -> dict[str, float]:
    with Bench() as b:
        size = make_tree(b.project, files)
        check(b.vp("--sync-only"), "vp --sync-only (warm-up)")
        sock = b.vp_sockets()[0]

        def vp_initial() -> None:
            b.set_workdir(b.fresh_workdir())
            check(b.vp("--sync-only"), "vp --sync-only (initial)")

        def raw_initial() -> None:
            check(b.raw_rsync(b.project, b.fresh_workdir(), sock), "rsync -a (initial)")

        initial = (
            {"vp": [float("nan")], "raw": [float("nan")]}
            if warm_only
            else interleaved({"vp": vp_initial, "raw": raw_initial}, reps)
        )
        for d in b.remote.iterdir():
            shutil.rmtree(d, ignore_errors=True)
        b.set_workdir(b.fresh_workdir())
        for _ in range(3):  # upload, then the steady state (cache filled, manifest current)
            check(b.vp("true"), "vp true (warm-up)")
        offset = b.log_size()
        check(b.vp("true"), "vp true")
        sessions, logins = count_sessions(b.log_since(offset))
        warm = interleaved(
            {
                "vp": lambda: check(b.vp("true"), "vp true"),
                "raw": lambda: check(b.raw_ssh("true", control_path=sock), "ssh true"),
            },
            max(reps, 5),
        )
    out = {
        "files": files,
        "mb": size / 1e6,
        "up_vp": median(initial["vp"]),
        "up_raw": median(initial["raw"]),
        "warm_vp": median(warm["vp"]),
        "warm_raw": median(warm["raw"]),
        "sessions": sessions,
        "logins": logins,
    }
    return out


def concurrency(n: int) -> tuple[float, int, int]:
    """(seconds, failures, new ssh logins) for n concurrent runs on a MaxSessions 10 host."""
    from tests.sshhost import SshHost

    with Bench() as b:
        b.host.close()
        b.host = SshHost(b.tmp / "host10", max_sessions=10)
        b.host.start()
        b.ssh_config.write_text(
            f"Host {ALIAS}\n    HostName 127.0.0.1\n    Port {b.host.port}\n"
            f"    User {b.host.user}\n    IdentityFile {b.host.client_key}\n"
            "    IdentitiesOnly yes\n"
        )
        (b.project / "job.py").write_text("print(1)\n")
        check(b.vp("true"), "vp true (warm-up)")
        offset = b.log_size()
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [*VP, "sh", "-c", f"echo {i}; exit {i % 5}"],
                cwd=b.project,
                env=b.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for i in range(n)
        ]
        bad = 0
        for i, p in enumerate(procs):
            out, _err = p.communicate(timeout=900)
            bad += (p.returncode, out) != (i % 5, f"{i}\n".encode())
        took = time.perf_counter() - t0
        _sessions, logins = count_sessions(b.log_since(offset))
    return took, bad, logins


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrent", default="50")
    ap.add_argument("--warm-only", action="store_true", help="skip the initial upload comparison")
    args = ap.parse_args()
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"== scale  (loopback; {args.reps} reps, {os.cpu_count()} cores, load {load})")
    print(
        f"{'files':>7} {'MB':>6} | {'initial upload vp / rsync -a':>34} | "
        f"{'warm vp true / ssh true':>40} | sessions"
    )
    for files in [int(x) for x in args.sizes.split(",") if x]:
        r = one_size(files, args.reps if files < 100_000 else max(1, args.reps - 1), args.warm_only)
        up = r["up_vp"] / r["up_raw"]
        over = r["warm_vp"] - r["warm_raw"]
        print(
            f"{r['files']:>7} {r['mb']:6.1f} | {fmt(r['up_vp'])} / {fmt(r['up_raw'])} "
            f"{up:5.2f}x | {fmt(r['warm_vp'])} / {fmt(r['warm_raw'])} +{over * 1000:6.1f} ms"
            f" | {r['sessions']}, {r['logins']} new",
            flush=True,
        )
    for n in [int(x) for x in args.concurrent.split(",") if x]:
        took, bad, logins = concurrency(n)
        print(
            f"{n} concurrent vp runs (MaxSessions 10): {took:.1f} s, {bad} wrong, "
            f"{logins} new ssh connections",
            flush=True,
        )
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"(load at the end {load})")


if __name__ == "__main__":
    main()
