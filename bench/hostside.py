"""A/B of the host side of a warm `vp true`: the launch+follow script each of two checkouts
sends (`vp.remote.launch_script`, with its change listing), fed to `sh -s` over one raw
ControlMaster to one sshd host, interleaved call by call with `ssh host true` on the same
master. With `--files N`, the workdir holds N files (bench/scale.py's tree), so the change
listing is part of it; each side's warm-up calls leave the host as a warm call finds it.

    .venv/bin/python bench/hostside.py --a /path/to/main --b /path/to/branch [--files 0]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from common import PYTHON, Bench, check, fmt, interleaved, median
from scale import make_tree

TEMPLATE_ID = "zzzzzzzz"  # replaced by a fresh run id on every call

GEN = """
import sys
from vp import remote
from vp.transport import Transport
t = Transport()
s = remote.launch_script(t.runs_dir_sh, sys.argv[1], t.workdir_sh(sys.argv[2]), "true", {})
sys.stdout.write(s + 'rm -rf "$R"\\n')
"""


def script_of(checkout: str, workdir: str) -> str:
    """The checkout's launch+follow script for `vp true` in `workdir` (run id: a template)."""
    env = {**os.environ, "PYTHONPATH": checkout}
    proc = subprocess.run(
        [PYTHON, "-c", GEN, TEMPLATE_ID, workdir], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"{checkout}: {proc.stderr}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="checkout A")
    ap.add_argument("--b", required=True, help="checkout B")
    ap.add_argument("--files", type=int, default=0, help="files in the workdir (default 0)")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    with Bench() as bench:
        sides = {}
        for name, checkout in (("A", args.a), ("B", args.b)):
            workdir = bench.remote / f"ws-{name}"  # one each: each side's own listing hint
            workdir.mkdir()
            if args.files:
                make_tree(workdir, args.files)
            sides[name] = script_of(checkout, str(workdir))
        n = iter(range(10**6))

        def call(name: str):
            def run() -> None:
                script = sides[name].replace(TEMPLATE_ID, f"hb{next(n):06d}")
                proc = check(bench.raw_script(script), f"{name}'s script")
                assert b"\x1eVPEXIT 0" in proc.stderr, proc.stderr[-300:]

            return run

        for _ in range(3):  # warm-up: page cache, and each side's state on the host
            for name in sides:
                call(name)()
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
        times = interleaved(
            {
                "raw": lambda: check(bench.raw_ssh("true"), "ssh true"),
                "A": call("A"),
                "B": call("B"),
            },
            args.reps,
        )
    end = "/".join(f"{x:.1f}" for x in os.getloadavg())
    raw = median(times["raw"])
    print(f"== host side of a warm vp true, {args.files} files, {args.reps} reps")
    print(f"   ({os.cpu_count()} cores, load {load} -> {end})")
    print(f"raw ssh true                      {fmt(raw)}  (min {fmt(min(times['raw']))})")
    for name, checkout in (("A", args.a), ("B", args.b)):
        t = median(times[name])
        print(
            f"{name} {checkout:<30} {fmt(t)}  (min {fmt(min(times[name]))})"
            f"  beyond ssh true {fmt(t - raw)}"
        )


if __name__ == "__main__":
    main()
