"""vp.platforms.thunder (vp's own REST client) against the Thunder Compute emulator and real
sshd."""

from __future__ import annotations

import json
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
    HostSpec,
    SupportsClone,
    SupportsModify,
)
from vp.state import State

try:
    from tests.conftest import VpEnv
    from tests.emulators.common import Response, interrupt_create, ssh_run
    from tests.emulators.thunder import (
        LEGACY_PRICING,
        thunder_emulator,  # noqa: F401 - fixture
    )
except ImportError:  # tests/ itself is on sys.path (rootdir-less import mode)
    from conftest import VpEnv  # type: ignore[no-redef]
    from emulators.common import Response, interrupt_create, ssh_run  # type: ignore[no-redef]
    from emulators.thunder import (
        LEGACY_PRICING,  # type: ignore[no-redef]
        thunder_emulator,  # type: ignore[no-redef]  # noqa: F401
    )

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
def legacy(env):
    """The API as thunder-cli v2.0.59 knew it: no /v2, keys with a mode suffix."""
    env.legacy = True
    env.pricing = dict(LEGACY_PRICING)
    return env


@pytest.fixture
def thunder(env):
    # Real instances log in as ubuntu; the emulator's sshd runs as root.
    return get_platform("thunder", {"poll_interval": 0.1, "user": "root"})


def _stopped(emulator, iid: str) -> None:
    """No endpoint stops an instance any more; an old one may still be STOPPED."""
    with emulator.lock:
        emulator.instances[iid]["status"] = "STOPPED"


def ssh(host, key_path, emulator, workdir):
    sshd = emulator.hosts[host.id]
    return ssh_run(
        host.ssh_host, host.ssh_port, host.ssh_user, key_path, sshd.host_public_key, workdir
    )


def test_offers_come_from_todays_mode_free_v2_catalogue(thunder, env):
    h100 = thunder.offers(HostSpec(gpu="h100"))
    assert [(o.id, o.price) for o in h100] == [("h100_x1", 2.19)]
    assert h100[0].gpu == "NVIDIA H100" and h100[0].extra["mode"] is None
    assert ("GET", "/v2/pricing") in env.requests and ("GET", "/v1/pricing") not in env.requests
    assert ("GET", "/v2/specs") in env.requests and ("GET", "/v2/status") in env.requests
    assert [o.id for o in thunder.offers(HostSpec(gpu="H100", gpus=8))] == ["h100_x8"]
    assert [o.id for o in thunder.offers(HostSpec(gpu="l40", gpus=4))] == ["l40_x4"]
    assert [o.id for o in thunder.offers(HostSpec(gpu="a100", max_price=1.5))] == ["a100xl_x1"]
    everything = thunder.offers(HostSpec())
    assert [o.price for o in everything] == sorted(o.price for o in everything)
    assert {o.id for o in everything} == {"a6000_x1", "l40_x1", "a100xl_x1", "h100_x1"}
    # A configuration /v2/status calls unavailable is not offered.
    env.unavailable.add("a6000_x1")
    assert thunder.offers(HostSpec(gpu="a6000")) == []


def test_offers_are_priced_as_thundercli_prices_them(thunder, env):
    # thunder-cli utils/pricing.go: rate + vCPUs beyond the first option x additional_vcpus
    # + disk beyond 100 GB per GPU x disk_gb.
    assert thunder.offers(HostSpec(gpu="a6000"))[0].price == pytest.approx(0.35)
    assert thunder.offers(HostSpec(gpu="a6000", disk_gb=300))[0].price == pytest.approx(
        0.35 + 200 * 0.0003
    )
    assert thunder.offers(HostSpec(gpu="a6000", cpus=8))[0].price == pytest.approx(0.35 + 4 * 0.04)
    two = HostSpec(gpu="a100", gpus=2, disk_gb=200)  # 200 GB are included with 2 GPUs
    assert thunder.offers(two)[0].price == pytest.approx(2.18)
    two.disk_gb = 300
    assert thunder.offers(two)[0].price == pytest.approx(2.18 + 100 * 0.0003)


def test_the_old_moded_v1_catalogue_still_parses(legacy):
    thunder = get_platform("thunder", {"poll_interval": 0.1, "user": "root"})
    h100 = thunder.offers(HostSpec(gpu="h100"))
    assert [(o.id, o.price) for o in h100] == [
        ("h100_x1_prototyping", 1.38),
        ("h100_x1_production", 2.19),
    ]
    assert h100[0].extra["mode"] == "prototyping"
    assert ("GET", "/v2/pricing") in legacy.requests  # tried first, 404, then /v1
    assert ("GET", "/v1/specs") in legacy.requests and ("GET", "/v1/status") in legacy.requests
    # Disk beyond the 100 GB included is billed, as thunder-cli v2.0.59 computed it.
    assert thunder.offers(HostSpec(gpu="t4", disk_gb=300))[0].price == pytest.approx(0.27 + 0.04)
    production = get_platform("thunder", {"mode": "production"})
    assert {o.extra["mode"] for o in production.offers(HostSpec())} == {"production"}
    host = thunder.create(HostSpec(gpu="t4"), "vp-old")
    [body] = _bodies(legacy, "POST /v1/instances/create")
    assert body["mode"] == "prototyping" and body["gpu_type"] == "t4"
    thunder.destroy(host.id)


