"""GPU names as people type them (issue #12 item 8), through the real CLI against each
provider's emulator: `--gpu RTX4090` finds the `RTX 4090` offers, and a GPU filter matching
nothing exits non-zero naming the nearest GPU the platform offers, with a hint that works."""

from __future__ import annotations

import json

import pytest

from tests.conftest import VpEnv, point_at
from tests.conftest import error_and_hint as _error
from tests.emulators.runpod import runpod_emulator  # noqa: F401
from tests.emulators.thunder import thunder_emulator  # noqa: F401
from tests.emulators.vast import vast_emulator  # noqa: F401

pytestmark = pytest.mark.timeout(120)

# name: (provider words, spellings of one offered GPU, its display name, a typo of it);
# the emulator is the fixture `NAME_emulator`.
CLOUDS = {
    "vast": ("vast.ai", ["RTX4090", "rtx-4090", "rtx 4090", "4090"], "RTX 4090", "RTX4909"),
    "runpod": ("RunPod", ["RTX4090", "geforce-rtx-4090"], "RTX 4090", "RTX4909"),
    "thunder": ("Thunder Compute", ["h100", "NVIDIA-H100"], "NVIDIA H100", "H1000"),
}


def _project(name: str, request, vp_env: VpEnv, gpu: str | None = None):
    emulator = request.getfixturevalue(f"{name}_emulator")
    point_at(vp_env, name, emulator)
    host = f'gpu = "{gpu}"\n' if gpu else ""
    vp_env.write_config(f'[project]\nname = "proj"\n[host]\nplatform = "{name}"\n{host}')
    return vp_env, emulator


@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_every_spelling_of_an_offered_gpu_finds_its_offers(
    name: str, request, vp_env: VpEnv
) -> None:
    env, _ = _project(name, request, vp_env)
    *_, spellings, display, _typo = CLOUDS[name]
    for spelling in spellings:
        r = env.run("-o", "json", "offers", "--gpu", spelling)
        assert r.returncode == 0, (spelling, r.stderr)
        rows = json.loads(r.stdout)
        assert rows and all(display in row["gpu"] for row in rows), (spelling, rows)


@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_a_gpu_nobody_offers_fails_naming_the_nearest_offered(
    name: str, request, vp_env: VpEnv
) -> None:
    env, _ = _project(name, request, vp_env)
    *_, provider, _spellings, display, typo = CLOUDS[name]
    r = env.run("offers", "--gpu", typo, "-p", name)
    assert r.returncode == 1, r.stderr
    error, hint = _error(r.stderr)
    assert error == (
        f"vp: error: no {provider} offer matches --gpu {typo}; nearest offered: {display}"
    )
    assert hint == f"vp: hint: run `vp offers -p {name}` to see what is available"
    shown = env.run("offers", "-p", name)  # the hint, verbatim
    assert shown.returncode == 0 and display in shown.stdout, shown.stderr


def test_no_offer_within_an_explicit_price_exits_non_zero(request, vp_env: VpEnv) -> None:
    env, _ = _project("vast", request, vp_env)
    r = env.run("offers", "--gpu", "rtx4090", "--max-price", "0.01")
    assert r.returncode == 1, r.stderr
    error, hint = _error(r.stderr)
    assert error == "vp: error: no vast offers for 1x rtx4090 at or below $0.01/h"
    assert "--max-price" in hint


def test_no_filter_and_nothing_offered_is_not_an_error(request, vp_env: VpEnv) -> None:
    env, emulator = _project("vast", request, vp_env)
    emulator.offers.clear()
    r = env.run("offers")
    assert r.returncode == 0 and "vast offers nothing right now" in r.stderr, r.stderr


def test_create_with_a_gpu_nobody_offers_rents_nothing_and_says_how_to_fix_it(
    request, vp_env: VpEnv
) -> None:
    env, emulator = _project("vast", request, vp_env, gpu="RTX4909")
    r = env.run("--yes", "up")  # past the no-max_price question: the GPU name is what fails
    assert r.returncode == 1, r.stderr
    error, hint = _error(r.stderr)
    assert error == (
        "vp: error: no vast.ai offer matches [host] gpu = 'RTX4909'; nearest offered: RTX 4090"
    )
    assert hint == "vp: hint: set a GPU it offers: `vp config set host.gpu NAME`"
    assert emulator.instances == {}
    fixed = env.run("config", "set", "host.gpu", "RTX4090")
    assert fixed.returncode == 0, fixed.stderr
    r = env.run("offers")
    assert r.returncode == 0 and "RTX 4090" in r.stdout, r.stderr
