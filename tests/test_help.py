"""`vp --help` from stored screens (issue #17: <= 100 ms): the stored text is what typer
prints, it is current, and the fast path serves it only where typer would print the same."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import VpEnv
from vp import fastpath, helpgen, helptext

# A probe that runs `vp ARGV` through the typer app itself (vp.cli.main), never the store.
TYPER_VP = [sys.executable, "-c", "import sys; from vp.cli import main; main(sys.argv[1:])"]


def test_the_stored_screens_are_current() -> None:
    """Fails after any change to an option, a command or a docstring until
    `python -m vp.helpgen` is run: the stored text can never drift from typer's."""
    fresh = helpgen.render()
    assert helpgen.typer_version() == helptext.TYPER, "run: python -m vp.helpgen"
    assert set(helptext.SCREENS) == set(fresh), "run: python -m vp.helpgen"
    assert fastpath.sources_digest() == helptext.DIGEST, "run: python -m vp.helpgen"
    for path, text in fresh.items():
        assert helptext.SCREENS[path] == text, f"vp {path} --help is stale: python -m vp.helpgen"


def _typer(env: VpEnv, *args: str, columns: str = "80") -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TYPER_VP, *args],
        cwd=env.project,
        env={**env.env, "COLUMNS": columns},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "argv",
    [[], ["--help"], ["-h"], ["ls", "--help"], ["config", "get", "-h"], ["secret", "--help"]],
)
def test_the_fast_help_is_what_typer_prints(vp_env: VpEnv, argv: list[str]) -> None:
    for columns in ("80", "200"):
        fast = vp_env.run(*argv, extra_env={"COLUMNS": columns})
        slow = _typer(vp_env, *argv, columns=columns)
        assert (fast.returncode, fast.stderr) == (0, ""), fast.stderr
        assert fast.stdout == slow.stdout and slow.returncode == 0, (columns, slow.stderr)


def test_a_narrow_terminal_gets_typer_itself(vp_env: VpEnv) -> None:
    fast = vp_env.run("--help", extra_env={"COLUMNS": "60"})
    assert fast.stdout == _typer(vp_env, "--help", columns="60").stdout
    assert fast.stdout != helptext.SCREENS[""]  # wrapped at 58 columns, not 78


def test_another_typer_version_gets_typer_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    assert fastpath._typer_version() == helpgen.typer_version()  # read without importing
    assert fastpath.stored_help(["--help"]) == helptext.SCREENS[""]
    monkeypatch.setattr(helptext, "TYPER", "0.12.0")
    assert fastpath.stored_help(["--help"]) is None


def test_an_edited_source_gets_typer_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer who edits a docstring sees the new text at once, before re-rendering."""
    monkeypatch.setenv("COLUMNS", "100")
    assert fastpath.stored_help(["ls", "--help"]) == helptext.SCREENS["ls"]
    monkeypatch.setattr(helptext, "DIGEST", helptext.DIGEST + 1)
    assert fastpath.stored_help(["ls", "--help"]) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus", "--help"],  # typer names the bad option
        ["-o", "json", "--help"],  # global options first: typer
        ["nosuchcommand", "--help"],  # a command to run, with its own --help
        ["ls", "--all", "--help"],
        ["--version"],
    ],
)
def test_anything_else_is_left_to_typer(argv: list[str]) -> None:
    assert fastpath.stored_help(argv) is None


def test_the_fast_help_imports_no_typer(vp_env: VpEnv) -> None:
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['vp', '--help']\n"
        "try:\n"
        "    runpy.run_module('vp', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'click', 'rich')"
        " or m.startswith('vp.') and m not in ('vp.fastpath', 'vp.helptext', 'vp.__main__'))\n"
        "sys.__stderr__.write(f'CODE={code} HEAVY={heavy}\\n')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=vp_env.project,
        env={**vp_env.env, "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "CODE=0 HEAVY=[]" in proc.stderr, proc.stderr
    assert proc.stdout == helptext.SCREENS[""]


def test_a_completion_request_is_not_answered_with_help(vp_env: VpEnv) -> None:
    env = {"_VP_COMPLETE": "bash_complete", "COMP_WORDS": "vp ", "COMP_CWORD": "1"}
    r = vp_env.run(extra_env=env)
    typer = subprocess.run(
        TYPER_VP, cwd=vp_env.project, env={**vp_env.env, **env}, capture_output=True, text=True
    )
    assert "Usage:" not in r.stdout and r.stdout == typer.stdout, r.stdout