def test_mode_free_keys_win_over_leftover_suffixed_ones(thunder, env):
    env.pricing["h100_x1_prototyping"] = 0.01  # served beside today's keys: not an offer
    assert [o.id for o in thunder.offers(HostSpec(gpu="h100"))] == ["h100_x1"]


def test_create_never_exceeds_max_price(thunder, env):
    with pytest.raises(VpError, match=r"cheapest is \$2\.19/h") as info:
        thunder.create(HostSpec(gpu="H100", max_price=1.0), "vp-mnist")
    assert "\n" not in str(info.value)
    assert env.instances == {}


def test_lifecycle_create_ssh_destroy(thunder, env, tmp_path):
    host = thunder.create(HostSpec(gpu="h100", max_price=2.5), "vp-mnist")
    assert host.key_path and host.host_key_alias == f"vp-thunder-{host.id}"
    assert host.status == PENDING and host.ssh_host is None  # ip is null until RUNNING
    [body] = _bodies(env, "POST /v1/instances/create")
    assert "mode" not in body and (body["gpu_type"], body["num_gpus"]) == ("h100", 1)
    [inst] = env.instances.values()
    assert (inst["gpuType"], inst["cpuCores"]) == ("h100", "4")
    assert inst["sshPublicKeys"][0].startswith("ssh-ed25519 ")
    assert host.labels["uuid"] == inst["uuid"]

    ready = thunder.wait_ready(host.id, timeout=30)
    assert ready.status == RUNNING and ready.ssh_host == "127.0.0.1"
    assert ssh(ready, host.key_path, env, tmp_path).returncode == 0

    # Listed only once vp's state recorded creating it, and only for its project.
    assert thunder.list("mnist") == []
    State().save_host(ready, "mnist")
    [listed] = thunder.list("mnist")
    assert (listed.id, listed.status, listed.name) == (host.id, RUNNING, inst["name"])
    assert thunder.list("other") == [] and [h.id for h in thunder.list()] == [host.id]

    thunder.destroy(host.id)
    assert thunder.list() == []
    assert env.instances == {} and env.live_sshd() == 0
    thunder.destroy(host.id)  # idempotent
    assert env.errors == []


def test_stop_and_start_refuse_in_one_line_naming_the_alternative(thunder, env):
    host = thunder.create(HostSpec(gpu="a6000"), "vp-mnist")
    for verb in (thunder.stop, thunder.start):
        with pytest.raises(VpError, match="no stop or start") as info:
            verb(host.id)
        assert "\n" not in str(info.value) and "vp down" in info.value.hint
        assert "snapshot" in info.value.hint
    assert not any(p.endswith(("/stop", "/start")) for _m, p in env.requests)
    thunder.destroy(host.id)


def test_an_instance_id_reused_after_a_delete_is_not_ours(thunder, env):
    """Thunder's ids are small integers; vp's record of "3" says nothing about a new "3"."""
    host = thunder.wait_ready(thunder.create(HostSpec(gpu="a6000"), "vp-mnist").id, timeout=30)
    State().save_host(host, "mnist")
    with env.lock:
        env.instances[host.id]["uuid"] = "someone-elses"  # deleted, and the id handed out again
    assert thunder.list("mnist") == []
    thunder.destroy(host.id)


def test_gets_are_retried_on_503_a_create_is_not(thunder, env):
    original = env.handle
    answered: list[str] = []

    def flaky(req):
        line = f"{req.method} {req.path}"
        answered.append(line)
        if answered.count(line) == 1 and line in ("GET /v2/pricing", "POST /v1/instances/create"):
            return Response(503, {"error": "upstream", "message": "bad gateway", "code": 503})
        return original(req)

    env.handle = flaky
    assert [o.id for o in thunder.offers(HostSpec(gpu="h100"))] == ["h100_x1"]
    assert answered.count("GET /v2/pricing") == 2
    with pytest.raises(VpError, match="HTTP 503"):
        thunder.create(HostSpec(gpu="h100"), "vp-mnist")
    env.handle = original
    assert answered.count("POST /v1/instances/create") == 1 and env.instances == {}


def test_default_user_is_ubuntu(env):
    assert get_platform("thunder", {}).list() == []
    env_host = get_platform("thunder", {})._host("7", {"status": "RUNNING", "ip": "10.0.0.1"})
    assert (env_host.ssh_user, env_host.ssh_port) == ("ubuntu", 22)


