"""Warm dispatch: `vp true` on a host vp already knows, its ControlMaster up and its manifest
current, against raw `ssh -o ControlPath=<our own master> host true` to the same host.

Also counts the ssh sessions (and new connections) one warm `vp true` opens, from the sshd
VERBOSE log; the design target (DESIGN.md §10) is one session and no new connection.

To show where the overhead lives, it also times vp's remote protocol alone: the very
launch+follow script `vp true` sends (vp.remote.launch_script), fed to `sh -s` over the raw
master; the rest of vp's time is what its local side (interpreter, imports, config, state,
no-change check) adds beyond the session's set-up, which it overlaps (vp/prespawn.py opens
the session right after the interpreter starts). `vp true` with VP_NO_PRESPAWN=1 runs
interleaved too, to show what that overlap is worth.
And the CPU time (user+sys) of each `vp true` process tree next to `python -c pass`'s: on a
loaded machine wall times swing 2x between runs, CPU seconds much less.

    .venv/bin/python bench/dispatch.py [--delay-ms 25] [--reps 10]
"""

from __future__ import annotations

import resource
import subprocess

from common import (
    PYTHON,
    Bench,
    check,
    count_sessions,
    fmt,
    header,
    interleaved,
    median,
    parse_args,
)

TARGET_OVERHEAD = 0.1  # seconds (issue #17 item 0)


def remote_protocol(b: Bench) -> str:
    """The launch+follow script a warm `vp true` sends, for a fresh run id."""
    from vp import remote
    from vp.transport import Transport

    workdir = b.remote / "ws"
    t = Transport()
    script = remote.launch_script(
        t.runs_dir_sh, remote.new_run_id(), t.workdir_sh(str(workdir)), "true", {}, follow=True
    )
    script += 'rm -rf "$R"\n'  # the run is ours alone: leave no trace in the host's ~/.vp
    return script


def cpu_of(fn, into: list[float]) -> None:
    """Run `fn` (one child process, waited for) and add the CPU seconds its tree used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    fn()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    into.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], reps=10)
    header("dispatch: warm `vp true` vs raw ssh over a ControlMaster", args)
    with Bench(args.delay_ms) as b:
        (b.project / "train.py").write_text("print('hi')\n")
        # Warm-up: starts vp's master, uploads, and records the manifest. The second call
        # makes sure the steady state (nothing to upload, nothing to fetch) is reached.
        for _ in range(2):
            check(b.vp("true"), "vp true (warm-up)")
        check(b.raw_ssh("true"), "raw ssh true")

        offset = b.log_size()
        check(b.vp("true"), "vp true")
        sessions, logins = count_sessions(b.log_since(offset))
        offset = b.log_size()
        check(b.raw_ssh("true"), "raw ssh true")
        raw_sessions, raw_logins = count_sessions(b.log_since(offset))

        # An edited file costs one upload session more, once: the call after is warm again.
        (b.project / "train.py").write_text("print('edited')\n")
        offset = b.log_size()
        check(b.vp("true"), "vp true (after an edit)")
        edit_sessions, edit_logins = count_sessions(b.log_since(offset))
        offset = b.log_size()
        check(b.vp("true"), "vp true (the call after)")
        next_sessions, next_logins = count_sessions(b.log_since(offset))

        cpu: dict[str, list[float]] = {"vp": [], "python": []}
        no_prespawn = {**b.env, "VP_NO_PRESPAWN": "1"}
        times = interleaved(
            {
                "vp": lambda: cpu_of(lambda: check(b.vp("true"), "vp true"), cpu["vp"]),
                "python": lambda: cpu_of(
                    lambda: subprocess.run([PYTHON, "-c", "pass"], env=b.env), cpu["python"]
                ),
                "vp-np": lambda: check(b.vp("true", env=no_prespawn), "vp true (no prespawn)"),
                "raw": lambda: check(b.raw_ssh("true"), "raw ssh true"),
                "proto": lambda: check(b.raw_script(remote_protocol(b)), "vp's script via ssh"),
            },
            args.reps,
        )
    vp_t, raw_t = median(times["vp"]), median(times["raw"])
    proto = median(times["proto"])
    overhead = vp_t - raw_t
    print(f"warm vp true        median {fmt(vp_t)}  (min {fmt(min(times['vp']))})")
    print(f"raw ssh true        median {fmt(raw_t)}  (min {fmt(min(times['raw']))})")
    np_t = median(times["vp-np"])
    print(f"vp true, no prespawn median {fmt(np_t)}  (overhead {fmt(np_t - raw_t)})")
    verdict = "ok" if overhead <= TARGET_OVERHEAD else "OVER TARGET"
    target = f"target <= {TARGET_OVERHEAD * 1000:.0f} ms: {verdict}"
    print(f"overhead            {fmt(overhead)}  ({target})")
    print(f"ratio vp/raw        {vp_t / raw_t:8.2f}x")
    verdict = "ok" if sessions == 1 and logins == 0 else "OVER TARGET"
    print(
        f"ssh sessions        vp true: {sessions} session(s), {logins} new connection(s)"
        f"  (target 1 and 0: {verdict}); raw ssh: {raw_sessions}, {raw_logins}"
    )
    print(
        f"after editing a file vp true: {edit_sessions} session(s), {edit_logins} new"
        f" connection(s) (upload + run = 2); the call after: {next_sessions}, {next_logins}"
    )
    print("where it goes:")
    print(f"  vp's remote script alone, via raw ssh     {fmt(proto)}")
    print(f"  => vp's own time not overlapped by it     {fmt(vp_t - proto)}")
    print(f"     of which python -c pass (interpreter)  {fmt(median(times['python']))}")
    print(f"  => remote script beyond raw ssh true      {fmt(proto - raw_t)}")
    vp_cpu, py_cpu = median(cpu["vp"]), median(cpu["python"])
    print(f"CPU of vp true      median {fmt(vp_cpu)}  (user+sys, vp and its ssh client)")
    print(f"CPU of python -c pass     {fmt(py_cpu)}")
    print(f"  => vp's CPU beyond the interpreter    {fmt(vp_cpu - py_cpu)}")


if __name__ == "__main__":
    main()
