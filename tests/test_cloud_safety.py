"""What a create or a reconnect may never do on a cloud host, end to end (`vp` against the vast.ai
emulator, real SDK, real sshd): leave an instance billing that nobody can log in to, or trust a
machine that now answers at a cloud host's old address.

- Ctrl-C while vp waits for a new host destroys it and says so; a second Ctrl-C during that
  destroy leaves it recorded with its key and says how to remove it (issue 10, item 12).
- A host-key mismatch on a cloud host asks the provider: gone → forget it and create a new one;
  still there → refuse, naming the host, never suggesting to delete the pin (item 7).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VpEnv, on_vast
from tests.emulators.vast import vast_emulator  # noqa: F401
from tests.sshhost import _keygen
from tests.waiting import wait_for

pytest.importorskip("vastai")
pytestmark = pytest.mark.timeout(180)

DELETE = r"DELETE /api/v0/instances/\d+/"


@pytest.fixture
def cloud(vast_emulator, vp_env: VpEnv, remote_workdir: Path):  # noqa: F811
    on_vast(vp_env, vast_emulator, remote_workdir, project="safe")
    return vast_emulator


def recorded(vp_env: VpEnv) -> list[dict]:
    """The hosts in vp's state DB, read by vp's own code under the user's environment."""
    code = (
        "import json; from vp.state import State; "
        "print(json.dumps([h.to_dict() for h in State().hosts()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=vp_env.env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def key_files(vp_env: VpEnv) -> list[str]:
    keys = vp_env.home / ".local/state/vp/keys"
    return sorted(p.name for p in keys.iterdir()) if keys.exists() else []


def interrupted_up(vp_env: VpEnv, emulator, *, twice: bool) -> tuple[int, str]:
    """`vp up` while the new instance never becomes ready: Ctrl-C once it is recorded, and with
    `twice` a second Ctrl-C while vp's destroy is held by a slow API."""
    emulator.never_ready = True
    if twice:
        emulator.delay_requests[DELETE] = 20.0
    child = vp_env.popen("up")
    try:

        def exited() -> str | None:
            return "vp exited" if child.poll() is not None else None

        wait_for(lambda: emulator.instances and recorded(vp_env), 60, gave_up=exited)
        child.send_signal(signal.SIGINT)
        if twice:
            wait_for(lambda: emulator.slow_seen(re.compile(DELETE)), 30, gave_up=exited)
            child.send_signal(signal.SIGINT)
        _out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
        emulator.delay_requests.pop(DELETE, None)
    return child.returncode, err.decode()


def test_ctrl_c_while_waiting_for_a_new_host_destroys_it_and_says_so(cloud, vp_env):
    code, err = interrupted_up(vp_env, cloud, twice=False)
    assert code == 130, err
    assert "interrupted while creating a vast.ai host; destroyed the new vast instance" in err
    assert "Traceback" not in err
    assert cloud.instances == {} and cloud.live_sshd() == 0
    assert recorded(vp_env) == [] and key_files(vp_env) == []


def test_second_ctrl_c_during_the_destroy_leaves_the_host_recorded_and_reachable(cloud, vp_env):
    code, err = interrupted_up(vp_env, cloud, twice=True)
    assert code == 130, err
    assert "Traceback" not in err
    (iid,) = list(cloud.instances)
    assert f"could not destroy the new vast instance {iid} (interrupted again)" in err
    assert f"vp down {iid}" in err
    (row,) = recorded(vp_env)
    assert row["id"] == iid and row["labels"].get("orphan")
    assert row["key_path"] and Path(row["key_path"]).exists()  # whoever pays can still log in

    r = vp_env.run("down", "--yes", iid)
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: iid not in cloud.instances)
    assert recorded(vp_env) == []


def test_cleanup_lists_a_host_a_failed_create_left_recorded_and_destroys_it_with_yes(cloud, vp_env):
    code, err = interrupted_up(vp_env, cloud, twice=True)
    assert code == 130, err
    (iid,) = list(cloud.instances)
    (row,) = recorded(vp_env)
    key = Path(row["key_path"])

    r = vp_env.run("-o", "json", "cleanup")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [(o["id"], o["why"]) for o in report["orphans"]] == [(iid, "create failed")]
    assert report["destroyed"] == [] and iid in cloud.instances and key.exists()
    r = vp_env.run("cleanup")
    assert "1 orphaned host(s) may be billing" in r.stderr and iid in r.stdout

    r = vp_env.run("-o", "json", "cleanup", "--orphans", "--yes")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["destroyed"] == [f"vast:{iid}"], (r.stdout, r.stderr)
    assert wait_for(lambda: iid not in cloud.instances)
    assert recorded(vp_env) == [] and not key.exists()
    assert json.loads(vp_env.run("-o", "json", "cleanup").stdout)["orphans"] == []


