"""`vp -p CLOUD CMD` end to end against each provider's emulator (real SDK, real sshd):
create on first use, reuse without a create, stop then start again on the next run (Thunder,
which has no stop, refuses in one line), and `vp down --yes` leaves nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.emulators.runpod import runpod_emulator  # noqa: F401
from tests.emulators.thunder import thunder_emulator  # noqa: F401
from tests.emulators.vast import vast_emulator  # noqa: F401
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(240)

CLOUDS = {
    # name: (emulator fixture, endpoint env, key env, url suffix, gpu, user-file settings)
    "vast": ("vast_emulator", "VAST_URL", "VAST_API_KEY", "", "4090", "poll_interval = 0.1"),
    "runpod": (
        "runpod_emulator",
        "RUNPOD_API_BASE_URL",
        "RUNPOD_API_KEY",
        "",
        "4090",
        "poll_interval = 0.1",
    ),
    "thunder": (
        "thunder_emulator",
        "TNR_API_URL",
        "TNR_API_TOKEN",
        "/v1",
        "A100",
        'poll_interval = 0.1\nuser = "root"',  # the emulator's hosts log in as root
    ),
}


def _setup(name: str, request, vp_env: VpEnv, workdir: Path):
    fixture, url_env, key_env, suffix, gpu, settings = CLOUDS[name]
    emulator = request.getfixturevalue(fixture)
    vp_env.env[url_env] = emulator.url + suffix
    vp_env.env[key_env] = emulator.api_key
    user_cfg = vp_env.home / ".config" / "vp" / "config.toml"
    user_cfg.parent.mkdir(parents=True, exist_ok=True)
    user_cfg.write_text(f"[{name}]\n{settings}\n")
    vp_env.write_config(
        f"""
        [project]
        name = "mnist"

        [host]
        platform = "{name}"
        gpu = "{gpu}"
        max_price = 5.0
        ready_timeout = 60

        [sync]
        workdir = "{workdir}"
        """
    )
    return emulator


def _live(emulator) -> list[str]:
    return [iid for iid, rec in emulator.instances.items() if iid in emulator.hosts]


@pytest.mark.parametrize("name", list(CLOUDS))
def test_create_reuse_stop_start_down(
    name: str, request, vp_env: VpEnv, remote_workdir: Path
) -> None:
    emulator = _setup(name, request, vp_env, remote_workdir)
    (vp_env.project / "train.py").write_text("open('out.txt', 'w').write('trained')\nprint('ok')\n")

    r = vp_env.run("python3", "train.py")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n"
    assert "creating" in r.stderr
    # what was rented and its price, in the provider's own words
    assert re.search(rf"rented 1x [^\n]+ at \$\d+\.\d\d/h[^\n]* on {name}\n", r.stderr), r.stderr
    if name == "vast":
        assert "at $0.36/h in Texas, US on vast" in r.stderr, r.stderr
    assert (vp_env.project / "out.txt").read_text() == "trained"
    assert len(emulator.instances) == 1

    # the warm path makes no provider API call: it works while the API refuses us
    emulator.fail_auth = True
    r = vp_env.run("python3", "-c", "print('again')")
    emulator.fail_auth = False
    assert r.returncode == 0 and r.stdout == "again\n", r.stderr
    assert "creating" not in r.stderr
    assert len(emulator.instances) == 1  # reused, no second create

    status = json.loads(vp_env.run("-o", "json", "status").stdout)
    assert status["status"] == "running" and status["price_per_hour"] > 0
    assert status["uptime_s"] >= 0 and status["cost_usd"] >= 0

    ls = vp_env.run("-o", "json", "ls")
    assert ls.returncode == 0, ls.stderr
    rows = json.loads(ls.stdout)
    assert [row["status"] for row in rows] == ["running"]

    r = vp_env.run("stop")
    if name == "thunder":  # Thunder has no stop: one line that says what to do instead
        assert r.returncode == 1 and "no stop or start" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        rows = json.loads(vp_env.run("-o", "json", "ls").stdout)
        assert [row["status"] for row in rows] == ["stopped"]

        r = vp_env.run("echo", "back")
        assert r.returncode == 0 and r.stdout == "back\n", r.stderr
        # a restart is not silent: which host, stopped since when, on which platform
        assert re.search(rf"starting vp-mnist \(stopped \d+ s ago\) on {name}", r.stderr), r.stderr
        assert len(emulator.instances) == 1

    r = vp_env.run("down", "--yes")
    assert r.returncode == 0, r.stderr
    assert _live(emulator) == []
    assert emulator.live_sshd() == 0


@pytest.mark.parametrize("name", ["vast"])
def test_never_ready_create_leaves_nothing(
    name: str, request, vp_env: VpEnv, remote_workdir: Path
) -> None:
    emulator = _setup(name, request, vp_env, remote_workdir)
    emulator.never_ready = True
    cfg = vp_env.project / "vp.toml"
    cfg.write_text(cfg.read_text().replace("ready_timeout = 60", "ready_timeout = 3"))
    r = vp_env.run("true")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "destroy" in r.stderr
    assert _live(emulator) == []


@pytest.mark.parametrize("name", ["runpod"])
def test_max_price_is_respected(name: str, request, vp_env: VpEnv, remote_workdir: Path) -> None:
    emulator = _setup(name, request, vp_env, remote_workdir)
    cfg = vp_env.project / "vp.toml"
    cfg.write_text(cfg.read_text().replace("max_price = 5.0", "max_price = 0.01"))
    r = vp_env.run("true")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert emulator.instances == {}


def test_auto_picks_the_cheapest(request, vp_env: VpEnv, remote_workdir: Path) -> None:
    emulators = {name: _setup(name, request, vp_env, remote_workdir) for name in ("vast", "runpod")}
    user_cfg = vp_env.home / ".config" / "vp" / "config.toml"
    user_cfg.write_text("[vast]\npoll_interval = 0.1\n[runpod]\npoll_interval = 0.1\n")
    r = vp_env.run("-p", "auto", "-o", "json", "offers", "--gpu", "4090")
    assert r.returncode == 0, r.stderr
    offers = json.loads(r.stdout)
    assert {o["platform"] for o in offers} == {"vast", "runpod"}
    assert [o["price"] for o in offers] == sorted(o["price"] for o in offers)
    cheapest = offers[0]
    r = vp_env.run("-p", "auto", "echo", "hi")
    assert r.returncode == 0, r.stderr
    assert f"on {cheapest['platform']}" in r.stderr
    # the host was rented where the offer was (whichever emulator's offer is the cheaper)
    made = {name: len(emulator.instances) for name, emulator in emulators.items()}
    assert made == {name: int(name == cheapest["platform"]) for name in emulators}, made


@pytest.fixture
def vm_cloud(request, vp_env: VpEnv, remote_workdir: Path):
    """An AWS (moto) or GCE emulator whose instances are network-namespace sshd hosts on
    port 22, with the project pointed at it."""
    name = request.param
    if name == "aws":
        from tests.emulators.aws import AwsEmulator as Emulator
    else:
        from tests.emulators.gce import GceEmulator as Emulator  # type: ignore[assignment]
    with Emulator(request.getfixturevalue("tmp_path") / f"{name}-emu") as emulator:
        vp_env.env.update(emulator.env())
        user_cfg = vp_env.home / ".config" / "vp" / "config.toml"
        user_cfg.parent.mkdir(parents=True, exist_ok=True)
        # the emulators' hosts let root in (EC2 would say ubuntu, GCE the metadata user)
        user_cfg.write_text(f'[{name}]\nuser = "root"\npoll_interval = 0.1\n')
        vp_env.write_config(
            f"""
            [project]
            name = "mnist"

            [host]
            platform = "{name}"
            gpu = "T4"
            max_price = 5.0
            ready_timeout = 90

            [sync]
            workdir = "{remote_workdir}"
            """
        )
        yield name, emulator


@pytest.mark.parametrize("vm_cloud", ["aws", "gce"], indirect=True)
def test_vm_cloud_create_reuse_stop_start_down(vm_cloud, vp_env: VpEnv) -> None:
    name, emulator = vm_cloud
    r = vp_env.run("sh", "-c", "echo made > out.txt; echo ok")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n" and "creating" in r.stderr
    assert (vp_env.project / "out.txt").read_text() == "made\n"

    r = vp_env.run("echo", "again")
    assert r.stdout == "again\n" and "creating" not in r.stderr, r.stderr

    assert vp_env.run("stop").returncode == 0
    # the VM comes back at a new address; its pinned host key still matches
    r = vp_env.run("echo", "back")
    assert r.returncode == 0 and r.stdout == "back\n", r.stderr
    assert re.search(rf"starting vp-mnist\S* \(stopped \d+ s ago\) on {name}", r.stderr), r.stderr

    rows = json.loads(vp_env.run("-o", "json", "ls").stdout)
    assert [row["status"] for row in rows] == ["running"]
    r = vp_env.run("down", "--yes")
    assert r.returncode == 0, r.stderr
    rows = json.loads(vp_env.run("-o", "json", "ls").stdout)
    assert [row for row in rows if row["status"] != "gone"] == []


def test_create_shows_a_live_status_on_a_terminal(request, vp_env: VpEnv, remote_workdir: Path):
    emulator = _setup("vast", request, vp_env, remote_workdir)
    emulator.boot_delay = 2.0
    seen = vp_env.stderr_on_a_terminal("true")
    assert b"waiting for vp-mnist" in seen
    assert b"0:00:0" in seen  # rich's elapsed-time column, redrawn while it waits

    # a restart shows the same live status, saying which host and since when it was stopped
    assert vp_env.run("stop").returncode == 0
    seen = vp_env.stderr_on_a_terminal("true")
    assert re.search(rb"starting vp-mnist \(stopped \d+ s ago\) on vast", seen), seen
    assert b"0:00:0" in seen
    assert vp_env.run("down", "--yes").returncode == 0


# How long one `vp --nodes 2` call may take on a loaded 2-core machine: two VMs to boot in
# the emulator (sshd in a network namespace each), reach, sync and launch on.
NODES_LOADED = 300


def _loaded(vp_env: VpEnv) -> None:
    config = vp_env.project / "vp.toml"
    config.write_text(config.read_text().replace("ready_timeout = 90", "ready_timeout = 240"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("vm_cloud", ["aws", "gce"], indirect=True)
def test_vp_nodes_on_a_vm_cloud_every_rank_is_the_projects(vm_cloud, vp_env: VpEnv) -> None:
    """Node 1 carries the project's label and its rank: listed as the project's and marked,
    reused by rank (GCE names its VMs NAME-SUFFIX), stopped and destroyed with rank 0."""
    name, emulator = vm_cloud

    def live() -> list:
        return emulator.live_instances() if name == "aws" else list(emulator.instances.values())

    _loaded(vp_env)
    r = vp_env.run("--nodes", "2", "true", timeout=NODES_LOADED)
    assert r.returncode == 0, r.stderr
    rows = json.loads(vp_env.run("-o", "json", "ls").stdout)
    assert [(row["node"], row["project"], row["status"]) for row in rows] == [
        (0, "mnist", "running"),
        (1, "mnist", "running"),
    ]
    assert rows[1]["name"].startswith("vp-mnist-1")
    assert "(node 1)" in vp_env.run("ls").stdout
    r = vp_env.run("--nodes", "2", "true", timeout=NODES_LOADED)
    assert r.returncode == 0, r.stderr
    assert "creating" not in r.stderr and len(live()) == 2
    r = vp_env.run("stop", timeout=NODES_LOADED)
    assert r.returncode == 0, r.stderr
    rows = json.loads(vp_env.run("-o", "json", "ls").stdout)
    assert [row["status"] for row in rows] == ["stopped", "stopped"]
    r = vp_env.run("down", "--yes", timeout=NODES_LOADED)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: live() == [], timeout=60, what="both VMs deleted")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("vm_cloud", ["aws"], indirect=True)
def test_vp_nodes_on_aws_puts_the_nodes_in_one_subnet_open_to_each_other(
    vm_cloud, vp_env: VpEnv
) -> None:
    _name, emulator = vm_cloud
    _loaded(vp_env)
    r = vp_env.run("--nodes", "2", "sh", "-c", 'echo "rank $NODE_RANK"', timeout=NODES_LOADED)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "rank 0\n"
    insts = emulator.live_instances()
    assert len(insts) == 2
    assert len({i.subnet_id for i in insts}) == 1  # EC2 alone would pick two AZs
    import boto3

    ec2 = boto3.client(
        "ec2",
        endpoint_url=emulator.endpoint,
        region_name=emulator.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    (group,) = ec2.describe_security_groups(GroupNames=["vp-ssh"])["SecurityGroups"]
    sg = group["GroupId"]
    assert {g.id for i in insts for g in i.security_groups} == {sg}
    perms = group["IpPermissions"]
    members = [(p["IpProtocol"], [u["GroupId"] for u in p["UserIdGroupPairs"]]) for p in perms]
    assert ("-1", [sg]) in members
    assert all(groups in ([], [sg]) for _proto, groups in members)
    world = [p for p in perms if any(r["CidrIp"] == "0.0.0.0/0" for r in p["IpRanges"])]
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"]) for p in world] == [("tcp", 22, 22)]
    # A second run reuses both nodes: each is labelled with the project, not a project of its own.
    r = vp_env.run("--nodes", "2", "true", timeout=NODES_LOADED)
    assert r.returncode == 0, r.stderr
    assert "creating" not in r.stderr and len(emulator.live_instances()) == 2
    for node in ("vp-mnist", "vp-mnist-1"):
        r = vp_env.run("down", "--yes", node)
        assert r.returncode == 0, r.stderr
    assert emulator.live_instances() == []


@pytest.mark.parametrize("vm_cloud", ["gce"], indirect=True)
def test_vp_nodes_on_gce_stops_before_any_vm_when_the_nodes_rule_cannot_be_made(
    vm_cloud, vp_env: VpEnv
) -> None:
    _name, emulator = vm_cloud
    emulator.firewalls_denied = True
    r = vp_env.run("--nodes", "2", "true")
    assert r.returncode != 0
    assert "vp: error: gce: creating firewall rule vp-nodes failed: permission denied" in r.stderr
    assert "--source-tags=vp-ssh --target-tags=vp-ssh" in r.stderr
    assert "Traceback" not in r.stderr
    assert emulator.inserts == []
