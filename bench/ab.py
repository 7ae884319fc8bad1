"""A/B: the warm no-change `vp true` of two vp checkouts on the same tree size, interleaved
call by call (each with its own project, state and sshd host), next to `ssh host true` on
each side's own master. For before/after pairs on a machine whose load moves by the minute.

    .venv/bin/python bench/ab.py --a /path/to/main --b /path/to/branch [--files 100000]
"""

from __future__ import annotations

import argparse
import os
import time

from common import Bench, check, median
from scale import make_tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="checkout A (PYTHONPATH of its vp calls)")
    ap.add_argument("--b", required=True, help="checkout B")
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    with Bench() as a, Bench() as b:
        sides = {"A": (a, args.a), "B": (b, args.b)}
        for bench, path in sides.values():
            bench.env["PYTHONPATH"] = path
            make_tree(bench.project, args.files)
            for _ in range(3):  # upload, then the steady state
                check(bench.vp("true"), "vp true (warm-up)")
        socks = {k: v[0].vp_sockets()[0] for k, v in sides.items()}
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
        times: dict[str, list[float]] = {f"{k}{w}": [] for k in sides for w in ("vp", "raw")}
        for i in range(args.reps):
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for k in order:
                bench = sides[k][0]
                for what in ("vp", "raw") if i % 2 == 0 else ("raw", "vp"):
                    t0 = time.perf_counter()
                    if what == "vp":
                        check(bench.vp("true"), "vp true")
                    else:
                        check(bench.raw_ssh("true", control_path=socks[k]), "ssh true")
                    times[f"{k}{what}"].append(time.perf_counter() - t0)
        end = "/".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"== A/B warm vp true, {args.files} files, {args.reps} reps, load {load} -> {end}")
        for k, (_bench, path) in sides.items():
            vp, raw = median(times[f"{k}vp"]), median(times[f"{k}raw"])
            print(
                f"  {k} {path}: vp {vp * 1000:7.1f} ms / ssh {raw * 1000:7.1f} ms "
                f"= +{(vp - raw) * 1000:6.1f} ms ({vp / raw:.2f}x)"
            )


if __name__ == "__main__":
    main()
