"""The aws platform, driven through boto3 against moto plus real sshd hosts in namespaces.

Each emulated instance is a network-namespace sshd on port 22 whose veth address is the
instance's PublicIpAddress, so what is tested here is what a user gets: a host they can ssh to
with the key vp made for it, pinned under its host key alias across a stop/start that changes
the IP.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest

from tests.requires import requires
from vp.errors import VpError
from vp.platforms.aws import create_platform
from vp.platforms.base import GONE, RUNNING, STOPPED, Host, HostSpec

try:
    from tests.emulators.aws import DLAMI_NEW, AwsEmulator
except ImportError:  # tests/ itself is on sys.path (rootdir-less import mode)
    from emulators.aws import DLAMI_NEW, AwsEmulator  # type: ignore[no-redef]

pytestmark = requires(
    os.geteuid() == 0 and shutil.which("ip") is not None and os.path.exists("/usr/sbin/sshd"),
    reason="needs root, iproute2 and sshd for namespace hosts",
)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory):
    with AwsEmulator(tmp_path_factory.mktemp("aws-emu")) as emu:
        yield emu


@pytest.fixture
def aws(emulator: AwsEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in emulator.env().items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    emulator.clear_faults()
    # The emulator's hosts let root in with the instance's key pair; EC2 would say "ubuntu".
    yield create_platform({"user": "root", "poll_interval": 0.05})
    emulator.clear_faults()
    for inst in emulator.live_instances():  # a failed test must not leak into the next one
        emulator.backend.terminate_instances([inst.id])
    assert not emulator.errors, emulator.errors[0]


def ssh(host: Host, host_public_key: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Log in the way vp does: the host's own key, its host key pinned under its alias."""
    known = tmp_path / "known_hosts"
    known.write_text(f"{host.host_key_alias} {host_public_key}\n")
    argv = [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        host.key_path,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        f"HostKeyAlias={host.host_key_alias}",
        "-o",
        "ConnectTimeout=3",
        "-p",
        str(host.ssh_port),
        f"{host.ssh_user}@{host.ssh_host}",
        "true",
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def netns_exists(name: str) -> bool:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return any(line.split()[0] == name for line in out.splitlines() if line.strip())


def eventually(predicate, timeout: float = 10.0) -> bool:
    """The emulator's controller reacts to API calls a moment later, as a cloud does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def key_files(tmp_path: Path) -> list[str]:
    keys = tmp_path / "state" / "vp" / "keys"
    return sorted(p.name for p in keys.iterdir()) if keys.exists() else []


# ------------------------------------------------------------------------------ offers


def test_offers_are_sorted_filtered_and_capped_by_max_price():
    aws = create_platform({"region": "eu-west-1"})
    t4 = aws.offers(HostSpec(gpu="T4"))
    assert [o.id for o in t4] == ["g4dn.xlarge", "g4dn.2xlarge"]
    assert all(o.gpu == "T4" and o.gpus == 1 and o.region == "eu-west-1" for o in t4)

    every = aws.offers(HostSpec())
    assert [o.price for o in every] == sorted(o.price for o in every)
    assert {o.gpu for o in every} >= {"T4", "A10G", "L4"}

    capped = aws.offers(HostSpec(max_price=1.0))
    assert capped and all(o.price <= 1.0 for o in capped)
    assert "g5.xlarge" not in {o.id for o in capped}  # 1.006 $/h is above the cap

    assert [o.gpus for o in aws.offers(HostSpec(gpu="a10", gpus=4))] == [4]
    assert aws.offers(HostSpec(gpu="H100", gpus=8))[0].id == "p5.48xlarge"
    assert aws.offers(HostSpec(gpu="H100", max_price=10)) == []
    assert all(o.spot for o in aws.offers(HostSpec(gpu="L4", spot=True)))


# ------------------------------------------------------------------------------ lifecycle


def test_spot_host_lifecycle_create_ssh_stop_start_destroy(aws, emulator, tmp_path):
    host = aws.create(HostSpec(gpu="A10G", spot=True, max_price=1.1), "vp-mnist")
    assert host.id.startswith("i-") and host.name == "vp-mnist"
    assert host.labels["market"] == "spot" and host.labels["instance_type"] == "g5.xlarge"
    assert host.host_key_alias == f"vp-aws-{host.id}"
    assert os.stat(host.key_path).st_mode & 0o777 == 0o600
    assert host.price <= 1.1

    inst = emulator.instance(host.id)
    assert inst.image_id == DLAMI_NEW  # the newest Deep Learning AMI
    tags = {t["key"]: t["value"] for t in inst.get_tags()}
    assert tags["vp:project"] == "mnist" and tags["vp:managed"] == "true"
    request = emulator.spot_requests()[inst.spot_instance_request_id]
    assert (request.type, request.instance_interruption_behaviour) == ("persistent", "stop")
    group = inst.security_groups[0]
    assert group.name == "vp-ssh"
    assert any(r.from_port == 22 and r.to_port == 22 for r in group.ingress_rules)

    host = aws.wait_ready(host.id, timeout=20)
    assert host.status == RUNNING and host.ssh_port == 22
    sshd = emulator.hosts[host.id]
    assert host.ssh_host == sshd.address
    result = ssh(host, sshd.host_public_key, tmp_path)
    assert result.returncode == 0, result.stderr

    assert [h.id for h in aws.list("mnist")] == [host.id]
    assert aws.list("other-project") == []
    assert host.id in {h.id for h in aws.list()}

    aws.stop(host.id)
    emulator.wait_state(host.id, "stopped")
    stopped = aws.list("mnist")[0]
    assert stopped.status == STOPPED and stopped.ssh_host is None
    assert ssh(host, sshd.host_public_key, tmp_path).returncode == 255

    old_ip = host.ssh_host
    aws.start(host.id)
    host = aws.wait_ready(host.id, timeout=20)
    assert not emulator.errors, emulator.errors[0]
    assert host.ssh_host != old_ip  # EC2 hands out a new public IP on every start
    result = ssh(host, sshd.host_public_key, tmp_path)  # same pinned host key
    assert result.returncode == 0, result.stderr

    netns = emulator.hosts[host.id].netns
    key_name = inst.key_name
    aws.destroy(host.id)
    assert emulator.instance(host.id)._state.name == "terminated"
    assert emulator.spot_requests()[inst.spot_instance_request_id].state == "cancelled"
    assert key_name not in emulator.backend.key_pairs
    assert eventually(lambda: not netns_exists(netns))
    assert key_files(tmp_path) == []
    assert aws.list("mnist") == []
    aws.destroy(host.id)  # idempotent


def test_on_demand_host_and_data_volume(emulator, aws):
    aws = create_platform({"user": "root", "poll_interval": 0.05, "data_volume_gb": 20})
    host = aws.create(HostSpec(gpu="L4", disk_gb=80), "vp-vol")
    assert host.labels["market"] == "on-demand"
    assert emulator.launches[-1]["market"] == "on-demand"
    inst = emulator.instance(host.id)
    devices = dict(inst.get_block_device_mapping)
    assert devices["/dev/sda1"].size == 80
    data = devices["/dev/sdf"]
    assert data.size == 20 and data.delete_on_termination
    assert "mount /data" in emulator.user_data(host.id)
    aws.wait_ready(host.id, timeout=20)
    aws.destroy(host.id)
    assert emulator.instance(host.id)._state.name == "terminated"


# ------------------------------------------------------------------------------ nodes


def world_open(group: dict) -> list[dict]:
    """The group's ingress permissions that let in any address on the internet."""
    return [
        p
        for p in group["IpPermissions"]
        if any(r.get("CidrIp") == "0.0.0.0/0" for r in p.get("IpRanges", []))
        or any(r.get("CidrIpv6") == "::/0" for r in p.get("Ipv6Ranges", []))
    ]


def vp_group(aws) -> dict:
    groups = aws.ec2.describe_security_groups(GroupNames=["vp-ssh"])["SecurityGroups"]
    assert len(groups) == 1
    return groups[0]


def test_nodes_reach_each_other_through_the_group_and_the_internet_only_port_22(aws, emulator):
    # A vp-ssh group made before vp opened the nodes' ports (or by hand) gets the rule too.
    with suppress(Exception):
        group = vp_group(aws)
        members = [p for p in group["IpPermissions"] if p.get("UserIdGroupPairs")]
        if members:
            aws.ec2.revoke_security_group_ingress(GroupId=group["GroupId"], IpPermissions=members)

    aws.expect_nodes("vp-net")
    hosts = [aws.create(HostSpec(gpu="T4"), name) for name in ("vp-net", "vp-net-1")]
    group = vp_group(aws)
    sg = group["GroupId"]
    members = [
        p
        for p in group["IpPermissions"]
        if p["IpProtocol"] == "-1" and [u["GroupId"] for u in p["UserIdGroupPairs"]] == [sg]
    ]
    assert len(members) == 1  # all traffic, from the group's own members only
    assert all(
        pair["GroupId"] == sg for p in group["IpPermissions"] for pair in p["UserIdGroupPairs"]
    )
    opened = world_open(group)
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"]) for p in opened] == [("tcp", 22, 22)]

    # Both nodes are in the group, in one subnet (one AZ), though EC2 picks a subnet per launch.
    insts = [emulator.instance(h.id) for h in hosts]
    assert {g.id for i in insts for g in i.security_groups} == {sg}
    assert len({i.subnet_id for i in insts}) == 1

    # A later run that adds a node finds rank 0's subnet, and the rule already there is no error.
    again = create_platform({"user": "root", "poll_interval": 0.05})
    again.expect_nodes("vp-net")
    third = again.create(HostSpec(gpu="T4"), "vp-net-2")
    assert emulator.instance(third.id).subnet_id == insts[0].subnet_id
    assert vp_group(aws)["IpPermissions"] == group["IpPermissions"]
    for host in (*hosts, third):
        aws.destroy(host.id)


def test_a_single_host_is_not_pinned_to_a_subnet(aws, emulator):
    hosts = [aws.create(HostSpec(gpu="T4"), f"vp-solo{i}") for i in range(2)]
    assert len({emulator.instance(h.id).subnet_id for h in hosts}) == 2  # EC2's choice
    assert emulator.launches[-1]["subnet_id"] is None
    for host in hosts:
        aws.destroy(host.id)


# ------------------------------------------------------------------------------ faults


def test_spot_capacity_error_falls_back_to_on_demand(aws, emulator, tmp_path):
    emulator.fail_capacity("spot", "InsufficientInstanceCapacity")
    host = aws.create(HostSpec(gpu="T4", spot=True), "vp-fallback")
    assert host.labels["market"] == "on-demand"
    assert "spot_request" not in host.labels
    host = aws.wait_ready(host.id, timeout=20)
    result = ssh(host, emulator.hosts[host.id].host_public_key, tmp_path)
    assert result.returncode == 0, result.stderr
    aws.destroy(host.id)


@pytest.mark.parametrize("code", ["SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded"])
def test_other_spot_refusals_also_fall_back(aws, emulator, code):
    emulator.fail_capacity("spot", code)
    host = aws.create(HostSpec(gpu="T4", spot=True), "vp-fallback")
    assert host.labels["market"] == "on-demand"
    aws.destroy(host.id)


def test_no_capacity_anywhere_is_one_error_and_leaves_nothing(aws, emulator, tmp_path):
    emulator.fail_capacity("all")
    with pytest.raises(VpError) as err:
        aws.create(HostSpec(gpu="T4", spot=True), "vp-nocap")
    assert "capacity" in err.value.message and "\n" not in err.value.message
    assert "region" in err.value.hint
    assert emulator.live_instances() == []
    assert emulator.spot_requests() == {} or all(
        r.state == "cancelled" for r in emulator.spot_requests().values()
    )
    assert not [k for k in emulator.backend.key_pairs if k.startswith("aws-vp-nocap")]
    assert key_files(tmp_path) == []


def test_nothing_within_max_price_fails_before_any_launch(aws, emulator, tmp_path):
    launches = len(emulator.launches)
    with pytest.raises(VpError, match="within"):
        aws.create(HostSpec(gpu="A100", max_price=5.0), "vp-cheap")
    assert len(emulator.launches) == launches
    assert key_files(tmp_path) == []


def test_launch_that_fails_after_ec2_accepted_it_is_destroyed(aws, emulator, tmp_path):
    emulator.lose_run_response = True
    with pytest.raises(VpError, match="RunInstances"):
        aws.create(HostSpec(gpu="T4"), "vp-lost")
    assert emulator.live_instances() == []
    assert key_files(tmp_path) == []


def test_wait_ready_times_out_with_a_one_line_error(aws, emulator):
    emulator.boot_delay = 60
    host = aws.create(HostSpec(gpu="T4"), "vp-slow")
    with pytest.raises(VpError, match="not ready after"):
        aws.wait_ready(host.id, timeout=0.5)
    aws.destroy(host.id)
    assert emulator.instance(host.id)._state.name == "terminated"
    assert aws._get(host.id).status == GONE


CREATE_SCRIPT = """
import sys
from vp.errors import VpError
from vp.platforms import get_platform
from vp.platforms.base import HostSpec
try:
    get_platform("aws", {"user": "root"}).create(HostSpec(gpu="T4"), "vp-interrupted")
except VpError as exc:
    print(type(exc).__name__, exc.message)
    sys.exit(exc.exit_code)
print("created")
"""


def test_ctrl_c_while_ec2_launches_destroys_the_new_instance(aws, emulator, tmp_path):
    emulator.run_response_delay = 30
    env = {**os.environ, **emulator.env(), "XDG_STATE_HOME": str(tmp_path / "state")}
    child = subprocess.Popen(
        [sys.executable, "-c", CREATE_SCRIPT],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert eventually(lambda: emulator.delayed_runs and emulator.live_instances(), 20)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, out + err
    assert out.startswith("Interrupted ") and "destroyed the new aws instance i-" in out
    assert emulator.live_instances() == []
    assert key_files(tmp_path) == []


# ------------------------------------------------------------------------------ quotas


def test_offers_show_the_family_vcpu_quota_of_their_market(aws, emulator):
    emulator.quotas["L-3819A6DF"] = 32.0  # G and VT spot
    asked = emulator.quota_requests
    t4 = aws.offers(HostSpec(gpu="T4"))
    assert [(o.id, o.extra["vcpus"], o.extra["quota_vcpus"]) for o in t4] == [
        ("g4dn.xlarge", 4, 64),
        ("g4dn.2xlarge", 8, 64),
    ]
    assert {o.extra["quota_vcpus"] for o in aws.offers(HostSpec(gpu="T4", spot=True))} == {32}
    assert aws.offers(HostSpec(gpu="V100"))[0].extra["quota_vcpus"] == 192  # P on-demand
    aws.offers(HostSpec(gpu="L4"))
    assert emulator.quota_requests - asked == 3  # one GetServiceQuota per quota code


def test_unreadable_quotas_show_a_question_mark_and_block_nothing(aws, emulator, tmp_path):
    emulator.quotas_denied = True
    emulator.quotas["L-DB2E81BA"] = 0.0  # vp cannot see it, so it cannot stop for it
    asked = emulator.quota_requests
    offers = aws.offers(HostSpec(gpu="T4", spot=True))
    assert {o.extra["quota_vcpus"] for o in offers} == {"?"}
    assert emulator.quota_requests - asked == 1  # after one refusal vp stops asking
    host = aws.create(HostSpec(gpu="T4"), "vp-noquota")
    assert host.labels["instance_type"] == "g4dn.xlarge"
    aws.destroy(host.id)


def test_create_over_the_quota_fails_before_anything_is_made(aws, emulator, tmp_path):
    emulator.quotas["L-DB2E81BA"] = 0.0  # a new account: no on-demand G instances at all
    launches = len(emulator.launches)
    with pytest.raises(VpError) as err:
        aws.create(HostSpec(gpu="T4"), "vp-quota")
    message = err.value.message
    assert "\n" not in message
    assert "g4dn.xlarge needs 4 vCPUs" in message
    assert "'Running On-Demand G and VT instances' in us-east-1 is 0" in message
    assert "Service Quotas console" in err.value.hint
    assert len(emulator.launches) == launches
    assert not [k for k in emulator.backend.key_pairs if k.startswith("aws-vp-quota")]
    assert key_files(tmp_path) == []


def test_a_spot_quota_too_small_falls_back_to_on_demand(aws, emulator):
    emulator.quotas["L-3819A6DF"] = 2.0
    host = aws.create(HostSpec(gpu="T4", spot=True), "vp-spotquota")
    assert host.labels["market"] == "on-demand"
    assert emulator.launches[-1]["market"] == "on-demand"
    aws.destroy(host.id)


def test_vp_offers_renders_the_quota_column(emulator, vp_env, tmp_path):
    vp_env.env.update(emulator.env())
    emulator.quotas["L-DB2E81BA"] = 8.0
    r = vp_env.run("-p", "aws", "offers", "--gpu", "T4")
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split()[-1] == "QUOTA_VCPUS"
    assert [row.split()[-1] for row in rows] == ["8", "8"]
    r = vp_env.run("-p", "aws", "-o", "json", "offers", "--gpu", "T4")
    assert {o["extra"]["quota_vcpus"] for o in json.loads(r.stdout)} == {8}
    emulator.quotas_denied = True
    r = vp_env.run("-p", "aws", "offers", "--gpu", "T4")
    assert r.returncode == 0 and [row.split()[-1] for row in r.stdout.splitlines()[1:]] == [
        "?",
        "?",
    ], r.stderr
    emulator.clear_faults()


def test_importing_the_module_does_not_import_the_sdk():
    code = (
        "import sys, vp.platforms.aws; print('boto3' in sys.modules or 'botocore' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
