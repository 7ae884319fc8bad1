"""API key precedence (issue #12 item 2), through the real CLI against each provider's emulator:
the environment wins over the user file, which wins over the provider CLI's own file; a
rejected key is named by where it came from (never by its value), and the missing-key hint is
a command that works."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import VpEnv, point_at
from tests.conftest import error_and_hint as _error
from tests.emulators.runpod import runpod_emulator  # noqa: F401
from tests.emulators.thunder import thunder_emulator  # noqa: F401
from tests.emulators.vast import vast_emulator  # noqa: F401

pytestmark = pytest.mark.timeout(120)

WRONG = "wrong-secret-1234"

# name: (key env, user-file key, provider words, the provider CLI's own file under HOME);
# the emulator is the fixture `NAME_emulator`.
CLOUDS = {
    "vast": ("VAST_API_KEY", "api_key", "vast.ai", ".config/vastai/vast_api_key"),
    "runpod": ("RUNPOD_API_KEY", "api_key", "RunPod", None),
    "thunder": ("TNR_API_TOKEN", "token", "Thunder Compute", ".thunder/token"),
}


def _project(name: str, request, vp_env: VpEnv) -> tuple[VpEnv, str]:
    """A project on cloud `name` (its emulator), with no key anywhere yet. (env, right key)"""
    emulator = request.getfixturevalue(f"{name}_emulator")
    point_at(vp_env, name, emulator, key=False)
    vp_env.write_config(f'[project]\nname = "proj"\n[host]\nplatform = "{name}"\n')
    return vp_env, emulator.api_key


def _user_file(env: VpEnv, name: str, key: str, value: str) -> Path:
    path = env.home / ".config" / "vp" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[{name}]\n{key} = "{value}"\n')
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_wrong_key_in_the_environment_wins_over_a_right_user_file(
    name: str, request, vp_env: VpEnv
) -> None:
    env, right = _project(name, request, vp_env)
    key_env, key, provider, _ = CLOUDS[name]
    _user_file(env, name, key, right)
    assert env.run("ls").returncode == 0  # the user file alone is a working key

    r = env.run("ls", extra_env={key_env: WRONG})
    assert r.returncode == 1, r.stderr
    error, hint = _error(r.stderr)
    assert error == f"vp: error: {key_env} from the environment was rejected by {provider}"
    assert key_env in hint and f"vp config set --user {name}.{key} -" in hint
    assert WRONG not in r.stderr + r.stdout and right not in r.stderr + r.stdout


@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_right_key_in_the_environment_wins_over_a_wrong_user_file(
    name: str, request, vp_env: VpEnv
) -> None:
    env, right = _project(name, request, vp_env)
    key_env, key, provider, _ = CLOUDS[name]
    _user_file(env, name, key, WRONG)
    r = env.run("ls")
    assert r.returncode == 1
    error, hint = _error(r.stderr)
    assert error == (
        f"vp: error: [{name}] {key} in ~/.config/vp/config.toml was rejected by {provider}"
    )
    assert f"vp config set --user {name}.{key} -" in hint

    r = env.run("ls", extra_env={key_env: right})
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", [n for n, row in CLOUDS.items() if row[3]])
def test_user_file_wins_over_the_provider_clis_file(name: str, request, vp_env: VpEnv) -> None:
    env, right = _project(name, request, vp_env)
    _, key, provider, cli_file = CLOUDS[name]
    own = env.home / cli_file
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_text(WRONG + "\n")
    r = env.run("ls")
    error, _hint = _error(r.stderr)
    assert error == f"vp: error: ~/{cli_file} was rejected by {provider}"

    _user_file(env, name, key, right)
    assert env.run("ls").returncode == 0


@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_the_missing_key_hint_is_a_command_that_works(name: str, request, vp_env: VpEnv) -> None:
    env, right = _project(name, request, vp_env)
    key_env, key, _provider, _ = CLOUDS[name]
    r = env.run("ls")
    assert r.returncode == 1
    _error_line, hint = _error(r.stderr)
    command = f"vp config set --user {name}.{key} -"
    assert f"`{command}`" in hint and key_env in hint, hint

    stored = env.run(*command.split()[1:], input=right + "\n")  # what the hint says, verbatim
    assert stored.returncode == 0, stored.stderr
    r = env.run("ls")
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- AWS: the same order for profiles


@pytest.fixture
def aws_project(vp_env: VpEnv, tmp_path: Path):
    """A project on the EC2 emulator; profiles `stored` and `shell` exist in the shared
    credentials file, each with its own access key id, so the key a request was signed with
    says which one boto3 used. (env, emulator)"""
    from tests.emulators.aws import AwsEmulator

    with AwsEmulator(tmp_path / "aws-emu") as emulator:
        vp_env.env.update(emulator.env())
        del vp_env.env["AWS_ACCESS_KEY_ID"], vp_env.env["AWS_SECRET_ACCESS_KEY"]
        Path(vp_env.env["AWS_SHARED_CREDENTIALS_FILE"]).write_text(
            "[stored]\naws_access_key_id = AKIAFROMUSERFILE0000\naws_secret_access_key = x\n"
            "[shell]\naws_access_key_id = AKIAFROMAWSPROFILE00\naws_secret_access_key = x\n"
        )
        _user_file(vp_env, "aws", "profile", "stored")
        vp_env.write_config('[project]\nname = "proj"\n[host]\nplatform = "aws"\n')
        yield vp_env, emulator


def _signed_with(env: VpEnv, emulator, extra_env: dict[str, str] | None = None) -> set[str]:
    emulator.access_keys.clear()
    r = env.run("ls", extra_env=extra_env)
    assert r.returncode == 0, r.stderr
    assert emulator.access_keys, "vp ls made no EC2 call"
    return set(emulator.access_keys)


def test_aws_environment_wins_over_the_user_files_profile(aws_project) -> None:
    env, emulator = aws_project
    assert _signed_with(env, emulator) == {"AKIAFROMUSERFILE0000"}  # the user file alone
    assert _signed_with(env, emulator, {"AWS_PROFILE": "shell"}) == {"AKIAFROMAWSPROFILE00"}
    keys = {"AWS_ACCESS_KEY_ID": "AKIAFROMENVIRONMENT0", "AWS_SECRET_ACCESS_KEY": "x"}
    assert _signed_with(env, emulator, keys) == {"AKIAFROMENVIRONMENT0"}


def test_aws_a_bad_profile_in_the_environment_is_named_as_the_source(aws_project) -> None:
    env, emulator = aws_project
    r = env.run("ls", extra_env={"AWS_PROFILE": "nosuch"})
    assert r.returncode == 1
    error, hint = _error(r.stderr)
    assert "'nosuch'" in error and "AWS_PROFILE from the environment" in error, error
    assert "AWS_PROFILE" in hint


def test_aws_a_rejected_key_is_named_by_its_source(aws_project) -> None:
    env, emulator = aws_project
    emulator.rejected_keys.add("AKIAFROMENVIRONMENT0")
    keys = {"AWS_ACCESS_KEY_ID": "AKIAFROMENVIRONMENT0", "AWS_SECRET_ACCESS_KEY": "x"}
    r = env.run("ls", extra_env=keys)
    assert r.returncode == 1
    error, hint = _error(r.stderr)
    assert "AuthFailure" in error and "AWS_ACCESS_KEY_ID from the environment" in error, error
    assert "AKIAFROMENVIRONMENT0" not in r.stderr + r.stdout
    assert _signed_with(env, emulator) == {"AKIAFROMUSERFILE0000"}  # the stored profile works
