"""A host's run directories do not grow without bound: the first run of a day starts, in the
background, a pruner (started again by the next run if it was killed half way) that removes
the runs that ended more than 30 days ago and those beyond the newest 200, never one still
running. Through the real CLI on the local platform, whose runs directory is private to the
test (the sshd test hosts share this user's `~/.vp/runs` with every other test); the wrapper
script is the same one an ssh host runs."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.waiting import wait_for
from vp.remote import KEEP_RUN_DAYS, KEEP_RUNS

pytestmark = pytest.mark.timeout(180)

DAY = 86400


def _runs(env: VpEnv) -> Path:
    return env.home / ".local/share/vp/local/runs"


def _fake_run(runs: Path, name: str, age_s: float, *, pid: int | None, ended: bool) -> Path:
    """A run directory as the wrapper leaves it, last changed `age_s` seconds ago."""
    d = runs / name
    d.mkdir()
    (d / "log").write_text(f"{name}\n")
    if pid is not None:
        (d / "pid").write_text(f"{pid}\n")
    if ended:
        (d / "exit").write_text("0\n")
    t = time.time() - age_s
    os.utime(d, (t, t))
    return d


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_old_and_surplus_runs_are_pruned_once_a_day_never_a_running_one(vp_env: VpEnv) -> None:
    vp_env.write_config('[project]\nname = "proj"\n[host]\nplatform = "local"\n')
    r = vp_env.run("true")
    assert r.returncode == 0, r.stderr
    runs = _runs(vp_env)
    [first] = [d.name for d in runs.iterdir() if not d.name.startswith(".")]
    today = wait_for(
        lambda: [s for s in runs.glob(".vp-pruned-*") if s.is_dir()], 30, "today's stamp"
    )[0]
    assert not Path(f"{today}.pid").exists()  # removed before the stamp was made
    # As if today's pruner had been killed half way (the host stopped), and yesterday's done.
    today.rmdir()
    Path(f"{today}.pid").write_text(f"{_dead_pid()}\n")
    yesterday = runs / f".vp-pruned-{int(today.name.rsplit('-', 1)[1]) - 1}"
    yesterday.mkdir()

    surplus = KEEP_RUNS + 5
    dead = _dead_pid()
    recent = [
        _fake_run(runs, f"recent{i:03d}", 100 + i, pid=dead, ended=True) for i in range(surplus)
    ]
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        running_beyond = _fake_run(
            runs, "runningbeyond", 100 + surplus + 50, pid=sleeper.pid, ended=False
        )
        old = (KEEP_RUN_DAYS + 10) * DAY
        running_old = _fake_run(runs, "runningold", old, pid=sleeper.pid, ended=False)
        ended_old = _fake_run(runs, "endedold", old, pid=dead, ended=True)
        died_old = _fake_run(runs, "diedold", old, pid=dead, ended=False)
        starting = _fake_run(runs, "starting", 2 * DAY + 100 + surplus, pid=None, ended=False)

        before = {d.name for d in runs.iterdir()}
        r = vp_env.run("echo", "hi")
        assert r.returncode == 0 and r.stdout == "hi\n", r.stderr
        [second] = {d.name for d in runs.iterdir() if d.name[0] != "."} - before  # never pruned
        # The newest KEEP_RUNS stay: this run, the first one, and all but the 7 oldest fakes
        # (5 surplus + the 2 real runs); whatever is running stays wherever it ranks.
        kept = {second, first, *(d.name for d in recent[: KEEP_RUNS - 2])}
        expected = kept | {running_beyond.name, running_old.name}

        def pruned() -> bool:
            return {d.name for d in runs.iterdir() if not d.name.startswith(".")} == expected

        wait_for(
            pruned,
            60,
            "the pruner to leave the newest runs and the running ones",
            context=lambda: str(sorted({d.name for d in runs.iterdir()} ^ expected)),
        )
        assert not ended_old.exists() and not died_old.exists() and not starting.exists()
        wait_for(today.is_dir, 30, "today's stamp, once done")
        assert not yesterday.exists() and not Path(f"{today}.pid").exists()
        assert (runs / first / "log").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
