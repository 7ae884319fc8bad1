"""Money safety (issue #14), against the vast.ai emulator and real sshd hosts: the spend ledger
adds up across create/stop/start/destroy, caps refuse before anything is rented, the on-host
watchdog stops a host at its budget through the configured stop command, run time limits hold
on the host even with the laptop's vp killed, stopped hosts are destroyed after a while, and
`vp ls --all` / `vp cleanup --orphans` find vp's hosts from a machine that never saw them.

Time is injected with VP_NOW (epoch seconds), never slept: the ledger, the caps and the
stopped-host sweep read vp's one clock (vp/clock.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.emulators.vast import VastEmulator, vast_emulator  # noqa: F401
from tests.sshhost import SshHost
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(240)

# 01:00 local time on a fixed day: every step below stays inside that day and month.
T0 = dt.datetime(2026, 3, 10, 1, 0).timestamp()
HOUR = 3600.0


def _vast(vp_env: VpEnv, emulator: VastEmulator, workdir: Path, extra: str = "") -> None:
    vp_env.env.update(VAST_URL=emulator.url, VAST_API_KEY=emulator.api_key)
    user_cfg = vp_env.home / ".config" / "vp" / "config.toml"
    user_cfg.parent.mkdir(parents=True, exist_ok=True)
    if not user_cfg.exists():
        user_cfg.write_text("[vast]\npoll_interval = 0.1\n")
    vp_env.write_config(
        f"""
        [project]
        name = "cash"

        [host]
        platform = "vast"
        gpu = "4090"
        max_price = 5.0
        disk_gb = 40
        ready_timeout = 60
        {extra}

        [sync]
        workdir = "{workdir}"
        """
    )


def at(t: float) -> dict[str, str]:
    return {"VP_NOW": repr(t)}


def _creates(emulator: VastEmulator) -> list[tuple[str, str]]:
    return [(m, p) for m, p in emulator.requests if m == "PUT" and p.startswith("/api/v0/asks/")]


def _price(vp_env: VpEnv, t: float) -> float:
    r = vp_env.run("-o", "json", "ls", extra_env=at(t))
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    return float(row["price_per_hour"])


def test_the_ledger_adds_up_across_create_stop_start_destroy(
    vp_env: VpEnv,
    vast_emulator: VastEmulator,  # noqa: F811
    remote_workdir: Path,
) -> None:
    _vast(vp_env, vast_emulator, remote_workdir)
    r = vp_env.run("up", extra_env=at(T0))
    assert r.returncode == 0, r.stderr
    price = _price(vp_env, T0 + 0.5 * HOUR)
    assert vp_env.run("stop", extra_env=at(T0 + HOUR)).returncode == 0
    # stopped, `vp ls` shows what its disk costs, not its running price
    [row] = json.loads(vp_env.run("-o", "json", "ls", extra_env=at(T0 + 1.5 * HOUR)).stdout)
    storage = 0.15 * 40 / 730  # vast's declared $/GB/month for the 40 GB disk, per hour
    assert row["status"] == "stopped"
    assert row["billing_per_hour"] == pytest.approx(storage, rel=1e-3)
    assert row["cost_usd"] == pytest.approx(price + 0.5 * storage, rel=1e-3)
    r = vp_env.run("start", extra_env=at(T0 + 2 * HOUR))
    assert r.returncode == 0, r.stderr
    status = json.loads(vp_env.run("-o", "json", "status", extra_env=at(T0 + 2.25 * HOUR)).stdout)
    assert status["spend_today_usd"] == pytest.approx(1.25 * price + storage, abs=0.01)
    assert vp_env.run("down", "--yes", extra_env=at(T0 + 2.5 * HOUR)).returncode == 0

    r = vp_env.run(
        "-o", "json", "spend", "--by", "host", "--since", "1d", extra_env=at(T0 + 5 * HOUR)
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    [host] = report["rows"]
    assert host["compute"] == pytest.approx(1.5 * price, rel=1e-3)  # 1 h, then 0.5 h
    assert host["storage"] == pytest.approx(storage, abs=1e-4)  # 1 h stopped
    assert host["hours"] == pytest.approx(1.5)
    assert report["total"] == pytest.approx(1.5 * price + storage, abs=1e-4)
    assert report["today"] == pytest.approx(report["total"], rel=1e-3)
    assert report["per_hour"] == 0  # destroyed: nothing bills any more
    by_day = json.loads(vp_env.run("-o", "json", "spend", extra_env=at(T0 + 5 * HOUR)).stdout)
    assert [r["day"] for r in by_day["rows"]] == ["2026-03-10"]
    # a week later, --since 1d no longer counts it
    later = vp_env.run("-o", "json", "spend", "--since", "1d", extra_env=at(T0 + 8 * 24 * HOUR))
    assert json.loads(later.stdout)["total"] == 0
    assert "Traceback" not in r.stderr + later.stderr


def test_a_tiny_cap_refuses_the_create_and_the_run_and_rents_nothing(
    vp_env: VpEnv,
    vast_emulator: VastEmulator,  # noqa: F811
    remote_workdir: Path,
) -> None:
    _vast(vp_env, vast_emulator, remote_workdir, extra="[budget]\ndaily = 0.01")
    r = vp_env.run("echo", "hi", extra_env=at(T0))
    assert r.returncode == 1
    assert "vp: error: budget: $0.00 of $0.01 spent today" in r.stderr, r.stderr
    assert "--over-budget" in r.stderr  # the hint names the way past it
    assert _creates(vast_emulator) == []  # searched offers, rented nothing

    # --over-budget goes past it once; the run ends saying the host is still billing
    r = vp_env.run("--over-budget", "echo", "hi", extra_env=at(T0))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hi\n"
    assert "vp-cash is still running at $" in r.stderr
    assert "/h (idle stop: off) — vp stop" in r.stderr
    assert len(_creates(vast_emulator)) == 1

    # the next run is refused again; a user file's cap lower than the project's still counts
    cfg = vp_env.project / "vp.toml"
    cfg.write_text(cfg.read_text().replace("daily = 0.01", "daily = 100.0"))
    user_cfg = vp_env.home / ".config" / "vp" / "config.toml"
    user_cfg.write_text(user_cfg.read_text() + "[budget]\ndaily = 0.01\n")
    r = vp_env.run("echo", "again", extra_env=at(T0 + 60))
    assert r.returncode == 1, r.stderr
    assert "budget: $0.01 of $0.01 spent today" in r.stderr or "budget: $0.00 of $0.01" in (
        r.stderr
    ), r.stderr
    assert "run on vp-cash" in r.stderr or "not going to run" in r.stderr
    assert r.stdout == ""
    assert "Traceback" not in r.stderr


def test_a_create_without_max_price_is_refused_off_a_terminal_unless_yes(
    vp_env: VpEnv,
    vast_emulator: VastEmulator,  # noqa: F811
    remote_workdir: Path,
) -> None:
    _vast(vp_env, vast_emulator, remote_workdir)
    cfg = vp_env.project / "vp.toml"
    cfg.write_text(cfg.read_text().replace("max_price = 5.0\n", ""))
    r = vp_env.run("true")
    assert r.returncode == 2, r.stderr
    assert "no [host] max_price: not renting 1x RTX 4090 on vast at $0.36/h" in r.stderr
    assert "--yes" in r.stderr
    assert _creates(vast_emulator) == []
    r = vp_env.run("--yes", "true")
    assert r.returncode == 0, r.stderr
    assert len(_creates(vast_emulator)) == 1


class _OwnHomeHost(SshHost):
    """A host whose login HOME is its own folder, so its watchdog is not shared with other
    tests' runs (as in tests/test_run.py)."""

    def _write_config(self) -> None:
        super()._write_config()
        (self.root / "home").mkdir(exist_ok=True)
        with self.config_path.open("a") as f:
            f.write(f"SetEnv HOME={self.root / 'home'}\n")


