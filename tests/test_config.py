"""Configuration layers, errors, init and `vp config`, through the real CLI."""

from __future__ import annotations

import json
import stat

from tests.conftest import VpEnv


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("vp: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_invalid_toml_names_file_and_line(vp_env: VpEnv) -> None:
    path = vp_env.write_config('[host]\nplatform = "local"\ngpu = \n')
    r = vp_env.run("true")
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert str(path) in line and "line 3" in line


def test_unknown_key_names_the_nearest_valid_key(vp_env: VpEnv) -> None:
    path = vp_env.write_config("[host]\nmax_prise = 2.0\n")
    r = vp_env.run("true")
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert str(path) in line and "max_prise" in line
    assert "did you mean 'max_price'?" in r.stderr


def test_sync_include_is_refused_with_the_rule_that_does_it(vp_env: VpEnv) -> None:
    """`[sync] include` was accepted and never read (issue #11): now it is an error naming the
    file, and the `!pattern` its hint points to does upload an ignored file."""
    path = vp_env.write_config('[host]\nplatform = "local"\n[sync]\ninclude = ["model.bin"]\n')
    (vp_env.project / "model.bin").write_text("weights\n")
    (vp_env.project / ".vpignore").write_text("*.bin\n")
    r = vp_env.run("cat", "model.bin")
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert str(path) in line and "[sync] include" in line, line
    assert "`!pattern` line to .vpignore" in r.stderr, r.stderr
    user = vp_env.home / ".config" / "vp" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('[sync]\ninclude = ["model.bin"]\n')
    path.write_text('[host]\nplatform = "local"\n')
    r = vp_env.run("cat", "model.bin")
    assert r.returncode == 2 and str(user) in _one_error_line(r.stderr), r.stderr
    user.unlink()

    r = vp_env.run("cat", "model.bin")
    assert r.returncode != 0 and "weights" not in r.stdout  # ignored: not uploaded
    (vp_env.project / ".vpignore").write_text("*.bin\n!model.bin\n")
    r = vp_env.run("cat", "model.bin")
    assert r.returncode == 0 and r.stdout == "weights\n", r.stderr


def test_unknown_section_and_wrong_type(vp_env: VpEnv) -> None:
    vp_env.write_config("[hosts]\ngpu = 'A100'\n")
    r = vp_env.run("true")
    assert r.returncode == 2 and "did you mean [host]?" in r.stderr
    vp_env.write_config("[host]\ngpus = 'two'\n")
    r = vp_env.run("true")
    assert r.returncode == 2
    assert "[host] gpus must be an integer" in _one_error_line(r.stderr)


def test_secret_in_project_file_is_refused(vp_env: VpEnv) -> None:
    vp_env.write_config('[runpod]\napi_key = "rp_secret_value"\n')
    r = vp_env.run("true")
    assert r.returncode == 2
    assert "rp_secret_value" not in r.stderr
    assert "secret" in _one_error_line(r.stderr)


def test_pyproject_tool_vp_and_walk_up(vp_env: VpEnv) -> None:
    (vp_env.project / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.vp.project]\nname = "from-pyproject"\n'
    )
    sub = vp_env.project / "src" / "deep"
    sub.mkdir(parents=True)
    r = vp_env.run("config", "get", "project.name", cwd=sub)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "from-pyproject"


def test_layers_user_project_env_flag(vp_env: VpEnv) -> None:
    user = vp_env.home / ".config" / "vp" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('[host]\ngpu = "A10"\nmax_price = 1.0\ndisk_gb = 10\n')
    vp_env.write_config("[host]\nmax_price = 2.0\ndisk_gb = 20\n")
    env = {"VP_HOST_DISK_GB": "30"}
    get = lambda key: vp_env.run("config", "get", key, extra_env=env).stdout.strip()  # noqa: E731
    assert get("host.gpu") == "A10"  # user file
    assert get("host.max_price") == "2.0"  # project beats user
    assert get("host.disk_gb") == "30"  # env beats project
    r = vp_env.run("-p", "ssh", "config", "get", "host.platform")
    assert r.stdout.strip() == "ssh"  # flag beats all


def test_config_set_user_is_private_and_masked(vp_env: VpEnv) -> None:
    r = vp_env.run("config", "set", "--user", "vast.api_key", "sekrit-123")
    assert r.returncode == 0, r.stderr
    assert "sekrit-123" not in r.stderr + r.stdout
    user = vp_env.home / ".config" / "vp" / "config.toml"
    assert stat.S_IMODE(user.stat().st_mode) == 0o600
    shown = vp_env.run("-o", "json", "config", "show")
    data = json.loads(shown.stdout)
    assert data["vast"]["api_key"] == "****"
    assert "sekrit-123" not in shown.stdout
    r = vp_env.run("config", "set", "vast.api_key", "x")
    assert r.returncode == 2  # secrets never go into the project file


def test_config_set_project_value(vp_env: VpEnv) -> None:
    r = vp_env.run("config", "set", "host.gpus", "4")
    assert r.returncode == 0, r.stderr
    assert "gpus = 4" in (vp_env.project / "vp.toml").read_text()
    r = vp_env.run("config", "set", "host.gpus", "four")
    assert r.returncode == 2 and "expected an integer" in r.stderr
    r = vp_env.run("config", "set", "host.gpuz", "4")
    assert r.returncode == 2 and "did you mean 'gpu" in r.stderr


def test_bad_flags_are_usage_errors(vp_env: VpEnv) -> None:
    r = vp_env.run("-o", "xml", "runs")
    assert r.returncode == 2
    assert "--output" in _one_error_line(r.stderr)
    r = vp_env.run("--no-such-flag", "true")
    assert r.returncode == 2
    assert "no-such-flag" in _one_error_line(r.stderr)
    r = vp_env.run("-p", "nowhere", "true")
    assert r.returncode == 2
    assert "unknown platform 'nowhere'" in _one_error_line(r.stderr)
    r = vp_env.run("-p", "ssh", "--host", "evil;rm -rf /", "true")
    assert r.returncode == 2
    assert "invalid ssh host" in _one_error_line(r.stderr)


def test_init_writes_project_files(vp_env: VpEnv) -> None:
    r = vp_env.run("init", "--make")
    assert r.returncode == 0, r.stderr
    assert 'name = "proj"' in (vp_env.project / "vp.toml").read_text()
    assert (vp_env.project / ".vpignore").exists()
    assert "VP ?= vp" in (vp_env.project / "Makefile").read_text()
    again = vp_env.run("init")
    assert again.returncode == 0 and "exists" in again.stderr
    # the written config is valid as is
    assert vp_env.run("config", "show").returncode == 0


def test_config_set_reads_a_secret_from_stdin(vp_env: VpEnv) -> None:
    r = vp_env.run("config", "set", "--user", "runpod.api_key", "-", input="rp_from_stdin\n")
    assert r.returncode == 0, r.stderr
    user = vp_env.home / ".config" / "vp" / "config.toml"
    assert 'api_key = "rp_from_stdin"' in user.read_text()
    assert "rp_from_stdin" not in r.stderr + r.stdout
    r = vp_env.run("config", "set", "--user", "runpod.api_key", "-", input="")
    assert r.returncode == 2 and "no value for runpod.api_key" in r.stderr
