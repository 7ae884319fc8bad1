"""vp.platforms.runpod against the RunPod GraphQL emulator, through the real runpod SDK and
real sshd."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.requires import require_module

require_module("runpod")

from vp.errors import VpError  # noqa: E402
from vp.platforms import get_platform  # noqa: E402
from vp.platforms.base import PENDING, RUNNING, STOPPED, HostSpec  # noqa: E402

try:
    from tests.emulators.common import interrupt_create, ssh_run, wait_for
    from tests.emulators.runpod import runpod_emulator  # noqa: F401 - fixture
except ImportError:  # tests/ itself is on sys.path (rootdir-less import mode)
    from emulators.common import interrupt_create, ssh_run, wait_for  # type: ignore[no-redef]
    from emulators.runpod import runpod_emulator  # type: ignore[no-redef]  # noqa: F401

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def env(runpod_emulator, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("RUNPOD_API_BASE_URL", runpod_emulator.url)
    monkeypatch.setenv("RUNPOD_API_KEY", runpod_emulator.api_key)
    return runpod_emulator


@pytest.fixture
def runpod(env):
    return get_platform("runpod", {"poll_interval": 0.1})


def ssh(host, key_path, emulator, workdir):
    sshd = emulator.hosts[host.id]
    return ssh_run(
        host.ssh_host, host.ssh_port, host.ssh_user, key_path, sshd.host_public_key, workdir
    )


def test_offers_are_sorted_by_price_and_filtered(runpod):
    h100 = runpod.offers(HostSpec(gpu="h100"))
    assert [o.gpu for o in h100] == ["H100 PCIe", "H100 SXM"]
    assert [o.price for o in h100] == [1.99, 2.69]
    # Price is per pod: per-GPU price times the count; types that cannot hold 8 drop out.
    assert [(o.gpu, o.price) for o in runpod.offers(HostSpec(gpu="H100", gpus=8))] == [
        ("H100 SXM", 21.52)
    ]
    assert [o.gpu for o in runpod.offers(HostSpec(gpu="H100", max_price=2.5))] == ["H100 PCIe"]
    everything = runpod.offers(HostSpec())
    assert [o.price for o in everything] == sorted(o.price for o in everything)
    assert {o.platform for o in everything} == {"runpod"}


def test_create_never_exceeds_max_price(runpod, env):
    with pytest.raises(VpError, match=r"cheapest is \$1\.99/h") as info:
        runpod.create(HostSpec(gpu="H100", max_price=1.0), "vp-mnist")
    assert "\n" not in str(info.value)
    assert env.instances == {}


def test_lifecycle_create_ssh_stop_start_destroy(runpod, env, tmp_path):
    host = runpod.create(HostSpec(gpu="4090", max_price=0.5, disk_gb=40), "vp-mnist")
    assert host.key_path and host.host_key_alias == f"vp-runpod-{host.id}"
    assert host.status == PENDING
    [pod] = env.instances.values()
    assert pod["name"] == "vp-mnist" and pod["ports"] == "22/tcp"
    assert pod["env"][0].startswith("PUBLIC_KEY=ssh-ed25519 ")
    assert pod["costPerHr"] == 0.34

    ready = runpod.wait_ready(host.id, timeout=30)
    assert ready.status == RUNNING and ready.ssh_user == "root"
    assert ready.ssh_host == "127.0.0.1"  # the public entry, not the private 100.65.x.x one
    assert ssh(ready, host.key_path, env, tmp_path).returncode == 0

    [listed] = runpod.list("mnist")
    assert (listed.id, listed.status, listed.gpu) == (host.id, RUNNING, "RTX 4090")
    assert runpod.list("other") == []

    runpod.stop(host.id)
    wait_for(lambda: runpod.list("mnist")[0].status == STOPPED)
    assert ssh(ready, host.key_path, env, tmp_path).returncode == 255

    runpod.start(host.id)
    again = runpod.wait_ready(host.id, timeout=30)
    assert ssh(again, host.key_path, env, tmp_path).returncode == 0

    runpod.destroy(host.id)
    assert runpod.list("mnist") == []
    assert env.instances == {} and env.live_sshd() == 0
    runpod.destroy(host.id)  # idempotent
    assert env.errors == []


def test_wrong_key_is_one_line_naming_the_env_var(env, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", "wrong-secret-1234")
    with pytest.raises(VpError) as info:
        get_platform("runpod", {}).list()
    message = str(info.value)
    assert "RUNPOD_API_KEY" in message and "wrong-secret-1234" not in message
    assert "\n" not in message and "rejected" in message


def test_fail_auth(runpod, env):
    env.fail_auth = True
    with pytest.raises(VpError, match="RUNPOD_API_KEY"):
        runpod.offers(HostSpec())


def test_missing_key_names_env_var_and_file(env, monkeypatch):
    monkeypatch.delenv("RUNPOD_API_KEY")
    with pytest.raises(VpError) as info:
        get_platform("runpod", {}).list()
    assert "RunPod" in str(info.value)
    assert "RUNPOD_API_KEY" in info.value.hint and "config.toml" in info.value.hint


def test_settings_key_wins(env, monkeypatch):
    monkeypatch.delenv("RUNPOD_API_KEY")
    assert get_platform("runpod", {"api_key": env.api_key}).list() == []


def test_capacity_error_leaves_nothing(runpod, env):
    env.capacity_error = True
    with pytest.raises(VpError, match="no capacity") as info:
        runpod.create(HostSpec(gpu="4090"), "vp-mnist")
    assert "\n" not in str(info.value) and "no longer any instances" in str(info.value)
    assert env.instances == {} and env.live_sshd() == 0


def test_price_above_max_after_create_destroys_the_pod(runpod, env):
    # The catalog says $0.34/h, but the machine the pod lands on bills more: never keep it.
    env.billed_price = 0.9
    with pytest.raises(VpError, match=r"above max_price.*destroyed the new RunPod pod"):
        runpod.create(HostSpec(gpu="4090", max_price=0.5), "vp-mnist")
    assert env.instances == {} and env.live_sshd() == 0


def test_never_ready_times_out_then_destroy_leaves_zero(runpod, env):
    env.never_ready = True
    host = runpod.create(HostSpec(gpu="4090"), "vp-mnist")
    with pytest.raises(VpError, match="not ready after"):
        runpod.wait_ready(host.id, timeout=1.5)
    runpod.destroy(host.id)
    assert env.instances == {} and env.live_sshd() == 0


def test_ctrl_c_after_accept_destroys_the_new_host(env, tmp_path):
    done = interrupt_create(env, "runpod", {}, {"gpu": "4090"}, r"pod\(input: \{podId")
    assert done.returncode == 130, done.stdout + done.stderr
    assert done.stdout.startswith("Interrupted ") and "destroyed the new RunPod pod" in done.stdout
    assert env.instances == {} and env.live_sshd() == 0
    assert list((tmp_path / "state" / "vp" / "keys").iterdir()) == []  # its key went too


def test_ctrl_c_before_runpod_answers_the_create_terminates_what_it_made(env, tmp_path):
    """Issue 10 item 12: the pod exists but vp was interrupted before learning its id; the
    pod's PUBLIC_KEY (made for this create alone) finds it, not another pod of the same name."""
    other = get_platform("runpod", {}).create(HostSpec(gpu="4090"), "vp-interrupted")
    done = interrupt_create(env, "runpod", {}, {"gpu": "4090"}, r"podFindAndDeploy", hold=True)
    assert done.returncode == 130, done.stdout + done.stderr
    assert "interrupted while creating a RunPod host; destroyed the new" in done.stdout
    assert list(env.instances) == [other.id] and env.errors == []
    get_platform("runpod", {}).destroy(other.id)


def test_importing_the_module_does_not_import_the_sdk():
    code = "import sys, vp.platforms.runpod; print('runpod' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