class _OwnHomeVast(VastEmulator):
    def new_host(self, iid: str, keys: list[str]) -> SshHost:
        host = _OwnHomeHost(self.workdir / f"{self.provider}-{iid}", authorized_keys=list(keys))
        with self.lock:
            self.hosts[iid] = host
        return host


def test_the_watchdog_stops_the_host_when_the_budget_would_run_out(
    vp_env: VpEnv, remote_workdir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "stopped-by-budget"
    with _OwnHomeVast(tmp_path / "vast-own-home") as emulator:
        _vast(
            vp_env,
            emulator,
            remote_workdir,
            extra=f'idle_stop_command = "date > {marker}"\n[budget]\ndaily = 1.0\nmin_minutes = 0',
        )
        assert vp_env.run("up", extra_env=at(T0)).returncode == 0
        price = _price(vp_env, T0)
        # Later that day the host has spent all but ~4 s of the cap at its price.
        t = T0 + (1.0 / price) * HOUR - 4
        r = vp_env.run("true", extra_env=at(t))
        assert r.returncode == 0, r.stderr
        assert "budget allows 0.0 h on this host" in r.stderr, r.stderr
        assert "budget stop in" in r.stderr
        # vp has exited; the host's own watchdog stops it, through [host] idle_stop_command
        wait_for(marker.exists, 60, "the watchdog to run idle_stop_command at the budget")
        [host] = emulator.hosts.values()
        log = (host.root / "home" / ".vp" / "watchdog.log").read_text()
        assert "the spend cap would be reached: stopping" in log


def _login_home() -> Path:
    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def _sleeping(tag: str) -> list[str]:
    out = subprocess.run(["pgrep", "-x", "-f", f"sleep {tag}"], capture_output=True, text=True)
    return out.stdout.split()


def test_timeout_ends_the_run_with_124_and_leaves_no_process(ssh_project: VpEnv) -> None:
    tag = f"60.{os.getpid()}1"
    r = ssh_project.run("--timeout", "3s", "sleep", tag)
    assert r.returncode == 124, r.stderr
    assert "timed out after 3s" in r.stderr
    assert _sleeping(tag) == []
    runs = json.loads(ssh_project.run("-o", "json", "runs").stdout)
    assert runs[0]["status"] == "timed out" and runs[0]["exit_code"] == 124


def test_timeout_holds_on_the_host_when_the_local_vp_is_killed(ssh_project: VpEnv) -> None:
    tag = f"60.{os.getpid()}2"
    cfg = ssh_project.project / "vp.toml"
    cfg.write_text(cfg.read_text() + '\n[run]\ntimeout = "3s"\n')
    proc = ssh_project.popen("sleep", tag)
    try:
        wait_for(lambda: _sleeping(tag), 60, "the run to start on the host")
        proc.send_signal(signal.SIGKILL)  # the laptop's side is gone at once
        proc.wait(timeout=30)
        wait_for(lambda: not _sleeping(tag), 60, "the host to end the run at its time limit")
    finally:
        if proc.poll() is None:
            proc.kill()
    [run] = json.loads(ssh_project.run("-o", "json", "runs").stdout)
    exit_file = _login_home() / ".vp" / "runs" / run["id"] / "exit"
    wait_for(exit_file.exists, 30, "the exit code file")
    assert exit_file.read_text().strip() == "124"


def test_durations_are_validated_in_config(vp_env: VpEnv) -> None:
    vp_env.write_config('[run]\ntimeout = "2 hours"\n')
    r = vp_env.run("true")
    assert r.returncode == 2
    assert "[run] timeout '2 hours' is not a duration" in r.stderr
    assert '"90s", "30m", "2h" or "1d"' in r.stderr
    vp_env.write_config('[host]\ndestroy_after_stopped = "7d"\n[run]\ntimeout = "90s"\n')
    assert vp_env.run("true").returncode == 0


def test_a_host_stopped_past_destroy_after_stopped_is_destroyed_on_the_next_call(
    vp_env: VpEnv,
    vast_emulator: VastEmulator,  # noqa: F811
    remote_workdir: Path,
) -> None:
    _vast(vp_env, vast_emulator, remote_workdir, extra='destroy_after_stopped = "7d"')
    assert vp_env.run("up", extra_env=at(T0)).returncode == 0
    assert vp_env.run("stop", extra_env=at(T0 + HOUR)).returncode == 0
    r = vp_env.run("ls", extra_env=at(T0 + 6 * 24 * HOUR))
    assert r.returncode == 0 and "destroying" not in r.stderr, r.stderr
    assert len(vast_emulator.instances) == 1

    r = vp_env.run("ls", extra_env=at(T0 + HOUR + 8 * 24 * HOUR))
    assert r.returncode == 0, r.stderr
    # the disk's cost comes first, then what is done about it
    assert "has been stopped for 8.0d, its disk billing $0.008/h ($6.00/month)" in r.stderr
    assert "destroying it ([host] destroy_after_stopped = '7d')" in r.stderr
    assert "destroyed vp-cash" in r.stderr
    assert vast_emulator.instances == {}


def test_ls_all_and_cleanup_orphans_from_a_fresh_home(
    vp_env: VpEnv,
    vast_emulator: VastEmulator,  # noqa: F811
    remote_workdir: Path,
    tmp_path: Path,
) -> None:
    _vast(vp_env, vast_emulator, remote_workdir)
    assert vp_env.run("up").returncode == 0
    [made] = list(vast_emulator.instances)
    # an instance on the same account that vp did not make
    vast_emulator.create(1002, {"image": "ubuntu", "label": "my-own-box"})
    assert len(vast_emulator.instances) == 2

    rows = json.loads(vp_env.run("-o", "json", "ls", "--all").stdout)
    assert [(r["id"], r["known"], r["project"]) for r in rows] == [(made, True, "cash")]

    # a new laptop: nothing in its state, no vp.toml, only the account's key
    home = tmp_path / "fresh-home"
    folder = tmp_path / "empty-folder"
    home.mkdir()
    folder.mkdir()
    fresh = VpEnv(
        home=home,
        project=folder,
        env={
            **vp_env.env,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_STATE_HOME": str(home / ".local/state"),
            "XDG_DATA_HOME": str(home / ".local/share"),
        },
    )
    r = fresh.run("-o", "json", "ls", "--all")
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    assert (row["platform"], row["id"], row["name"], row["project"]) == (
        "vast",
        made,
        "vp-cash",
        "cash",
    )
    assert row["status"] == "running" and row["billing_per_hour"] > 0 and row["known"] is False
    assert row["uptime_s"] is not None
    text = fresh.run("ls", "--all")
    assert "my-own-box" not in text.stdout + text.stderr
    assert "vp cleanup --orphans" in text.stderr

    r = fresh.run("cleanup", "--orphans")  # not a terminal, no --yes: refuses, destroys nothing
    assert r.returncode == 2 and "without confirmation" in r.stderr, r.stderr
    assert len(vast_emulator.instances) == 2
    r = fresh.run("-o", "json", "cleanup", "--orphans", "--yes")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["destroyed"] == [f"vast:{made}"]
    assert [i["label"] for i in vast_emulator.instances.values()] == ["my-own-box"]
