"""vp.platforms.thunder (vp's own REST client) against the Thunder Compute emulator and real
sshd."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vp.errors import VpError
from vp.platforms import get_platform
from vp.platforms.base import (
    PENDING,
    RUNNING,
    STOPPED,
    HostSpec,
    SupportsClone,
    SupportsModify,
)

try:
    from tests.emulators.common import Response, interrupt_create, ssh_run, wait_for
    from tests.emulators.thunder import thunder_emulator  # noqa: F401 - fixture
except ImportError:  # tests/ itself is on sys.path (rootdir-less import mode)
    from emulators.common import Response, interrupt_create, ssh_run, wait_for  # type: ignore[no-redef]
    from emulators.thunder import thunder_emulator  # type: ignore[no-redef]  # noqa: F401

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def env(thunder_emulator, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("TNR_API_URL", thunder_emulator.url + "/v1")
    monkeypatch.setenv("TNR_API_TOKEN", thunder_emulator.api_key)
    return thunder_emulator


@pytest.fixture
def thunder(env):
    # Real instances log in as ubuntu; the emulator's sshd runs as root.
    return get_platform("thunder", {"poll_interval": 0.1, "user": "root"})


def ssh(host, key_path, emulator, workdir):
    sshd = emulator.hosts[host.id]
    return ssh_run(
        host.ssh_host, host.ssh_port, host.ssh_user, key_path, sshd.host_public_key, workdir
    )


def test_offers_are_sorted_by_price_and_filtered(thunder, env):
    h100 = thunder.offers(HostSpec(gpu="h100"))
    assert [(o.id, o.price) for o in h100] == [
        ("h100_x1_prototyping", 1.38),
        ("h100_x1_production", 2.19),
    ]
    assert h100[0].gpu == "NVIDIA H100" and h100[0].extra["mode"] == "prototyping"
    assert [o.id for o in thunder.offers(HostSpec(gpu="H100", gpus=8))] == ["h100_x8_production"]
    assert [o.id for o in thunder.offers(HostSpec(gpu="a100", max_price=1.0))] == [
        "a100xl_x1_prototyping"
    ]
    # Disk beyond the 100 GB included is billed, as Thunder's own CLI computes it.
    assert thunder.offers(HostSpec(gpu="t4", disk_gb=300))[0].price == pytest.approx(0.27 + 0.04)
    everything = thunder.offers(HostSpec())
    assert [o.price for o in everything] == sorted(o.price for o in everything)
    # A configuration /v1/status calls unavailable is not offered.
    env.unavailable.add("t4_x1_prototyping")
    assert thunder.offers(HostSpec(gpu="t4")) == []


def test_mode_setting_restricts_offers(env):
    production = get_platform("thunder", {"mode": "production"})
    assert {o.extra["mode"] for o in production.offers(HostSpec())} == {"production"}


def test_create_never_exceeds_max_price(thunder, env):
    with pytest.raises(VpError, match=r"cheapest is \$1\.38/h") as info:
        thunder.create(HostSpec(gpu="H100", max_price=1.0), "vp-mnist")
    assert "\n" not in str(info.value)
    assert env.instances == {}


def test_lifecycle_create_ssh_stop_start_destroy(thunder, env, tmp_path):
    host = thunder.create(HostSpec(gpu="h100", max_price=1.5), "vp-mnist")
    assert host.key_path and host.host_key_alias == f"vp-thunder-{host.id}"
    assert host.status == PENDING and host.ssh_host is None  # ip is null until RUNNING
    [inst] = env.instances.values()
    assert (inst["gpuType"], inst["mode"], inst["cpuCores"]) == ("h100", "prototyping", "4")
    assert inst["sshPublicKeys"][0].startswith("ssh-ed25519 ")

    ready = thunder.wait_ready(host.id, timeout=30)
    assert ready.status == RUNNING and ready.ssh_host == "127.0.0.1"
    assert ssh(ready, host.key_path, env, tmp_path).returncode == 0

    [listed] = thunder.list("mnist")  # no labels on Thunder: every instance is listed
    assert (listed.id, listed.status, listed.name) == (host.id, RUNNING, inst["name"])

    thunder.stop(host.id)
    wait_for(lambda: thunder.list()[0].status == STOPPED)
    assert ssh(ready, host.key_path, env, tmp_path).returncode == 255

    thunder.start(host.id)
    again = thunder.wait_ready(host.id, timeout=30)
    assert ssh(again, host.key_path, env, tmp_path).returncode == 0

    thunder.destroy(host.id)
    assert thunder.list() == []
    assert env.instances == {} and env.live_sshd() == 0
    thunder.destroy(host.id)  # idempotent
    assert env.errors == []


def test_default_user_is_ubuntu(env):
    assert get_platform("thunder", {}).list() == []
    env_host = get_platform("thunder", {})._host("7", {"status": "RUNNING", "ip": "10.0.0.1"})
    assert (env_host.ssh_user, env_host.ssh_port) == ("ubuntu", 22)


def test_server_made_key_is_stored_0600(thunder, env, tmp_path):
    env.ignore_public_key = True  # answers with a private key of its own making
    host = thunder.create(HostSpec(gpu="t4"), "vp-keys")
    assert stat.S_IMODE(os.stat(host.key_path).st_mode) == 0o600
    assert Path(host.key_path).read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    ready = thunder.wait_ready(host.id, timeout=30)
    assert ssh(ready, host.key_path, env, tmp_path).returncode == 0
    thunder.destroy(host.id)


def test_wrong_token_is_one_line_naming_the_env_var(env, monkeypatch):
    monkeypatch.setenv("TNR_API_TOKEN", "wrong-secret-1234")
    with pytest.raises(VpError) as info:
        get_platform("thunder", {}).list()
    message = str(info.value)
    assert "TNR_API_TOKEN" in message and "wrong-secret-1234" not in message
    assert "\n" not in message and "rejected" in message


def test_fail_auth(thunder, env):
    env.fail_auth = True
    with pytest.raises(VpError, match="TNR_API_TOKEN"):
        thunder.offers(HostSpec())


def test_missing_token_names_env_var_and_file(env, monkeypatch, tmp_path):
    monkeypatch.delenv("TNR_API_TOKEN")
    with pytest.raises(VpError) as info:
        get_platform("thunder", {}).list()
    assert "Thunder" in str(info.value)
    assert "TNR_API_TOKEN" in info.value.hint and "~/.thunder/token" in info.value.hint
    token_file = tmp_path / "home" / ".thunder" / "token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(env.api_key + "\n")
    assert get_platform("thunder", {}).list() == []


def test_api_url_without_v1_is_accepted(env, monkeypatch):
    monkeypatch.setenv("TNR_API_URL", env.url)  # what Thunder's Go CLI uses
    assert get_platform("thunder", {}).list() == []


def test_capacity_error_leaves_nothing(thunder, env):
    env.capacity_error = True
    with pytest.raises(VpError, match="no capacity") as info:
        thunder.create(HostSpec(gpu="h100"), "vp-mnist")
    assert "\n" not in str(info.value)
    assert env.instances == {} and env.live_sshd() == 0


def test_failure_after_accept_deletes_the_instance(thunder, env):
    env.fail_requests[r"GET /v1/instances/list"] = Response(
        500, {"error": "internal", "message": "boom", "code": 500}
    )
    with pytest.raises(VpError, match="deleted the new Thunder Compute instance"):
        thunder.create(HostSpec(gpu="h100"), "vp-mnist")
    env.fail_requests.clear()
    assert env.instances == {} and env.live_sshd() == 0


def test_never_ready_times_out_then_destroy_leaves_zero(thunder, env):
    env.never_ready = True
    host = thunder.create(HostSpec(gpu="h100"), "vp-mnist")
    with pytest.raises(VpError, match=r"not ready after.*PROVISIONING"):
        thunder.wait_ready(host.id, timeout=1.5)
    thunder.destroy(host.id)
    assert env.instances == {} and env.live_sshd() == 0


def test_ctrl_c_after_accept_destroys_the_new_host(env, tmp_path):
    done = interrupt_create(
        env, "thunder", {"user": "root"}, {"gpu": "h100"}, r"GET /v1/instances/list"
    )
    assert done.returncode == 130, done.stdout + done.stderr
    assert (
        done.stdout.startswith("Interrupted ")
        and "deleted the new Thunder Compute instance" in done.stdout
    )
    assert env.instances == {} and env.live_sshd() == 0
    assert list((tmp_path / "state" / "vp" / "keys").iterdir()) == []  # its key went too


# -- modify and clone (capabilities only Thunder has) ------------------------------------------


def _bodies(emulator, line: str) -> list[dict]:
    import json

    return [
        json.loads(text.split("\n", 1)[1] or "null")
        for text in emulator.request_texts
        if text.split("\n", 1)[0] == line
    ]


def test_thunder_has_the_modify_and_clone_capabilities_local_does_not(thunder):
    assert isinstance(thunder, SupportsModify) and isinstance(thunder, SupportsClone)
    local = get_platform("local", {})
    assert not isinstance(local, SupportsModify) and not isinstance(local, SupportsClone)


def test_modify_goes_through_modifying_and_keeps_the_key(thunder, env, tmp_path):
    host = thunder.create(HostSpec(gpu="t4"), "vp-mnist")
    thunder.wait_ready(host.id, timeout=30)
    env.boot_delay = 0.5
    changed = thunder.modify(host.id, gpu="A6000", cpus=8, disk_gb=200)
    assert changed.status == PENDING and changed.labels["thunder_status"] == "MODIFYING"
    assert changed.ssh_host is None  # no address while it restarts on the new hardware
    assert changed.price == pytest.approx(0.57 + 100 * 0.0002 + 4 * 0.02)  # the new config's
    assert _bodies(env, f"POST /v1/instances/{host.id}/modify") == [
        {"gpu_type": "a6000", "cpu_cores": 8, "disk_size_gb": 200}
    ]
    inst = env.instances[host.id]
    assert (inst["gpuType"], inst["cpuCores"], inst["storage"]) == ("a6000", "8", 200)
    ready = thunder.wait_ready(host.id, timeout=30)
    assert ready.gpu == "a6000" and ready.key_path == host.key_path
    assert ssh(ready, host.key_path, env, tmp_path).returncode == 0
    thunder.destroy(host.id)
    assert env.errors == []


def test_modify_to_a_config_without_the_current_vcpus_picks_its_first_option(thunder, env):
    host = thunder.create(HostSpec(gpu="a100"), "vp-mnist")  # a100xl x1: 4 vCPUs
    thunder.wait_ready(host.id, timeout=30)
    thunder.modify(host.id, gpus=2)  # a100xl x2 takes 8 or 16
    assert _bodies(env, f"POST /v1/instances/{host.id}/modify") == [{"num_gpus": 2, "cpu_cores": 8}]
    assert thunder.wait_ready(host.id, timeout=30).gpus == 2
    thunder.destroy(host.id)


def test_modify_refusals_are_one_line_and_send_nothing(thunder, env):
    host = thunder.create(HostSpec(gpu="t4", disk_gb=150), "vp-mnist")
    thunder.wait_ready(host.id, timeout=30)
    cases = [
        ({}, "nothing to modify"),
        ({"disk_gb": 120}, "cannot shrink"),
        ({"cpus": 5}, "takes 4, 8 vCPUs, not 5"),
        ({"gpu": "b200"}, "no b200 GPU in prototyping mode"),
        ({"gpus": 8}, "offers no 8x t4 in prototyping mode"),
    ]
    for kwargs, message in cases:
        with pytest.raises(VpError, match=message) as info:
            thunder.modify(host.id, **kwargs)
        assert "\n" not in str(info.value)
    thunder.stop(host.id)
    wait_for(lambda: env.instances[host.id]["status"] == "STOPPED")
    with pytest.raises(VpError, match="only modify a RUNNING instance.*STOPPED") as info:
        thunder.modify(host.id, cpus=8)
    assert info.value.hint == "start it first: vp start"
    assert not any(path.endswith("/modify") for _m, path in env.requests)
    thunder.destroy(host.id)


def test_clone_snapshots_the_disk_and_makes_a_new_host_with_its_own_key(thunder, env, tmp_path):
    host = thunder.create(HostSpec(gpu="h100", disk_gb=150), "vp-mnist")
    thunder.wait_ready(host.id, timeout=30)
    copy = thunder.clone(host.id, "vp-copy")
    assert copy.id != host.id and copy.key_path and copy.key_path != host.key_path
    assert copy.host_key_alias == f"vp-thunder-{copy.id}"
    snapshot = copy.labels["snapshot"]
    assert snapshot.startswith("vp-copy-")
    [created] = _bodies(env, "POST /v1/snapshots/create")
    assert created == {"instanceId": env.instances[host.id]["uuid"], "name": snapshot}
    new = env.instances[copy.id]
    assert (new["template"], new["gpuType"], new["mode"], new["storage"]) == (
        snapshot,
        "h100",
        "prototyping",
        150,
    )
    assert copy.price == pytest.approx(1.38 + 50 * 0.0002)
    ready = thunder.wait_ready(copy.id, timeout=30)
    assert ssh(ready, copy.key_path, env, tmp_path).returncode == 0
    # the source is untouched and running again after its SNAPPING phase
    assert thunder.wait_ready(host.id, timeout=30).status == RUNNING
    [snap] = env.snapshots.values()
    assert (snap["name"], snap["status"]) == (snapshot, "READY")  # kept; named in the label
    for h in (host, copy):
        thunder.destroy(h.id)
    assert env.live_sshd() == 0 and env.errors == []


def test_clone_of_a_stopped_host_is_refused(thunder, env):
    host = thunder.create(HostSpec(gpu="t4"), "vp-mnist")
    thunder.wait_ready(host.id, timeout=30)
    thunder.stop(host.id)
    wait_for(lambda: env.instances[host.id]["status"] == "STOPPED")
    with pytest.raises(VpError, match="only clone a RUNNING instance"):
        thunder.clone(host.id, "vp-copy")
    assert env.snapshots == {}
    thunder.destroy(host.id)


def test_clone_without_capacity_leaves_no_instance_snapshot_or_key(thunder, env, tmp_path):
    host = thunder.create(HostSpec(gpu="t4"), "vp-mnist")
    thunder.wait_ready(host.id, timeout=30)
    env.capacity_error = True
    with pytest.raises(VpError, match="no capacity for 1x t4"):
        thunder.clone(host.id, "vp-copy")
    assert list(env.instances) == [host.id] and env.snapshots == {}
    keys_dir = tmp_path / "state" / "vp" / "keys"
    assert not any(p.name.startswith("vp-copy") for p in keys_dir.iterdir())
    thunder.destroy(host.id)


def test_clone_failure_after_accept_deletes_the_new_instance_and_snapshot(thunder, env):
    host = thunder.create(HostSpec(gpu="t4"), "vp-mnist")
    thunder.wait_ready(host.id, timeout=30)
    original = env.handle

    def flaky(req):  # once Thunder has accepted the clone's create, listing instances fails
        if req.path == "/v1/instances/list" and ("POST", "/v1/instances/create") in env.requests:
            return Response(500, {"error": "internal", "message": "boom", "code": 500})
        return original(req)

    env.requests.clear()
    env.handle = flaky
    with pytest.raises(VpError, match="deleted the new Thunder Compute instance"):
        thunder.clone(host.id, "vp-copy")
    env.handle = original
    assert list(env.instances) == [host.id] and env.snapshots == {}
    thunder.destroy(host.id)


def test_importing_the_module_stays_light():
    code = "import sys, vp.platforms.thunder; print('requests' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