def rekey(emulator, iid: str) -> None:
    """Another machine at the same ip:port: the sshd standing in for `iid` comes back on its
    port with a new host key (its sessions, vp's shared connection included, die)."""
    host = emulator.hosts[iid]
    host.host_public_key = _keygen(host.host_key_path, "someone-else")
    host.restart()


def test_a_gone_cloud_host_whose_address_answers_with_another_key_is_forgotten(cloud, vp_env):
    r = vp_env.run("true")
    assert r.returncode == 0, r.stderr
    (old,) = list(cloud.instances)
    alias = f"vp-vast-{old}"
    assert _pinned(vp_env, alias)

    with cloud.lock:  # destroyed behind vp's back; another machine now holds its address
        offer = cloud.offers[cloud.instances.pop(old)["ask_id"]]
        offer["rented"], offer["rentable"] = False, True
    rekey(cloud, old)

    r = vp_env.run("true")
    assert r.returncode == 0, r.stderr
    assert f"vast host vp-safe ({old}) no longer exists" in r.stderr
    assert "creating" in r.stderr
    (new,) = list(cloud.instances)
    assert new != old
    assert not _pinned(vp_env, alias) and _pinned(vp_env, f"vp-vast-{new}")
    assert [h["id"] for h in recorded(vp_env)] == [new]


def test_a_cloud_host_still_there_with_another_key_is_refused_without_suggesting_unpinning(
    cloud, vp_env
):
    r = vp_env.run("true")
    assert r.returncode == 0, r.stderr
    (iid,) = list(cloud.instances)
    rekey(cloud, iid)

    r = vp_env.run("true")
    assert r.returncode == 1, r.stderr
    assert f"vast host vp-safe ({iid})" in r.stderr and "refusing to connect" in r.stderr
    for unpin in ("ssh-keygen", "remove its line", "known_hosts"):
        assert unpin not in r.stderr
    assert list(cloud.instances) == [iid]  # nothing created, nothing destroyed
    assert _pinned(vp_env, f"vp-vast-{iid}")


def _pinned(vp_env: VpEnv, alias: str) -> bool:
    known = vp_env.home / ".local/state/vp/known_hosts"
    found = subprocess.run(["ssh-keygen", "-F", alias, "-f", str(known)], capture_output=True)
    return found.returncode == 0 and bool(found.stdout.strip())


def test_a_hashed_known_hosts_file_still_pins_refuses_and_forgets(cloud, vp_env):
    """`HashKnownHosts yes` in the user's ssh config hashes vp's pins too; vp finds them
    through ssh-keygen, so a changed key is still refused and a gone host still forgotten."""
    ssh_dir = vp_env.home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "config").write_text("HashKnownHosts yes\n")
    for _ in range(2):  # create and pin; then verify against the hashed pin
        r = vp_env.run("true")
        assert r.returncode == 0, r.stderr
    (iid,) = list(cloud.instances)
    alias = f"vp-vast-{iid}"
    known = vp_env.home / ".local/state/vp/known_hosts"
    assert alias not in known.read_text() and known.read_text().startswith("|1|")
    assert _pinned(vp_env, alias)

    rekey(cloud, iid)
    r = vp_env.run("true")
    assert r.returncode == 1 and "refusing to connect" in r.stderr, r.stderr
    assert list(cloud.instances) == [iid] and _pinned(vp_env, alias)

    with cloud.lock:  # now destroyed behind vp's back, its address answering with that key
        offer = cloud.offers[cloud.instances.pop(iid)["ask_id"]]
        offer["rented"], offer["rentable"] = False, True
    r = vp_env.run("true")
    assert r.returncode == 0, r.stderr
    assert f"vast host vp-safe ({iid}) no longer exists" in r.stderr
    (new,) = list(cloud.instances)
    assert not _pinned(vp_env, alias) and _pinned(vp_env, f"vp-vast-{new}")
