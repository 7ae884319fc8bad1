"""`vp --nodes N`: one command on N hosts at once (vp/nodes.py), end to end.

The nodes are real sshd hosts, each in its own network namespace with its own copy of the
workdir (a bind mount only its sessions see), linked to each other by veth pairs: a real
network between nodes, as on one cloud subnet. What each rank sees, a TCP rendezvous at
MASTER_ADDR:MASTER_PORT, the exit status and stopping of the others, Ctrl-C, and (vast
emulator) a create that fails for one node destroying the one that succeeded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.requires import require_module
from tests.sshhost import SshHost, link_hosts
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(480)
# How long one `vp --nodes` call may take on a loaded 2-core machine (six sessions' tests at
# once): several sshd hosts to reach and sync, each rank's launch over its own connection.
LOADED = 240


class Cluster:
    def __init__(self, vp_env: VpEnv, hosts: list[SshHost], workdir: Path) -> None:
        self.vp_env, self.hosts, self.workdir = vp_env, hosts, workdir

    def files(self, rank: int) -> Path:
        """Node `rank`'s workdir, as seen from this machine."""
        return self.hosts[rank].private_dirs[self.workdir]

    def run_ids(self) -> list[str]:
        proc = self.vp_env.run("runs", "-o", "json")
        assert proc.returncode == 0, proc.stderr
        return [r["id"] for r in json.loads(proc.stdout)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


@pytest.fixture
def cluster(vp_env: VpEnv, make_ssh_host, tmp_path: Path) -> Cluster:
    workdir = tmp_path / "remote-workspace"
    hosts = [make_ssh_host(netns=True, private_dirs=[workdir]) for _ in range(3)]
    link_hosts(*hosts)
    ssh_dir = vp_env.home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "config").write_text(
        "".join(h.ssh_config(f"node{i}") + "\n" for i, h in enumerate(hosts))
    )
    vp_env.write_config(
        f"""
        [project]
        name = "multi"

        [host]
        platform = "ssh"

        [ssh]
        hosts = ["node0", "node1", "node2"]
        reconnect_timeout = 60

        [sync]
        workdir = "{workdir}"
        """
    )
    return Cluster(vp_env, hosts, workdir)


def test_each_rank_sees_its_rank_the_addresses_and_the_master(cluster: Cluster, vp_env: VpEnv):
    (vp_env.project / "env.py").write_text(
        textwrap.dedent(
            """
            import json, os
            names = ["VP_NODE_RANK", "VP_NUM_NODES", "VP_NODE_IPS", "VP_GPUS_PER_NODE",
                     "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "NNODES"]
            json.dump({n: os.environ.get(n) for n in names}, open("env.json", "w"))
            """
        )
    )
    proc = vp_env.run(
        "--nodes", "3", "--all-logs", "sh", "-c", "python3 env.py && echo ok", timeout=LOADED
    )
    assert proc.returncode == 0, proc.stderr
    addresses = [h.address for h in cluster.hosts]
    for rank in range(3):
        seen = json.loads((cluster.files(rank) / "env.json").read_text())
        assert seen == {
            "VP_NODE_RANK": str(rank),
            "VP_NUM_NODES": "3",
            "VP_NODE_IPS": "\n".join(addresses),
            "VP_GPUS_PER_NODE": "0",
            "MASTER_ADDR": addresses[0],
            "MASTER_PORT": "29500",
            "NODE_RANK": str(rank),
            "NNODES": "3",
        }
    # Rank 0's results come back (by default only its); the others' output is prefixed.
    assert json.loads((vp_env.project / "env.json").read_text())["NODE_RANK"] == "0"
    assert not (vp_env.project / "nodes").exists()
    lines = proc.stdout.splitlines()
    assert lines.count("ok") == 1 and "[node1] ok" in lines and "[node2] ok" in lines