def test_server_made_key_is_stored_0600(thunder, env, tmp_path):
    env.ignore_public_key = True  # answers with a private key of its own making
    host = thunder.create(HostSpec(gpu="a6000"), "vp-keys")
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
    host = thunder.create(HostSpec(gpu="l40"), "vp-mnist")
    thunder.wait_ready(host.id, timeout=30)
    env.boot_delay = 0.5
    changed = thunder.modify(host.id, gpu="A6000", cpus=8, disk_gb=200)
    assert changed.status == PENDING and changed.labels["thunder_status"] == "MODIFYING"
    assert changed.ssh_host is None  # no address while it restarts on the new hardware
    assert changed.price == pytest.approx(0.35 + 100 * 0.0003 + 4 * 0.04)  # the new config's
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
    host = thunder.create(HostSpec(gpu="a6000", disk_gb=150), "vp-mnist")
    thunder.wait_ready(host.id, timeout=30)
    cases = [
        ({}, "nothing to modify"),
        ({"disk_gb": 120}, "cannot shrink"),
        ({"cpus": 5}, "1x a6000 takes 4, 8 vCPUs, not 5"),
        ({"gpu": "b200"}, "has no b200 GPU$"),
        ({"gpus": 8}, "offers no 8x a6000$"),
    ]
    for kwargs, message in cases:
        with pytest.raises(VpError, match=message) as info:
            thunder.modify(host.id, **kwargs)
        assert "\n" not in str(info.value)
    _stopped(env, host.id)
    with pytest.raises(VpError, match="only modify a RUNNING instance.*STOPPED") as info:
        thunder.modify(host.id, cpus=8)
    assert info.value.hint == "wait until it is running"
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
    assert (new["template"], new["gpuType"], new["storage"]) == (snapshot, "h100", 150)
    assert "mode" not in _bodies(env, "POST /v1/instances/create")[-1]
    assert copy.price == pytest.approx(2.19 + 50 * 0.0003)
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
    host = thunder.create(HostSpec(gpu="a6000"), "vp-mnist")
    thunder.wait_ready(host.id, timeout=30)
    _stopped(env, host.id)
    with pytest.raises(VpError, match="only clone a RUNNING instance"):
        thunder.clone(host.id, "vp-copy")
    assert env.snapshots == {}
    thunder.destroy(host.id)


def test_clone_without_capacity_leaves_no_instance_snapshot_or_key(thunder, env, tmp_path):
    host = thunder.create(HostSpec(gpu="a6000"), "vp-mnist")
    thunder.wait_ready(host.id, timeout=30)
    env.capacity_error = True
    with pytest.raises(VpError, match="no capacity for 1x a6000"):
        thunder.clone(host.id, "vp-copy")
    assert list(env.instances) == [host.id] and env.snapshots == {}
    keys_dir = tmp_path / "state" / "vp" / "keys"
    assert not any(p.name.startswith("vp-copy") for p in keys_dir.iterdir())
    thunder.destroy(host.id)


def test_clone_failure_after_accept_deletes_the_new_instance_and_snapshot(thunder, env):
    host = thunder.create(HostSpec(gpu="a6000"), "vp-mnist")
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
    code = "import sys, vp.platforms.thunder; print({'requests', 'urllib3'} & set(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "set()"


# -- ownership through the CLI: an instance made outside vp is never the project's -------------


@pytest.fixture
def project(thunder_emulator, vp_env: VpEnv, remote_workdir: Path):  # noqa: F811
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


def test_a_colleagues_instance_is_never_adopted_listed_or_destroyed(project, vp_env: VpEnv):
    foreign = project.create_foreign("a6000")  # same GPU, RUNNING, sshd up: adoptable
    r = vp_env.run("-p", "thunder", "true")
    assert r.returncode == 0, r.stderr
    assert "creating" in r.stderr
    [own] = [iid for iid in project.instances if iid != foreign]

    rows = json.loads(vp_env.run("-o", "json", "ls").stdout)
    assert [row["id"] for row in rows] == [own]
    rows = json.loads(vp_env.run("-o", "json", "ls", "--all").stdout)
    assert [row["id"] for row in rows] == [own]

    r = vp_env.run("stop")
    assert r.returncode == 1 and "no stop or start" in r.stderr and "Traceback" not in r.stderr
    r = vp_env.run("down", "--yes", foreign)
    assert r.returncode != 0 and foreign in project.instances
    r = vp_env.run("down", "--yes")
    assert r.returncode == 0, r.stderr
    assert list(project.instances) == [foreign]
    assert project.instances[foreign]["status"] == "RUNNING" and foreign in project.hosts


def test_idle_stop_is_said_to_be_unavailable_on_every_run(
    project, vp_env: VpEnv, remote_workdir: Path
):
    """No stop on Thunder and no scoped credential to delete from the host: vp installs no
    watchdog (a guest shutdown would stop no billing) and says so each time. (The test sshds
    share one remote home with other tests, so the watchdog's files there prove nothing.)"""
    config = vp_env.project / "vp.toml"
    config.write_text(config.read_text().replace("[sync]", "idle_stop_minutes = 1\n\n[sync]"))
    for _ in range(2):
        r = vp_env.run("true")
        assert r.returncode == 0, r.stderr
        assert "idle_stop_minutes has no effect on thunder hosts" in r.stderr
        assert "bills until deleted" in r.stderr
    assert vp_env.run("down", "--yes").returncode == 0
