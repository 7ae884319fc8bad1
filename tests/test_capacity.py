"""Capacity and preemption (#15), through the real CLI against the vast and RunPod emulators:
fallback across GPUs and platforms, waiting for capacity, spot hosts, and runs that recover
on a new host after a preemption, resuming from their last checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import VpEnv, point_at
from tests.emulators.runpod import runpod_emulator  # noqa: F401
from tests.emulators.vast import vast_emulator  # noqa: F401
from tests.test_faults import (
    counting_script,
    error_lines,
    expected_lines,
    restart_sshd_keeping_jobs,
    start,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(240)


def _project(vp_env: VpEnv, workdir: Path, host: str, extra: str = "", **emulators) -> None:
    user = []
    for name, emulator in emulators.items():
        point_at(vp_env, name, emulator)
        emulator.boot_delay = 0.3
        user.append(f"[{name}]\npoll_interval = 0.1\n")
    user_cfg = vp_env.home / ".config" / "vp" / "config.toml"
    user_cfg.parent.mkdir(parents=True, exist_ok=True)
    user_cfg.write_text("\n".join(user))
    vp_env.write_config(
        f"""
        [project]
        name = "cap"

        [host]
        max_price = 5.0
        ready_timeout = 60
        {host}

        [sync]
        workdir = "{workdir}"
        {extra}
        """
    )


def _live(emulator) -> list[str]:
    return [iid for iid in emulator.instances if iid in emulator.hosts]


# ------------------------------------------------------------------------------ fallback


def test_gpu_fallback_reaches_the_second_gpu(
    vp_env: VpEnv,
    vast_emulator,  # noqa: F811
    remote_workdir,
):
    host = 'platform = "vast"\ngpu = ["H100", "4090"]'
    _project(vp_env, remote_workdir, host, vast=vast_emulator)
    vast_emulator.unavailable_gpus = {"H100"}
    r = vp_env.run("echo", "ok")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n"
    assert "vast: vast.ai has no capacity for 1x H100" in r.stderr
    assert "→ trying 4090" in r.stderr
    [iid] = _live(vast_emulator)  # the failed H100 attempts left nothing behind
    assert "4090" in vast_emulator.instances[iid]["gpu_name"]


def test_platform_fallback_reaches_the_second_platform(
    vp_env: VpEnv,
    vast_emulator,  # noqa: F811
    runpod_emulator,  # noqa: F811
    remote_workdir,
):
    _project(
        vp_env,
        remote_workdir,
        'platform = ["runpod", "vast"]\ngpu = "4090"',
        vast=vast_emulator,
        runpod=runpod_emulator,
    )
    runpod_emulator.capacity_error = True
    r = vp_env.run("echo", "ok")
    assert r.returncode == 0, r.stderr
    assert "runpod: RunPod has no capacity for 1x 4090" in r.stderr
    assert "→ trying vast" in r.stderr
    assert not runpod_emulator.instances
    assert len(_live(vast_emulator)) == 1

    # the next run finds the vast host although runpod comes first and has capacity again
    runpod_emulator.capacity_error = False
    r = vp_env.run("echo", "again")
    assert r.returncode == 0 and "creating" not in r.stderr, r.stderr
    assert not runpod_emulator.instances and len(vast_emulator.instances) == 1
    rows = json.loads(vp_env.run("-o", "json", "ls").stdout)
    assert [(row["platform"], row["spot"]) for row in rows] == [("vast", False)]


def test_when_every_attempt_fails_the_error_lists_each(
    vp_env: VpEnv,
    vast_emulator,  # noqa: F811
    runpod_emulator,  # noqa: F811
    remote_workdir,
):
    _project(
        vp_env,
        remote_workdir,
        'platform = ["runpod", "vast"]\ngpu = ["H100", "4090"]',
        vast=vast_emulator,
        runpod=runpod_emulator,
    )
    runpod_emulator.capacity_error = True
    vast_emulator.capacity_error = True
    r = vp_env.run("echo", "ok")
    assert r.returncode == 1
    [error] = error_lines(r.stderr)
    for what in ("runpod H100", "runpod 4090", "vast H100", "vast 4090"):
        assert f"{what}: " in error, error
    assert "Traceback" not in r.stderr
    assert not runpod_emulator.instances and not vast_emulator.instances


def test_auth_error_stops_the_fallback_at_once(
    vp_env: VpEnv,
    vast_emulator,  # noqa: F811
    runpod_emulator,  # noqa: F811
    remote_workdir,
):
    _project(
        vp_env,
        remote_workdir,
        'platform = ["runpod", "vast"]\ngpu = "4090"',
        vast=vast_emulator,
        runpod=runpod_emulator,
    )
    runpod_emulator.fail_auth = True
    r = vp_env.run("echo", "ok")
    assert r.returncode == 1
    [error] = error_lines(r.stderr)
    assert "rejected" in error and "RunPod" in error, r.stderr
    assert "trying vast" not in r.stderr
    assert not vast_emulator.instances


def test_wait_for_capacity_succeeds_once_capacity_appears(
    vp_env: VpEnv,
    vast_emulator,  # noqa: F811
    remote_workdir,
):
    _project(
        vp_env,
        remote_workdir,
        'platform = "vast"\ngpu = "4090"\nwait_for_capacity = "10m"',
        vast=vast_emulator,
    )
    vast_emulator.refuse_creates = 4  # two rounds of two 4090 offers each
    r = vp_env.run("echo", "ok")
    assert r.returncode == 0, r.stderr
    assert "no capacity yet (round 1)" in r.stderr
    assert "no capacity yet (round 2)" in r.stderr
    assert vast_emulator.creates == 5
    assert len(_live(vast_emulator)) == 1


def test_fallback_lists_are_checked_in_config(vp_env: VpEnv):
    vp_env.write_config('[host]\nplatform = ["vast", "local"]\n')
    r = vp_env.run("echo", "x")
    assert r.returncode == 2 and "only cloud platforms" in r.stderr, r.stderr
    vp_env.write_config('[host]\nplatform = "vast"\ngpu = []\n')
    r = vp_env.run("echo", "x")
    assert r.returncode == 2 and "non-empty list" in r.stderr, r.stderr
    vp_env.write_config('[host]\nplatform = "vast"\nwait_for_capacity = "soon"\n')
    r = vp_env.run("echo", "x")
    assert r.returncode == 2 and "is not a duration" in r.stderr, r.stderr


# ------------------------------------------------------------------------------ spot


def test_spot_on_vast_bids_and_shows_in_ls(
    vp_env: VpEnv,
    vast_emulator,  # noqa: F811
    remote_workdir,
):
    host = 'platform = "vast"\ngpu = "4090"\nspot = true'
    _project(vp_env, remote_workdir, host, vast=vast_emulator)
    offers = json.loads(vp_env.run("-o", "json", "offers").stdout)
    assert offers and all(o["spot"] for o in offers)
    r = vp_env.run("echo", "ok")
    assert r.returncode == 0, r.stderr
    [inst] = vast_emulator.instances.values()
    assert inst["is_bid"] and inst["bid_price"] == pytest.approx(0.35 * 0.6)
    rows = json.loads(vp_env.run("-o", "json", "ls").stdout)
    assert [row["spot"] for row in rows] == [True]


# ------------------------------------------------------------------------------ recovery

RECOVER = """checkpoint_dir = "checkpoints/"
checkpoint_interval = "1s"