def test_vp_expands_the_torchrun_variables_in_a_command_of_several_words(
    cluster: Cluster, vp_env: VpEnv
):
    # Written the way the README says: single quotes keep them from the local shell.
    proc = vp_env.run(
        "--nodes", "2", "echo", "--nnodes=$NNODES", "--node_rank=${NODE_RANK}",
        "--master=$MASTER_ADDR:$MASTER_PORT", "$HOME", timeout=LOADED,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    master = cluster.hosts[0].address
    # Rank 1 kept quiet (no --all-logs): its output is in its log.
    assert proc.stdout == f"--nnodes=2 --node_rank=0 --master={master}:29500 $HOME\n"
    run_id = cluster.run_ids()[-1]
    logs = vp_env.run("logs", run_id, "--node", "1")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == f"--nnodes=2 --node_rank=1 --master={master}:29500 $HOME\n"
    assert vp_env.run("logs", run_id, "--node", "5").returncode != 0


RENDEZVOUS = """
import os, socket, sys, time
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
rank = os.environ["NODE_RANK"]
if rank == "0":
    srv = socket.create_server((addr, port))
    srv.settimeout(200)
    conn, peer = srv.accept()
    got = conn.recv(100).decode()
    conn.sendall(b"welcome " + got.encode())
    print("rank 0 got:", got, "from", peer[0])
else:
    # Rank 0 listens when its launch gets there, which on a loaded machine may be long after
    # rank 1's: try until it answers (the event), with a deadline only against a hang.
    deadline = time.monotonic() + 200
    while True:
        try:
            s = socket.create_connection((addr, port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    s.sendall(("hello from " + rank).encode())
    print("rank", rank, "got:", s.recv(100).decode())
"""


def test_rank_1_meets_rank_0_at_master_addr_and_port(cluster: Cluster, vp_env: VpEnv):
    (vp_env.project / "meet.py").write_text(RENDEZVOUS)
    proc = vp_env.run("--nodes", "2", "--all-logs", "python3", "meet.py", timeout=LOADED)
    assert proc.returncode == 0, proc.stderr
    assert f"rank 0 got: hello from 1 from {cluster.hosts[1].address}" in proc.stdout
    assert "[node1] rank 1 got: welcome hello from 1" in proc.stdout


def test_master_port_is_one_that_is_free_on_rank_0(cluster: Cluster, vp_env: VpEnv):
    # Something already listens on 29500 on rank 0: the next port is chosen.
    busy = cluster.hosts[0]
    holder = __import__("subprocess").Popen(
        ["ip", "netns", "exec", busy.netns, sys.executable, "-c",
         "import socket,time; s=socket.create_server(('0.0.0.0',29500)); print('up',flush=True);"
         " time.sleep(600)"],
        stdout=__import__("subprocess").PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == b"up\n"
        proc = vp_env.run("--nodes", "2", "echo", "$MASTER_PORT", timeout=LOADED)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "29501\n"
    finally:
        holder.kill()
        holder.wait()


TORCH = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print("sum", int(t.item()))
"""


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="torch is not installed in the test venv (too big to install for this test)",
)
def test_a_two_node_torchrun_gloo_all_reduce(cluster: Cluster, vp_env: VpEnv):
    (vp_env.project / "allreduce.py").write_text(TORCH)
    proc = vp_env.run(
        "--nodes", "2", sys.executable, "-m", "torch.distributed.run", "--nnodes=$NNODES",
        "--node_rank=$NODE_RANK", "--master_addr=$MASTER_ADDR", "--master_port=$MASTER_PORT",
        "--nproc_per_node=1", "allreduce.py", timeout=LOADED,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "sum 3" in proc.stdout


def test_one_rank_exiting_3_makes_vp_exit_3_and_stops_the_others(cluster: Cluster, vp_env: VpEnv):
    proc = vp_env.run(
        "--nodes",
        "3",
        'if [ "$NODE_RANK" = 1 ]; then exit 3; fi; echo $$ > pid; exec sleep 300',
        timeout=LOADED,
    )
    assert proc.returncode == 3, proc.stderr
    assert "node 1 exited 3" in proc.stderr
    for rank in (0, 2):
        pid = int((cluster.files(rank) / "pid").read_text())
        assert not _alive(pid), f"rank {rank}'s command still runs"
    assert "vp logs" in proc.stderr and "--node 1" in proc.stderr


def test_ctrl_c_interrupts_every_rank(cluster: Cluster, vp_env: VpEnv):
    proc = vp_env.popen("--nodes", "3", "echo $$ > pid; exec sleep 300")
    pidfiles = [cluster.files(rank) / "pid" for rank in range(3)]
    wait_for(
        lambda: all(p.exists() and p.read_text().strip() for p in pidfiles),
        timeout=LOADED,
        what="every rank's pid file",
        gave_up=lambda: None if proc.poll() is None else f"vp exited {proc.returncode}",
    )
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=LOADED)
    assert proc.returncode == 130, err
    assert b"interrupting the command on all 3 nodes" in err
    for rank, p in enumerate(pidfiles):
        assert not _alive(int(p.read_text())), f"rank {rank}'s command still runs"


def test_download_from_all_brings_each_rank_results_into_nodes_rank(
    cluster: Cluster, vp_env: VpEnv
):
    config = vp_env.project / "vp.toml"
    config.write_text(config.read_text() + 'download_from = "all"\n')
    proc = vp_env.run("--nodes", "3", "echo rank $NODE_RANK > out.txt", timeout=LOADED)
    assert proc.returncode == 0, proc.stderr
    assert (vp_env.project / "out.txt").read_text() == "rank 0\n"
    for rank in (1, 2):
        assert (vp_env.project / "nodes" / str(rank) / "out.txt").read_text() == f"rank {rank}\n"
    # The next run does not upload them.
    again = vp_env.run("--nodes", "2", "test ! -e nodes", timeout=LOADED)
    assert again.returncode == 0, again.stderr


def test_more_nodes_than_ssh_hosts_is_a_usage_error(cluster: Cluster, vp_env: VpEnv):
    proc = vp_env.run("--nodes", "4", "true", timeout=LOADED)
    assert proc.returncode == 2
    assert "needs 4 machines; [ssh] hosts lists 3" in proc.stderr
    assert "vp: hint:" in proc.stderr


def test_each_rank_arms_its_own_idle_watchdog(vp_env: VpEnv, tmp_path: Path):
    """Every node stops itself when idle: each rank's launch arms the watchdog on its host.
    Each host here has its own HOME (its runs dir and watchdog), as separate machines do."""
    workdir, home = tmp_path / "remote-workspace", tmp_path / "node-home"
    hosts: list[SshHost] = []
    try:
        for i in range(2):
            (tmp_path / f"node{i}").mkdir()
            host = SshHost(tmp_path / f"node{i}", netns=True, private_dirs=[workdir, home])
            host.extra_config = [*host.extra_config, f"SetEnv HOME={home}"]
            hosts.append(host)
            host.start()
        link_hosts(*hosts)
        ssh_dir = vp_env.home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "config").write_text(
            "".join(h.ssh_config(f"node{i}") + "\n" for i, h in enumerate(hosts))
        )
        vp_env.write_config(
            f"""
            [project]
            name = "multi"

            [host]
            platform = "ssh"
            idle_stop_minutes = 0.05
            idle_stop_command = "date > {home}/stopped"

            [ssh]
            hosts = ["node0", "node1"]

            [sync]
            workdir = "{workdir}"
            """
        )
        proc = vp_env.run("--nodes", "2", "true", timeout=LOADED)
        assert proc.returncode == 0, proc.stderr
        for rank, host in enumerate(hosts):
            wait_for(
                (host.private_dirs[home] / "stopped").exists,
                timeout=LOADED,
                what=f"node {rank}'s watchdog to run idle_stop_command",
            )
    finally:
        for host in hosts:
            host.close()


# ---------------------------------------------------------------------------- cloud


require_module("vastai")
from tests.emulators.vast import vast_emulator  # noqa: E402, F401


def test_a_failed_create_of_one_node_destroys_the_others(vast_emulator, vp_env: VpEnv, tmp_path):  # noqa: F811
    vp_env.env["VAST_URL"] = vast_emulator.url
    vp_env.env["VAST_API_KEY"] = vast_emulator.api_key
    user_cfg = vp_env.home / ".config" / "vp" / "config.toml"
    user_cfg.parent.mkdir(parents=True, exist_ok=True)
    user_cfg.write_text("[vast]\npoll_interval = 0.1\n")
    vp_env.write_config(
        f"""
        [project]
        name = "multi"

        [host]
        platform = "vast"
        gpu = "4090"
        max_price = 5.0
        ready_timeout = {LOADED}

        [sync]
        workdir = "{tmp_path / "remote-workspace"}"
        """
    )
    # Exactly one 4090 is for rent: the first node gets it, the second finds no capacity.
    fours = [o for o in vast_emulator.offers.values() if "4090" in o["gpu_name"]]
    assert fours
    for offer in fours[1:]:
        offer["rented"] = True
        offer["rentable"] = False
    proc = vp_env.run("--nodes", "2", "true", timeout=LOADED)
    assert proc.returncode != 0
    assert "destroying the 1 this run created" in proc.stderr, proc.stderr
    assert vast_emulator.errors == []
    live = [i for i in vast_emulator.instances.values() if i.get("cur_state") != "destroyed"]
    assert live == [], live
    listed = vp_env.run("ls", "-o", "json")
    assert json.loads(listed.stdout or "[]") == [], listed.stdout
    assert os.listdir(vp_env.home / ".config" / "vp") is not None


require_module("runpod")
from tests.emulators.runpod import runpod_emulator  # noqa: E402, F401

# name: (emulator fixture, endpoint env, key env, gpu with two offers, the record's label field)
LABEL_CLOUDS = {
    "vast": ("vast_emulator", "VAST_URL", "VAST_API_KEY", "H100", "label"),
    "runpod": ("runpod_emulator", "RUNPOD_API_BASE_URL", "RUNPOD_API_KEY", "4090", "name"),
}


def _label_cloud(name: str, request, vp_env: VpEnv, workdir: Path):
    fixture, url_env, key_env, gpu, _field = LABEL_CLOUDS[name]
    emulator = request.getfixturevalue(fixture)
    vp_env.env[url_env] = emulator.url
    vp_env.env[key_env] = emulator.api_key
    user_cfg = vp_env.home / ".config" / "vp" / "config.toml"
    user_cfg.parent.mkdir(parents=True, exist_ok=True)
    user_cfg.write_text(f"[{name}]\npoll_interval = 0.1\n")
    vp_env.write_config(
        f"""
        [project]
        name = "multi"

        [host]
        platform = "{name}"
        gpu = "{gpu}"
        max_price = 5.0
        ready_timeout = {LOADED}

        [sync]
        workdir = "{workdir}"
        """
    )
    return emulator


def _hosts(vp_env: VpEnv, *args: str, project: str | None = None) -> list[dict]:
    extra = {"VP_PROJECT": project} if project else None
    proc = vp_env.run("-o", "json", "ls", *args, extra_env=extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout or "[]")


@pytest.mark.parametrize("name", list(LABEL_CLOUDS))
def test_nodes_on_a_label_provider_are_the_projects_hosts_of_every_rank(
    name: str, request, vp_env: VpEnv, tmp_path: Path
):
    """vast keeps only a label, RunPod only a pod name: node 1 is labelled `vp-multi.1`, so
    it is project multi's (not a project `multi-1`'s), listed with its rank, reused by the
    next run, and stopped and destroyed with rank 0."""
    emulator = _label_cloud(name, request, vp_env, tmp_path / "remote-workspace")
    label = LABEL_CLOUDS[name][4]
    proc = vp_env.run("--nodes", "2", "sh", "-c", 'echo "rank $NODE_RANK"', timeout=LOADED)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "rank 0\n"
    assert sorted(i[label] for i in emulator.instances.values()) == ["vp-multi", "vp-multi.1"]
    assert emulator.errors == []

    rows = _hosts(vp_env)
    assert [(r["name"], r["node"], r["project"]) for r in rows] == [
        ("vp-multi", 0, "multi"),
        ("vp-multi-1", 1, "multi"),
    ]
    table = vp_env.run("ls")
    assert "vp-multi-1 (node 1)" in table.stdout and "vp-multi (node 0)" in table.stdout
    # Another project whose name ends like a rank does not see (or get to destroy) node 1.
    assert _hosts(vp_env, project="multi-1") == []
    every = _hosts(vp_env, "--all")
    assert sorted((r["name"], r["project"], r["node"]) for r in every) == [
        ("vp-multi", "multi", 0),
        ("vp-multi-1", "multi", 1),
    ]

    # A second run reuses both.
    again = vp_env.run("--nodes", "2", "true", timeout=LOADED)
    assert again.returncode == 0, again.stderr
    assert "creating" not in again.stderr and len(emulator.instances) == 2

    # `vp stop` stops both; the next run starts both again rather than creating others.
    stopped = vp_env.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped vp-multi (" in stopped.stderr and "stopped vp-multi-1 (" in stopped.stderr
    assert [r["status"] for r in _hosts(vp_env)] == ["stopped", "stopped"]
    back = vp_env.run("--nodes", "2", "true", timeout=LOADED)
    assert back.returncode == 0, back.stderr
    assert "creating" not in back.stderr and len(emulator.instances) == 2
    assert [r["status"] for r in _hosts(vp_env)] == ["running", "running"]

    # `vp down` destroys both.
    down = vp_env.run("down", "--yes")
    assert down.returncode == 0, down.stderr
    assert emulator.instances == {}
    assert _hosts(vp_env) == []


@pytest.mark.parametrize("name", list(LABEL_CLOUDS))
def test_a_new_machine_finds_every_node_and_the_orphan_sweep_destroys_them(
    name: str, request, vp_env: VpEnv, tmp_path: Path
):
    emulator = _label_cloud(name, request, vp_env, tmp_path / "remote-workspace")
    proc = vp_env.run("--nodes", "2", "true", timeout=LOADED)
    assert proc.returncode == 0, proc.stderr
    # Another machine: no state, no keys; the provider's labels alone say whose they are.
    state_dir = vp_env.home / ".local" / "state" / "vp"
    for db in state_dir.glob("state.db*"):
        db.unlink()
    rows = _hosts(vp_env, "--all")
    assert sorted((r["name"], r["project"], r["known"]) for r in rows) == [
        ("vp-multi", "multi", False),
        ("vp-multi-1", "multi", False),
    ]
    swept = vp_env.run("cleanup", "--orphans", "--yes")
    assert swept.returncode == 0, swept.stderr
    assert emulator.instances == {}


# Attempt 1 says it is up and keeps going; a later attempt ends at once.
ATTEMPT = (
    'echo "rank $NODE_RANK attempt $VP_ATTEMPT resumed ${VP_RESUMED:-0}"; '
    'if [ "$VP_ATTEMPT" = 1 ]; then touch "up-$NODE_RANK"; exec sleep 300; fi'
)


def test_recover_makes_a_new_node_for_a_preempted_one_and_runs_every_rank_again(
    request, vp_env: VpEnv, tmp_path: Path
):
    workdir = tmp_path / "remote-workspace"
    emulator = _label_cloud("vast", request, vp_env, workdir)
    config = vp_env.project / "vp.toml"
    config.write_text(config.read_text() + "\n[run]\nrecover = true\nmax_attempts = 2\n")
    proc = vp_env.popen("--nodes", "2", "--all-logs", ATTEMPT)
    wait_for(
        lambda: (workdir / "up-0").exists() and (workdir / "up-1").exists(),
        timeout=LOADED,
        what="both ranks of attempt 1 running",
        gave_up=lambda: None if proc.poll() is None else f"vp exited {proc.returncode}",
    )
    by_label = {i["label"]: iid for iid, i in emulator.instances.items()}
    emulator.preempt(by_label["vp-multi.1"])
    out, err = proc.communicate(timeout=LOADED)
    out_text, err_text = out.decode(), err.decode()
    assert proc.returncode == 0, err_text
    # (Rank 1's first line may have gone with its host before vp streamed it.)
    for line in (
        "rank 0 attempt 1 resumed 0",
        "rank 0 attempt 2 resumed 1",
        "[node1] rank 1 attempt 2 resumed 1",
    ):
        assert line in out_text.splitlines(), out_text
    assert "recovering, attempt 2 of 2" in err_text
    assert "Traceback" not in err_text
    # Rank 0's host was kept; node 1's preempted one destroyed and a new one made in its place.
    now = {i["label"]: iid for iid, i in emulator.instances.items()}
    assert now["vp-multi"] == by_label["vp-multi"]
    assert now["vp-multi.1"] != by_label["vp-multi.1"] and len(now) == 2
    runs = json.loads(vp_env.run("-o", "json", "runs").stdout)
    first = {r["id"]: r for r in runs if r["attempt"] == 1}
    second = [r for r in runs if r["attempt"] == 2]
    assert len(first) == 2 and len(second) == 2
    assert all(r["status"] == "preempted" for r in first.values())
    assert sorted(r["parent"] for r in second) == sorted(first)
    assert all(r["exit_code"] == 0 for r in second)
    assert vp_env.run("down", "--yes").returncode == 0


def test_without_recover_a_preempted_node_fails_the_run_in_one_line(
    request, vp_env: VpEnv, tmp_path: Path
):
    workdir = tmp_path / "remote-workspace"
    emulator = _label_cloud("vast", request, vp_env, workdir)
    proc = vp_env.popen("--nodes", "2", ATTEMPT)
    wait_for(
        lambda: (workdir / "up-0").exists() and (workdir / "up-1").exists(),
        timeout=LOADED,
        what="both ranks running",
        gave_up=lambda: None if proc.poll() is None else f"vp exited {proc.returncode}",
    )
    before = dict(emulator.instances)
    emulator.preempt(next(i for i, r in before.items() if r["label"] == "vp-multi.1"))
    _out, err = proc.communicate(timeout=LOADED)
    errors = [line for line in err.decode().splitlines() if line.startswith("vp: error:")]
    assert proc.returncode == 1, err
    assert len(errors) == 1 and "node 1:" in errors[0] and "was stopped" in errors[0], errors
    assert b"recovering" not in err and b"Traceback" not in err
    assert sorted(emulator.instances) == sorted(before)  # nothing made, nothing destroyed


def test_a_detached_multi_node_run_is_not_recovered_on_one_node_by_attach(
    request, vp_env: VpEnv, tmp_path: Path
):
    """`vp attach` follows rank 0 only: re-running its command alone would be a one-node run
    of a multi-node job, so it says why it does not recover."""
    workdir = tmp_path / "remote-workspace"
    emulator = _label_cloud("vast", request, vp_env, workdir)
    config = vp_env.project / "vp.toml"
    config.write_text(config.read_text() + "\n[run]\nrecover = true\nmax_attempts = 2\n")
    started = vp_env.run("--nodes", "2", "--detach", ATTEMPT, timeout=LOADED)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    wait_for(
        lambda: (workdir / "up-0").exists() and (workdir / "up-1").exists(),
        timeout=LOADED,
        what="both ranks running",
    )
    before = dict(emulator.instances)
    emulator.preempt(next(i for i, r in before.items() if r["label"] == "vp-multi"))
    attach = vp_env.run("attach", run_id, timeout=LOADED)
    assert attach.returncode == 1, attach.stderr
    assert "multi-node run started with --detach is not recovered" in attach.stderr
    assert "Traceback" not in attach.stderr
    assert sorted(emulator.instances) == sorted(before)


from tests.emulators.thunder import thunder_emulator  # noqa: E402, F401


def test_nodes_on_thunder_which_keeps_no_label_are_known_by_what_vp_recorded(
    thunder_emulator,  # noqa: F811
    vp_env: VpEnv,
    tmp_path: Path,
):
    """Thunder names its instances and keeps no label: a node's rank is what vp's state
    recorded at the create, so the next run still reuses each rank and `vp down` takes both."""
    vp_env.env["TNR_API_URL"] = thunder_emulator.url + "/v1"
    vp_env.env["TNR_API_TOKEN"] = thunder_emulator.api_key
    user_cfg = vp_env.home / ".config" / "vp" / "config.toml"
    user_cfg.parent.mkdir(parents=True, exist_ok=True)
    user_cfg.write_text('[thunder]\npoll_interval = 0.1\nuser = "root"\n')
    vp_env.write_config(
        f"""
        [project]
        name = "multi"

        [host]
        platform = "thunder"
        gpu = "A100"
        max_price = 5.0
        ready_timeout = {LOADED}

        [sync]
        workdir = "{tmp_path / "remote-workspace"}"
        """
    )
    proc = vp_env.run("--nodes", "2", "true", timeout=LOADED)
    assert proc.returncode == 0, proc.stderr
    assert [r["node"] for r in _hosts(vp_env)] == [0, 1]
    again = vp_env.run("--nodes", "2", "true", timeout=LOADED)
    assert again.returncode == 0, again.stderr
    assert "creating" not in again.stderr and len(thunder_emulator.instances) == 2
    down = vp_env.run("down", "--yes", timeout=LOADED)
    assert down.returncode == 0, down.stderr
    assert _hosts(vp_env) == []
