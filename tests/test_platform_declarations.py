"""Each provider declares what it is in one place, and vp reads only that (vp/platforms/cloud.py).

Ownership (issue 10, item 14): a host is the project's only if the provider's label says so or
vp's state recorded creating it; nothing else is ever adopted, stopped or destroyed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from vp import config, idle
from vp.platforms import NAMES, PROVIDERS, clouds, declaration
from vp.platforms.base import HostSpec
from vp.platforms.cloud import Declaration, Ownership, unhonoured
from vp.settings import NoSettings


@pytest.mark.parametrize("name", PROVIDERS)
def test_every_provider_declares_itself_and_vp_reads_the_declaration(name):
    decl = declaration(name)
    assert isinstance(decl, Declaration) and decl.name == name
    assert name in NAMES
    if decl.kind in ("vm", "container"):
        assert name in clouds()
        assert isinstance(decl.ownership, Ownership)  # required, never a default
        assert idle.stop_command(name, None) == decl.idle_stop
    for key in decl.secrets:
        assert (name, key) in config.SECRET_KEYS
    # its table is the config's [name] table ([ssh] is vp's own: the platform has none)
    assert config.tables().get(name, NoSettings) is decl.settings or name == "ssh"


def test_a_provider_that_makes_hosts_cannot_leave_out_its_ownership_rule():
    with pytest.raises(TypeError, match="ownership"):
        Declaration(name="x", kind="vm", ownership=None)
    with pytest.raises(TypeError, match="honours unknown"):
        Declaration(name="x", kind="vm", ownership=Ownership.LABEL, honours=frozenset({"zone"}))


def test_settings_a_provider_cannot_honour_are_named_never_silent():
    spec = HostSpec(gpu="4090", spot=True, region="EU", memory_gb=64)
    assert unhonoured(declaration("runpod"), spec) == [
        "memory_gb = 64",
        "region = 'EU'",
    ]
    assert unhonoured(declaration("vast"), spec) == []
    assert unhonoured(declaration("aws"), HostSpec(gpu="T4", region="eu-west-1")) == [
        "region = 'eu-west-1'"
    ]


# -- ownership against the Thunder emulator (no labels: only vp's state says what is vp's) ----

thunder_emulator = pytest.importorskip("tests.emulators.thunder").thunder_emulator


def test_a_thunder_instance_made_outside_vp_is_never_used_or_destroyed(
    thunder_emulator,  # noqa: F811
    vp_env: VpEnv,
    remote_workdir: Path,
    tmp_path: Path,
):
    vp_env.env["TNR_API_URL"] = thunder_emulator.url + "/v1"
    vp_env.env["TNR_API_TOKEN"] = thunder_emulator.api_key
    # A colleague's instance on the same account, made without vp's state knowing it.
    outside = {**os.environ, **vp_env.env, "XDG_STATE_HOME": str(tmp_path / "colleague")}
    code = (
        "from vp.platforms import get_platform; from vp.platforms.base import HostSpec\n"
        "print(get_platform('thunder', {}).create(HostSpec(gpu='A100'), 'vp-mnist').id)"
    )
    made = subprocess.run(
        [sys.executable, "-c", code], env=outside, capture_output=True, text=True, check=True
    )
    theirs = made.stdout.strip()
    user_cfg = vp_env.home / ".config" / "vp" / "config.toml"
    user_cfg.parent.mkdir(parents=True, exist_ok=True)
    user_cfg.write_text('[thunder]\npoll_interval = 0.1\nuser = "root"\n')
    vp_env.write_config(
        f"""
        [project]
        name = "mnist"

        [host]
        platform = "thunder"
        gpu = "A100"
        max_price = 5.0
        ready_timeout = 60

        [sync]
        workdir = "{remote_workdir}"
        """
    )

    r = vp_env.run("true")
    assert r.returncode == 0, r.stderr
    assert "creating" in r.stderr  # not adopted
    ours = [iid for iid in thunder_emulator.instances if iid != theirs]
    assert len(ours) == 1

    r = vp_env.run("down", "--yes", theirs)
    assert r.returncode != 0 and f"no host '{theirs}'" in r.stderr
    r = vp_env.run("down", "--yes")
    assert r.returncode == 0, r.stderr
    assert list(thunder_emulator.instances) == [theirs]


@pytest.mark.parametrize("name", PROVIDERS)
def test_only_thunder_cannot_stop_and_it_declares_no_idle_stop(name):
    """Thunder has no stop, its instances are containers without systemd (a guest shutdown
    stops no billing) and its token is account-wide: no idle-stop command, one warning."""
    decl = declaration(name)
    assert decl.can_stop is (name != "thunder")
    if name == "thunder":
        assert decl.idle_stop is None and idle.stop_command(name, None) is None
        assert "cannot stop" in idle.unavailable(name) and "vp down" in idle.unavailable(name)
