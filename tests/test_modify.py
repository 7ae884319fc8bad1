"""`vp modify` and `vp clone` end to end: the CLI against the Thunder emulator (real sshd), and
the one-line refusal on a platform without the capability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.emulators.thunder import thunder_emulator  # noqa: F401

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def thunder_project(thunder_emulator, vp_env: VpEnv, remote_workdir: Path):  # noqa: F811
    vp_env.env["TNR_API_URL"] = thunder_emulator.url + "/v1"
    vp_env.env["TNR_API_TOKEN"] = thunder_emulator.api_key
    user_cfg = vp_env.home / ".config" / "vp" / "config.toml"
    user_cfg.parent.mkdir(parents=True, exist_ok=True)
    user_cfg.write_text('[thunder]\npoll_interval = 0.1\nuser = "root"\n')  # emulator: root
    vp_env.write_config(
        f"""
        [project]
        name = "mnist"

        [host]
        platform = "thunder"
        gpu = "A6000"
        max_price = 5.0
        ready_timeout = 60

        [sync]
        workdir = "{remote_workdir}"
        """
    )
    return thunder_emulator


def test_modify_then_clone_then_run_on_both(thunder_project, vp_env: VpEnv) -> None:
    emulator = thunder_project
    r = vp_env.run("echo", "made")
    assert r.returncode == 0 and r.stdout == "made\n", r.stderr
    [source] = emulator.instances

    r = vp_env.run("-o", "json", "modify", "--cpus", "8", "--disk-gb", "200")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert (row["id"], row["status"]) == (source, "running")
    # a6000: 8 vCPUs (4 beyond the first option), 200 GB (100 beyond the included 100)
    assert row["price_per_hour"] == pytest.approx(0.35 + 100 * 0.0003 + 4 * 0.04)
    assert (emulator.instances[source]["cpuCores"], emulator.instances[source]["storage"]) == (
        "8",
        200,
    )
    r = vp_env.run("echo", "after modify")  # same key, same pinned host key
    assert r.returncode == 0 and r.stdout == "after modify\n", r.stderr

    r = vp_env.run("-o", "json", "clone", source, "--name", "vp-mnist-copy")
    assert r.returncode == 0, r.stderr
    copy = json.loads(r.stdout)
    assert copy["id"] != source and copy["status"] == "running"
    assert copy["labels"]["snapshot"].startswith("vp-mnist-copy-")
    assert emulator.instances[copy["id"]]["storage"] == 200  # the modified disk's size

    r = vp_env.run("--host", copy["id"], "echo", "on the clone")
    assert r.returncode == 0 and r.stdout == "on the clone\n", r.stderr
    rows = json.loads(vp_env.run("-o", "json", "ls").stdout)
    assert sorted(row["id"] for row in rows) == sorted([source, copy["id"]])

    for ident in (source, copy["id"]):
        assert vp_env.run("down", "--yes", ident).returncode == 0
    assert emulator.instances == {} and emulator.live_sshd() == 0


def test_modify_with_nothing_to_change_is_a_usage_error(thunder_project, vp_env: VpEnv) -> None:
    r = vp_env.run("modify")
    assert r.returncode == 2 and "nothing to modify" in r.stderr
    assert thunder_project.requests == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["modify", "--gpus", "2"], "vast cannot modify hosts"),
        (["clone", "--name", "copy"], "vast cannot clone hosts"),
    ],
)
def test_a_platform_without_the_capability_says_so_in_one_line(
    vp_env: VpEnv, args: list[str], message: str
) -> None:
    vp_env.env["VAST_API_KEY"] = "unused"
    r = vp_env.run("-p", "vast", *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # the error and at most its hint
