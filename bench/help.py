"""CLI start-up: `vp --help` wall time (median of N, target <= 100 ms, issue #17), next to the bare
interpreter (`python -c pass`), and the heaviest imports of `python -X importtime -m vp --help`.

No host is needed; --delay-ms is accepted for symmetry with the other scripts and ignored.

    .venv/bin/python bench/help.py [--reps 10]
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import PYTHON, VP, check, fmt, header, interleaved, isolated_env, median, parse_args

TARGET = 0.100  # seconds
TOP = 10


def importtime(env: dict[str, str], cwd: Path) -> list[tuple[int, int, str]]:
    """(self us, cumulative us, module) for every import of `vp --help`."""
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", *VP[1:], "--help"], env=env, cwd=cwd, capture_output=True
    )
    rows = []
    for line in proc.stderr.decode(errors="replace").splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line[len("import time:") :].split("|")
        rows.append((int(self_us), int(cum_us), name.rstrip()))
    return rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], reps=10)
    header("help: `vp --help` start-up", args, host=False)
    tmp = Path(tempfile.mkdtemp(prefix="vpbench-help-"))
    try:
        home, cwd = tmp / "home", tmp / "proj"
        home.mkdir()
        cwd.mkdir()
        env = isolated_env(home, tmp)

        cpu: dict[str, list[float]] = {"vp": [], "python": []}

        def run(argv: list[str], name: str | None = None) -> None:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            check(subprocess.run(argv, env=env, cwd=cwd, capture_output=True), " ".join(argv))
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if name:  # CPU seconds (user+sys): steadier than wall time on a loaded machine
                used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                cpu[name].append(used)

        run([*VP, "--help"])  # warm-up: byte-compile into the pycache prefix
        times = interleaved(
            {
                "vp": lambda: run([*VP, "--help"], "vp"),
                "python": lambda: run([PYTHON, "-c", "pass"], "python"),
            },
            args.reps,
        )
        rows = importtime(env, cwd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    vp_t, py_t = median(times["vp"]), median(times["python"])
    verdict = "ok" if vp_t <= TARGET else "OVER TARGET"
    print(f"vp --help           median {fmt(vp_t)}  (min {fmt(min(times['vp']))})", end="")
    print(f"  target <= {TARGET * 1000:.0f} ms: {verdict}")
    print(f"python -c pass      median {fmt(py_t)}  (interpreter floor)")
    print(f"vp --help - python  {fmt(vp_t - py_t)}  (medians)")
    vp_c, py_c = median(cpu["vp"]), median(cpu["python"])
    print(f"CPU (user+sys)      vp --help {fmt(vp_c)}, python -c pass {fmt(py_c)}")
    total = sum(r[0] for r in rows)
    print(f"imports             {len(rows)} modules, {total / 1000:.0f} ms self time in total")
    print(f"top {TOP} imports by cumulative time (ms):")
    for _self, cum_us, name in sorted(rows, key=lambda r: -r[1])[:TOP]:
        print(f"  {cum_us / 1000:7.1f}  {name.strip()}")
    print(f"top {TOP} imports by self time (ms):")
    for self_us, _cum, name in sorted(rows, key=lambda r: -r[0])[:TOP]:
        print(f"  {self_us / 1000:7.1f}  {name.strip()}")


if __name__ == "__main__":
    main()