[run]
recover = true
max_attempts = 3
"""

# Attempt 1 writes a checkpoint and keeps training; a resumed attempt finds it and ends.
TRAIN = (
    "if [ -f checkpoints/step ]; then "
    'echo "attempt=$VP_ATTEMPT resumed=$VP_RESUMED from=$(cat checkpoints/step)"; exit 7; fi; '
    "mkdir -p checkpoints && echo 41 > checkpoints/step && "
    'echo "attempt=$VP_ATTEMPT resumed=${VP_RESUMED:-0} wrote"; sleep 600'
)


def _wipe(root: Path) -> None:
    """The preempted machine's disk: a new host will not have it (the emulators' hosts share
    this machine's file system, so without this the new host would see the old files)."""
    for path in root.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def test_preempted_run_resumes_on_a_new_host_from_its_checkpoint(
    vp_env: VpEnv,
    vast_emulator,  # noqa: F811
    remote_workdir,
):
    host = 'platform = "vast"\ngpu = "4090"\nspot = true'
    _project(vp_env, remote_workdir, host, extra=RECOVER, vast=vast_emulator)
    run = start(vp_env, "sh", "-c", TRAIN)
    run.wait_out(b"wrote\n")
    wait_for(lambda: (vp_env.project / "checkpoints" / "step").is_file(), timeout=60)
    assert (vp_env.project / "checkpoints" / "step").read_text() == "41\n"
    [first] = list(vast_emulator.instances)
    vast_emulator.preempt(first, wipe=lambda: _wipe(remote_workdir))
    code = run.finish(timeout=180)
    assert code == 7, run.stderr
    assert "attempt=1 resumed=0 wrote" in run.stdout
    assert "attempt=2 resumed=1 from=41" in run.stdout, run.stderr
    assert "recovering, attempt 2 of 3 on a new host" in run.stderr
    assert "Traceback" not in run.stderr
    # the preempted host was destroyed; one new host runs
    [second] = _live(vast_emulator)
    assert second != first and first not in vast_emulator.instances
    runs = json.loads(vp_env.run("-o", "json", "runs").stdout)
    latest, lost = runs[0], runs[1]
    assert (lost["attempt"], lost["status"], lost["parent"]) == (1, "preempted", None)
    assert (latest["attempt"], latest["parent"], latest["exit_code"]) == (2, lost["id"], 7)


