"""Listings speak one schema: `vp ls`, `vp status`, `vp up` and `vp runs` with -o json give
ISO 8601 UTC times (`*_at`), seconds (`*_s`), US dollars per hour (`price_per_hour`) and US
dollars (`cost_usd`); tables and text show units in the headers, human durations and local
times. The schema below is the one README.md ("Output formats") documents; vp/records.py
produces it. Checked through the real CLI against the vast.ai emulator and a real sshd."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.emulators.vast import vast_emulator  # noqa: F401

pytestmark = pytest.mark.timeout(240)

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
NUMBER = (int, float)
NONE = type(None)

# field: (allowed JSON types, format). Every field is always present; unknown is null.
HOST_SCHEMA = {
    "name": ((str,), None),
    "id": ((str,), None),
    "platform": ((str,), None),
    "project": ((str, NONE), None),
    "status": ((str,), None),
    "gpu": ((str, NONE), None),
    "gpus": ((int,), None),
    "price_per_hour": ((*NUMBER, NONE), None),
    "billing_per_hour": ((*NUMBER, NONE), None),
    "spot": ((bool,), None),
    "region": ((str, NONE), None),
    "ssh": ((str, NONE), None),
    "created_at": ((str, NONE), ISO_UTC),
    "stopped_at": ((str, NONE), ISO_UTC),
    "uptime_s": ((*NUMBER, NONE), None),
    "cost_usd": ((*NUMBER, NONE), None),
    "known": ((bool,), None),
    "node": ((int, NONE), None),
    "labels": ((dict,), None),
}
# `vp status` adds what all of vp's hosts cost today and this month.
STATUS_SCHEMA = HOST_SCHEMA | {
    "spend_today_usd": ((*NUMBER,), None),
    "spend_month_usd": ((*NUMBER,), None),
}
RUN_SCHEMA = {
    "id": ((str,), None),
    "project": ((str,), None),
    "command": ((str,), None),
    "host_name": ((str,), None),
    "platform": ((str,), None),
    "workdir": ((str,), None),
    "status": ((str,), None),
    "exit_code": ((int, NONE), None),
    "attempt": ((int,), None),
    "parent": ((str, NONE), None),
    "started_at": ((str,), ISO_UTC),
    "ended_at": ((str, NONE), ISO_UTC),
    "duration_s": ((*NUMBER, NONE), None),
    "price_per_hour": ((*NUMBER, NONE), None),
    "cost_usd": ((*NUMBER, NONE), None),
}


def conforms(record: object, schema: dict) -> dict:
    """Assert `record` has exactly the schema's fields with the allowed types and formats."""
    assert isinstance(record, dict), record
    assert set(record) == set(schema), set(record) ^ set(schema)
    for key, (types, fmt) in schema.items():
        value = record[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        assert ok, f"{key}={value!r} is not one of {types}"
        if fmt is not None and value is not None:
            assert fmt.match(value), f"{key}={value!r} is not ISO 8601 UTC"
    return record


def _json(vp_env: VpEnv, *args: str):
    r = vp_env.run("-o", "json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_checker_rejects_what_the_old_listings_printed() -> None:
    """The checker is not a rubber stamp: the pre-schema `vp runs` row fails it."""
    old = {"id": "a", "started": "2026-12-01 14:03:22", "ended": 1796154102.32}
    with pytest.raises(AssertionError):
        conforms(old, RUN_SCHEMA)
    row = {k: None for k in RUN_SCHEMA} | {"started_at": "1796154102.32"}
    with pytest.raises(AssertionError):
        conforms(row, RUN_SCHEMA)


def test_ls_status_up_runs_share_one_schema(
    vast_emulator,  # noqa: F811
    vp_env: VpEnv,
    remote_workdir: Path,
) -> None:
    vp_env.env["VAST_URL"] = vast_emulator.url
    vp_env.env["VAST_API_KEY"] = vast_emulator.api_key
    user_cfg = vp_env.home / ".config" / "vp" / "config.toml"
    user_cfg.parent.mkdir(parents=True, exist_ok=True)
    user_cfg.write_text("[vast]\npoll_interval = 0.1\n")
    vp_env.write_config(
        f"""
        [project]
        name = "mnist"

        [host]
        platform = "vast"
        gpu = "4090"
        max_price = 5.0
        ready_timeout = 60

        [sync]
        workdir = "{remote_workdir}"
        """
    )
    r = vp_env.run("sh", "-c", "exit 3")
    assert r.returncode == 3, r.stderr

    up = conforms(_json(vp_env, "up"), HOST_SCHEMA)
    assert up["price_per_hour"] == pytest.approx(0.36, abs=0.01)
    assert up["region"] == "Texas, US" and up["ssh"].startswith("root@")
    status = conforms(_json(vp_env, "status"), STATUS_SCHEMA)
    assert status["status"] == "running" and status["uptime_s"] >= 0
    assert status["billing_per_hour"] == status["price_per_hour"]
    assert 0 <= status["cost_usd"] <= status["spend_today_usd"] + 1e-3
    assert status["known"] is True and status["project"] == "mnist"
    [listed] = _json(vp_env, "ls")
    conforms(listed, HOST_SCHEMA)
    assert (listed["id"], listed["created_at"]) == (status["id"], status["created_at"])
    [run] = _json(vp_env, "runs")
    conforms(run, RUN_SCHEMA)
    assert (run["exit_code"], run["status"], run["platform"]) == (3, "done", "vast")
    assert run["duration_s"] >= 0 and run["price_per_hour"] == status["price_per_hour"]

    # people get units in the headers, human durations and ages, local times
    table = vp_env.run("ls").stdout.splitlines()
    assert table[0].split() == [
        "NAME", "ID", "PLATFORM", "STATUS", "GPU", "GPUS", "$/H", "COST", "$", "SPOT", "REGION",
        "AGE", "SSH",
    ]  # fmt: skip
    assert " 0.36 " in table[1] and "Texas, US" in table[1]
    assert table[-1].startswith("total: $") and table[-1].endswith(", $0.36/h now")
    text = vp_env.run("status").stdout
    assert re.search(r"^price +\$0\.36/h$", text, re.M), text
    when = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d+ (s|min) ago\)"
    assert re.search(rf"^created +{when}$", text, re.M), text
    assert re.search(r"^uptime +(\d+(\.\d)?s|\d+m \d\ds)$", text, re.M), text

    assert vp_env.run("stop").returncode == 0
    [stopped] = _json(vp_env, "ls")
    conforms(stopped, HOST_SCHEMA)
    assert stopped["status"] == "stopped" and stopped["stopped_at"] is not None
    assert stopped["billing_per_hour"] < stopped["price_per_hour"]  # its disk only
    [everywhere] = _json(vp_env, "ls", "--all")
    conforms(everywhere, HOST_SCHEMA)
    assert (everywhere["id"], everywhere["known"]) == (stopped["id"], True)
    assert vp_env.run("down", "--yes").returncode == 0
