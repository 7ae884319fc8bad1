"""The gce platform, driven through google-cloud-compute's REST transport against an emulator
that speaks the compute v1 wire format and boots real sshd hosts in network namespaces.

Credentials are a real service-account file: the client signs its own JWTs with its key and
the emulator verifies them. The emulator's hosts log everyone in with the authorized keys, but
only root exists on the test machine, so the tests set `user = "root"`; the metadata line vp
writes (`USER:KEY`) then names root, and the product code path is otherwise the real one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.requires import requires
from vp.errors import VpError
from vp.platforms.base import RUNNING, STOPPED, Host, HostSpec
from vp.platforms.gce import create_platform

try:
    from tests.emulators.gce import GceEmulator
except ImportError:  # tests/ itself is on sys.path (rootdir-less import mode)
    from emulators.gce import GceEmulator  # type: ignore[no-redef]

pytestmark = requires(
    os.geteuid() == 0 and shutil.which("ip") is not None and os.path.exists("/usr/sbin/sshd"),
    reason="needs root, iproute2 and sshd for namespace hosts",
)

ZONE = "us-central1-a"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory):
    with GceEmulator(tmp_path_factory.mktemp("gce-emu")) as emu:
        yield emu


@pytest.fixture
def env(emulator: GceEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for var in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCE_METADATA_HOST"):
        monkeypatch.delenv(var, raising=False)
    for var, value in emulator.env().items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    emulator.clear_faults()
    yield emulator
    emulator.clear_faults()
    assert not emulator.errors, emulator.errors[0]


@pytest.fixture
def gce(env):
    return create_platform({"user": "root", "poll_interval": 0.05})


def eventually(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def ssh(host: Host, host_public_key: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Log in the way vp does: the host's own key, its host key pinned under its alias."""
    known = tmp_path / "known_hosts"
    known.write_text(f"{host.host_key_alias} {host_public_key}\n")
    argv = ["ssh", "-F", "/dev/null", "-i", host.key_path, "-p", str(host.ssh_port)]
    for option in (
        "IdentitiesOnly=yes",
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        f"UserKnownHostsFile={known}",
        f"HostKeyAlias={host.host_key_alias}",
        "ConnectTimeout=3",
    ):
        argv += ["-o", option]
    argv += [f"{host.ssh_user}@{host.ssh_host}", "true"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def netns_exists(name: str) -> bool:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return any(line.split()[0] == name for line in out.splitlines() if line.strip())


def key_files(tmp_path: Path) -> list[str]:
    keys = tmp_path / "state" / "vp" / "keys"
    return sorted(p.name for p in keys.iterdir()) if keys.exists() else []


def metadata(body: dict) -> dict[str, str]:
    return {i["key"]: i["value"] for i in body["metadata"]["items"]}


# ------------------------------------------------------------------------------ offers


def test_offers_are_sorted_filtered_and_capped_by_max_price():
    gce = create_platform({"zone": "europe-west4-a"})
    t4 = gce.offers(HostSpec(gpu="T4"))
    assert [o.id for o in t4] == ["n1-standard-4+nvidia-tesla-t4"]
    assert t4[0].region == "europe-west4-a" and t4[0].gpus == 1

    every = gce.offers(HostSpec())
    assert [o.price for o in every] == sorted(o.price for o in every)
    assert {o.gpu for o in every} >= {"T4", "L4", "A100", "V100"}

    capped = gce.offers(HostSpec(max_price=1.0))
    assert capped and all(o.price <= 1.0 for o in capped)
    assert gce.offers(HostSpec(gpu="A100", max_price=3.0)) == []
    assert [o.gpus for o in gce.offers(HostSpec(gpu="nvidia-l4", gpus=3))] == [4]
    assert gce.offers(HostSpec(gpu="H100", gpus=8))[0].id == "a3-highgpu-8g"


# ------------------------------------------------------------------------------ lifecycle


def test_host_lifecycle_create_ssh_stop_start_destroy(gce, emulator, tmp_path):
    host = gce.create(HostSpec(gpu="T4", disk_gb=120), "vp-mnist")
    assert host.name.startswith("vp-mnist-") and host.id == host.name
    assert host.host_key_alias == f"vp-gce-{host.id}"
    assert host.gpu == "T4" and host.price == 0.54
    assert os.stat(host.key_path).st_mode & 0o777 == 0o600

    body = emulator.inserts[-1]
    assert body["machineType"].endswith("/machineTypes/n1-standard-4")
    assert body["guestAccelerators"] == [
        {"acceleratorType": f"zones/{ZONE}/acceleratorTypes/nvidia-tesla-t4", "acceleratorCount": 1}
    ]
    assert body["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert body["networkInterfaces"][0]["accessConfigs"][0]["type"] == "ONE_TO_ONE_NAT"
    assert body["labels"]["vp-project"] == "mnist"
    assert body["tags"]["items"] == ["vp-ssh"]
    rule = emulator.firewalls["vp-ssh"]
    assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
    assert rule["targetTags"] == ["vp-ssh"] and rule["direction"] == "INGRESS"
    meta = metadata(body)
    assert meta["ssh-keys"].startswith("root:ssh-ed25519 ")
    assert meta["enable-oslogin"] == "FALSE"
    assert body["disks"][0]["initializeParams"]["diskSizeGb"] == "120"
    # Every API call carried a JWT the client signed with the service account's key.
    assert emulator.auth_kinds and set(emulator.auth_kinds) == {"self-signed-jwt"}

    host = gce.wait_ready(host.id, timeout=20)
    assert host.status == RUNNING and host.ssh_port == 22
    sshd = emulator.host(host.id)
    assert host.ssh_host == sshd.address
    result = ssh(host, sshd.host_public_key, tmp_path)
    assert result.returncode == 0, result.stderr

    assert [h.id for h in gce.list("mnist")] == [host.id]
    assert gce.list("another") == []

    gce.stop(host.id)
    assert eventually(lambda: gce.list("mnist")[0].status == STOPPED)
    assert gce.list("mnist")[0].ssh_host is None  # the ephemeral natIP is released
    assert ssh(host, sshd.host_public_key, tmp_path).returncode == 255

    old_ip = host.ssh_host
    gce.start(host.id)
    host = gce.wait_ready(host.id, timeout=20)
    assert host.ssh_host != old_ip  # a new natIP on every start
    result = ssh(host, sshd.host_public_key, tmp_path)  # same pinned host key
    assert result.returncode == 0, result.stderr

    netns = emulator.host(host.id).netns
    gce.destroy(host.id)
    assert eventually(lambda: emulator.instance(host.id) is None)
    assert eventually(lambda: not netns_exists(netns))
    assert gce.list("mnist") == []
    assert key_files(tmp_path) == []
    gce.destroy(host.id)  # idempotent


def test_spot_host_is_stoppable_and_gpu_machine_types_need_no_accelerator(gce, emulator):
    host = gce.create(HostSpec(gpu="L4", spot=True), "vp-spot")
    body = emulator.inserts[-1]
    assert body["machineType"].endswith("/g2-standard-4")
    assert "guestAccelerators" not in body  # G2 machines come with their L4
    assert body["scheduling"]["provisioningModel"] == "SPOT"
    assert body["scheduling"]["instanceTerminationAction"] == "STOP"
    assert body["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert host.labels["market"] == "spot"
    gce.destroy(host.id)
    assert eventually(lambda: emulator.instance(host.id) is None)


# ------------------------------------------------------------------------------ nodes


def test_tagged_vms_reach_each_other_and_the_internet_only_port_22(gce, emulator):
    # The ssh rule alone (a project vp used before it opened the nodes' ports): vp adds the
    # nodes' rule next to it.
    emulator.firewalls.pop("vp-nodes", None)
    gce.create(HostSpec(gpu="T4"), "vp-ssh-first")  # makes vp-ssh if an earlier test did not
    emulator.firewalls.pop("vp-nodes", None)

    gce = create_platform({"user": "root", "poll_interval": 0.05})
    gce.expect_nodes("vp-net")
    hosts = [gce.create(HostSpec(gpu="T4"), name) for name in ("vp-net", "vp-net-1")]
    rule = emulator.firewalls["vp-nodes"]
    assert rule["direction"] == "INGRESS" and rule["network"].endswith("/networks/default")
    assert rule["sourceTags"] == ["vp-ssh"] and rule["targetTags"] == ["vp-ssh"]
    assert "sourceRanges" not in rule
    assert sorted(a["IPProtocol"] for a in rule["allowed"]) == ["icmp", "tcp", "udp"]
    assert all("ports" not in a for a in rule["allowed"])  # every port
    assert all(body["tags"]["items"] == ["vp-ssh"] for body in emulator.inserts[-2:])
    world = {
        n: r for n, r in emulator.firewalls.items() if "0.0.0.0/0" in r.get("sourceRanges", [])
    }
    assert list(world) == ["vp-ssh"]
    assert world["vp-ssh"]["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]

    again = create_platform({"user": "root", "poll_interval": 0.05})
    again.expect_nodes("vp-net")
    hosts.append(again.create(HostSpec(gpu="T4"), "vp-net-2"))  # the rule there: no error
    assert emulator.firewalls["vp-nodes"] == rule
    for host in hosts:
        gce.destroy(host.id)


def test_without_the_right_to_open_the_nodes_ports_a_node_is_refused_a_host_is_not(
    gce, emulator, tmp_path
):
    emulator.firewalls.pop("vp-nodes", None)
    emulator.firewalls_denied = True
    host = gce.create(HostSpec(gpu="T4"), "vp-alone")  # one host needs no rule between hosts
    gce.destroy(host.id)

    node = create_platform({"user": "root", "poll_interval": 0.05})
    node.expect_nodes("vp-denied")
    inserts = len(emulator.inserts)
    with pytest.raises(VpError, match="vp-nodes") as err:
        node.create(HostSpec(gpu="T4"), "vp-denied")
    assert "permission" in err.value.message and "\n" not in err.value.message
    assert "--source-tags=vp-ssh" in err.value.hint
    assert len(emulator.inserts) == inserts  # refused before any VM was made
    assert key_files(tmp_path) == []


# ------------------------------------------------------------------------------ faults


@pytest.mark.parametrize(
    ("fault", "words"),
    [("exhausted", "no capacity (ZONE_RESOURCE_POOL_EXHAUSTED)"), ("quota", "QUOTA_EXCEEDED")],
)
def test_zone_without_capacity_is_one_line_suggesting_another_zone(
    gce, emulator, tmp_path, fault, words
):
    if fault == "exhausted":
        emulator.exhausted_zones.add(ZONE)
    else:
        emulator.quota_exceeded = True
    with pytest.raises(VpError) as err:
        gce.create(HostSpec(gpu="T4"), "vp-full")
    assert words in err.value.message and "\n" not in err.value.message
    assert "another zone" in err.value.hint and "us-central1-b" in err.value.hint
    assert not [k for k in emulator.instances if k[1].startswith("vp-full")]
    assert key_files(tmp_path) == []


def test_never_ready_times_out_then_destroy_leaves_nothing(gce, emulator, tmp_path):
    emulator.never_ready = True
    host = gce.create(HostSpec(gpu="T4"), "vp-stuck")
    with pytest.raises(VpError, match="not ready after 1s") as err:
        gce.wait_ready(host.id, timeout=1)
    assert "ssh not answering" in err.value.message
    netns = emulator.host(host.id).netns
    gce.destroy(host.id)
    assert eventually(lambda: emulator.instance(host.id) is None)
    assert eventually(lambda: not netns_exists(netns))
    assert key_files(tmp_path) == []


def test_rejected_credentials_are_one_error_with_a_hint(gce, emulator, tmp_path):
    emulator.fail_auth = True
    inserts = len(emulator.inserts)
    with pytest.raises(VpError, match="not authenticated") as err:
        gce.create(HostSpec(gpu="T4"), "vp-noauth")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in err.value.hint
    assert len(emulator.inserts) == inserts
    assert key_files(tmp_path) == []
    with pytest.raises(VpError, match="not authenticated"):
        gce.list()


def test_unknown_project_is_a_usage_hint(env, tmp_path):
    gce = create_platform({"project": "not-mine", "user": "root"})
    with pytest.raises(VpError, match="not-mine") as err:
        gce.create(HostSpec(gpu="T4"), "vp-x")
    assert "[gce] project" in (err.value.hint or "")
    assert key_files(tmp_path) == []


def test_emulator_token_endpoint_serves_the_jwt_bearer_flow(env):
    """google-auth's service-account token flow (signed assertion -> access token at the
    file's token_uri) works against the emulator too, and the token opens the API."""
    import json

    import requests
    from google.auth import crypt, jwt
    from google.auth.transport.requests import Request
    from google.oauth2 import _client

    info = json.loads(env.service_account_file.read_text())
    now = int(time.time())
    assertion = jwt.encode(
        crypt.RSASigner.from_service_account_info(info),
        {
            "iss": info["client_email"],
            "aud": info["token_uri"],
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "iat": now,
            "exp": now + 600,
        },
    )
    token, _expiry, _extra = _client.jwt_grant(Request(), info["token_uri"], assertion)
    assert token.startswith("ya29.emulated-")
    url = f"{env.url}/compute/v1/projects/{env.project}/zones/{ZONE}/instances"
    ok = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert ok.status_code == 200 and env.auth_kinds[-1] == "access-token"
    bad = requests.get(url, headers={"Authorization": "Bearer forged"}, timeout=10)
    assert bad.status_code == 401 and bad.json()["error"]["status"] == "UNAUTHENTICATED"


CREATE_SCRIPT = """
import sys
from vp.errors import VpError
from vp.platforms import get_platform
from vp.platforms.base import HostSpec
try:
    get_platform("gce", {"user": "root", "poll_interval": 0.05}).create(
        HostSpec(gpu="T4"), "vp-interrupted"
    )
except VpError as exc:
    print(type(exc).__name__, exc.message)
    sys.exit(exc.exit_code)
print("created")
"""


def test_ctrl_c_while_gce_creates_deletes_the_new_instance(env, tmp_path):
    env.insert_delay = 30
    inserts = len(env.inserts)
    child = subprocess.Popen(
        [sys.executable, "-c", CREATE_SCRIPT],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert eventually(lambda: len(env.inserts) > inserts, 30)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, out + err
    assert out.startswith("Interrupted ") and "deleted the new gce instance vp-interrupted-" in out
    assert eventually(lambda: not [k for k in env.instances if "interrupted" in k[1]])
    assert key_files(tmp_path) == []


def test_importing_the_module_does_not_import_the_sdk():
    code = "import sys, vp.platforms.gce; print(any(m.startswith('google') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