def test_without_recover_a_preempted_run_just_fails(
    vp_env: VpEnv,
    vast_emulator,  # noqa: F811
    remote_workdir,
):
    host = 'platform = "vast"\ngpu = "4090"\nspot = true'
    _project(vp_env, remote_workdir, host, vast=vast_emulator)
    run = start(vp_env, "sh", "-c", TRAIN)
    run.wait_out(b"wrote\n")
    [first] = list(vast_emulator.instances)
    vast_emulator.preempt(first)
    assert run.finish(timeout=120) == 1
    [error] = error_lines(run.stderr)
    assert "was stopped" in error and "recovering" not in run.stderr
    assert list(vast_emulator.instances) == [first]


def test_a_network_drop_does_not_trigger_recovery(
    vp_env: VpEnv,
    vast_emulator,  # noqa: F811
    remote_workdir,
):
    host = 'platform = "vast"\ngpu = "4090"'
    _project(vp_env, remote_workdir, host, extra=RECOVER, vast=vast_emulator)
    assert vp_env.run("true").returncode == 0
    [iid] = list(vast_emulator.instances)
    run = start(vp_env, "sh", "-c", counting_script(12, 0.4, 3))
    run.wait_out(b"line2\n")
    # sshd (and every connection) drops; the provider still says running
    restart_sshd_keeping_jobs(
        vast_emulator.hosts[iid], while_down=lambda: run.wait_err("reconnecting")
    )
    code = run.finish()
    assert code == 3, run.stderr
    assert run.stdout.split() == expected_lines(12)
    assert "recovering" not in run.stderr
    assert list(vast_emulator.instances) == [iid] and vast_emulator.creates == 1


def test_spot_on_runpod_rents_an_interruptible_pod(
    vp_env: VpEnv,
    runpod_emulator,  # noqa: F811
    remote_workdir,
):
    host = 'platform = "runpod"\ngpu = "4090"\nspot = true'
    _project(vp_env, remote_workdir, host, runpod=runpod_emulator)
    offers = json.loads(vp_env.run("-o", "json", "offers").stdout)
    assert [(o["spot"], o["price_per_hour"]) for o in offers] == [(True, 0.17)]  # the minimum bid
    r = vp_env.run("echo", "ok")
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
    assert "spot = True is ignored" not in r.stderr  # honoured
    [pod] = runpod_emulator.instances.values()
    assert pod["podType"] == "INTERRUPTABLE" and pod["costPerHr"] == pytest.approx(0.17)
    rows = json.loads(vp_env.run("-o", "json", "ls").stdout)
    assert [row["spot"] for row in rows] == [True]


def test_a_detached_run_recovers_while_vp_attach_follows_it(
    vp_env: VpEnv,
    vast_emulator,  # noqa: F811
    remote_workdir,
):
    host = 'platform = "vast"\ngpu = "4090"\nspot = true'
    _project(vp_env, remote_workdir, host, extra=RECOVER, vast=vast_emulator)
    script = 'echo "attempt=$VP_ATTEMPT"; if [ "$VP_ATTEMPT" = 1 ]; then sleep 600; fi; exit 5'
    r = vp_env.run("--detach", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    [first] = list(vast_emulator.instances)
    run = start(vp_env, "attach")
    run.wait_out(b"attempt=1\n")
    vast_emulator.preempt(first, wipe=lambda: _wipe(remote_workdir))
    code = run.finish(timeout=180)
    assert code == 5, run.stderr
    assert "attempt=2" in run.stdout
    assert "recovering, attempt 2 of 3" in run.stderr, run.stderr
    assert first not in vast_emulator.instances and len(_live(vast_emulator)) == 1
