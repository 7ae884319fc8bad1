"""Config is typed (a frozen dataclass per table), read-only once loaded, and its defaults are
written once: in the dataclasses (vp/config.py, each provider's module), which the README's
table and every derived table must agree with."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from unittest import mock

import pytest

from tests.conftest import VpEnv
from vp import config, settings
from vp.errors import ConfigError
from vp.platforms import declaration, declarations, get_platform

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def load(tmp_path: Path):
    """config.load on a project folder of its own, with an empty user file location."""
    project = tmp_path / "proj"
    project.mkdir()

    def _load(text: str = "", environ: dict[str, str] | None = None) -> config.Config:
        (project / "vp.toml").write_text(text)
        with mock.patch.dict(os.environ, {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}):
            return config.load(cwd=project, environ=environ or {})

    return _load


def test_a_loaded_config_cannot_be_changed(load) -> None:
    cfg = load('[host]\ngpu = "A100"\n[env]\nSEED = "1"\n')
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.host.gpu = "H100"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.host = config.HostTable()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.section("vast").api_key = "stolen"
    with pytest.raises(TypeError):
        cfg.env["SEED"] = "2"  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.tables["host"] = config.HostTable()  # type: ignore[index]
    with pytest.raises(AttributeError):
        cfg.sync.results.append("x")  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):  # the old dict view is gone: no writing results into it
        cfg.data["host"]["platform"] = "vast"  # type: ignore[attr-defined]
    # A changed copy is a new value; the loaded one stays as it was.
    other = cfg.replace("host", gpu="H100")
    assert (other.host.gpu, other.section("host").gpu, cfg.host.gpu) == ("H100", "H100", "A100")


def test_values_are_typed_from_every_layer(load) -> None:
    cfg = load(
        '[host]\ngpus = 2\nmax_price = 1\n[sync]\nextra_ignore = ["data/"]\n'
        "[env]\nSTEPS = 3\nFAST = true\n",
        environ={
            "VP_SYNC_DOWNLOAD": "no",
            "VP_HOST_READY_TIMEOUT": "90.5",
            "VP_VAST_POLL_INTERVAL": "0.5",
            "VP_PLATFORM": "ssh",
            "VP_SSH_HOST": "me@box:2222",
        },
    )
    assert cfg.host.gpus == 2 and cfg.host.max_price == 1
    assert cfg.host.ready_timeout == 90.5 and cfg.ssh.host == "me@box:2222"
    assert cfg.platform == "ssh" and cfg.sync.download is False
    assert cfg.sync.extra_ignore == ("data/",)  # a tuple: the table is frozen all the way down
    assert dict(cfg.env) == {"STEPS": "3", "FAST": "true"}
    assert cfg.section("vast").poll_interval == 0.5
    assert isinstance(cfg.section("vast"), declaration("vast").settings)
    # Unset keys hold the one default, not None.
    assert cfg.sync.workdir == "/workspace" and cfg.ssh.connect_timeout == 10
    assert cfg.section("runpod").container_disk_gb == 20


def test_range_rules_are_field_metadata(load) -> None:
    for text, message in [
        ("[aws]\ndata_volume_gb = 0\n", "[aws] data_volume_gb must be greater than 0"),
        ("[thunder]\nsnapshot_timeout = -1\n", "[thunder] snapshot_timeout must be greater than"),
        ("[host]\nready_timeout = -5\n", "[host] ready_timeout must be 0 or more"),
        ('[gce]\nuser = "x;reboot"\n', "is not a valid user name"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load(text)


def test_every_provider_table_holds_its_user_and_endpoint_to_their_rules() -> None:
    """The checks used to key on the names `user` and `url`; now each field carries its rule,
    so a new provider's table must carry it too."""
    for decl in declarations():
        keys = settings.keys(decl.settings)
        if "user" in keys:
            assert keys["user"].check == "user_name", decl.name
        if decl.endpoint_key:
            assert keys[decl.endpoint_key].check == "endpoint", decl.name


def test_a_platform_made_from_a_dict_gets_its_typed_table() -> None:
    vast = get_platform("vast", {"poll_interval": 0.25, "user": "root"})
    assert vast.settings == declaration("vast").settings(poll_interval=0.25, user="root")
    with pytest.raises(TypeError):
        get_platform("vast", {"api_kee": "x"})


# -- one place for defaults: the README's table says what the dataclasses say ---------------

# Keys whose default is worked out when used, so the README describes it in words.
DERIVED = {
    ("project", "name"): "folder name",
    ("host", "name"): "`vp-PROJECT`",
    ("setup", "inputs"): "common lockfiles",  # vp/setup.py's DEFAULT_INPUTS
}


def _readme_defaults() -> dict[tuple[str, str], str]:
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`(\w+)\.(\w+)`", cells[0])
        if not keys or not all(s in config.CORE_TABLES for s, _ in keys):
            continue
        given = [d.strip() for d in cells[1].split(",")]
        if len(given) == 1:
            given *= len(keys)
        assert len(given) == len(keys), line
        rows.update(zip(keys, given, strict=True))
    return rows


def _value(text: str) -> object:
    text = re.sub(r"\s*\(.*\)$", "", text).strip("`")
    if len(text) >= 2 and text[0] == text[-1] == '"':  # a TOML string: `"0"`
        return text[1:-1]
    if text in ("–", "-"):
        return None
    if text == "[]":
        return ()
    if text == "{}":
        return {}
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d*", text):
        return float(text)
    return text


def test_the_readme_config_table_matches_the_dataclass_defaults() -> None:
    documented = _readme_defaults()
    for section, table in config.CORE_TABLES.items():
        for key, spec in settings.keys(table).items():
            assert (section, key) in documented, f"README has no row for {section}.{key}"
            text = documented[(section, key)]
            if (section, key) in DERIVED:
                assert text == DERIVED[(section, key)] and spec.default is None
                continue
            assert _value(text) == spec.default, f"{section}.{key}: README {text!r}"


def test_config_show_is_derived_from_the_tables(vp_env: VpEnv) -> None:
    vp_env.write_config('[host]\nplatform = "local"\n[sync]\nresults = ["out/"]\n')
    r = vp_env.run("--output", "json", "config", "show")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["sync"]["results"] == ["out/"]
    assert shown["host"]["disk_gb"] == config.HostTable.disk_gb
    assert set(shown) == {*config.tables(), "env"}
    assert set(shown["vast"]) == set(settings.keys(declaration("vast").settings))
    r = vp_env.run("config", "get", "sync.results")
    assert r.returncode == 0 and r.stdout.strip() == "['out/']"
