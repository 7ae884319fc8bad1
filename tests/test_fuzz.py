"""Hostile and malformed input, fuzzed: vp.toml text, .vpignore lines, host strings, run ids
and command-line flags. Whatever comes in, vp answers with exit 2 (bad input) or 1, exactly
one `vp: error:` line (plus an optional `vp: hint:`), and never a traceback; and nothing the
user typed reaches a shell unquoted.

Most properties run in-process (fast, many examples); a bounded number of cases run the real
`vp` binary to check the rendering end to end.
"""

from __future__ import annotations

import contextlib
import io
import os
import string
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import VpEnv
from tests.sshhost import SshHost
from vp import config
from vp.errors import UsageError, VpError
from vp.ssh import SshTransport, parse_target
from vp.state import State
from vp.sync.ignore import IgnoreRules
from vp.ui import UI

FAST = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FEW = settings(
    max_examples=6,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

pytestmark = pytest.mark.timeout(240)

# ------------------------------------------------------------------------- strategies

NASTY = [
    "",
    " ",
    "-",
    "-oProxyCommand=touch /tmp/PWNED",
    "--",
    "a b",
    "$(touch /tmp/PWNED)",
    "`touch /tmp/PWNED`",
    "x;touch /tmp/PWNED",
    "x|y",
    "x&y",
    "x\ny",
    "x\rn",
    "x\0y",
    "'",
    '"',
    "\\",
    "!",
    "[",
    "[z-a]",
    "**",
    "../../etc/passwd",
    "/",
    "~",
    "%",
    "%C",
    "ü",
    "\u202e",
    "\ud800",
    "a" * 300,
]
nasty_text = st.one_of(st.sampled_from(NASTY), st.text(max_size=40))

SECTIONS = config.section_names() + ["tool", "Host", "ssh.extra", ""]
KEYS = sorted({k for s in config.tables() for k in config.table_keys(s)}) + ["PATH", "1X", "a-b"]

scalar = st.one_of(
    nasty_text,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
toml_value = st.one_of(
    scalar,
    st.lists(scalar, max_size=3),
    st.dictionaries(nasty_text, scalar, max_size=2),
)
toml_doc = st.dictionaries(
    st.one_of(st.sampled_from(SECTIONS), nasty_text),
    st.one_of(
        st.dictionaries(st.one_of(st.sampled_from(KEYS), nasty_text), toml_value, max_size=4),
        scalar,
    ),
    max_size=4,
)


@st.composite
def toml_texts(draw) -> bytes:
    """Valid TOML with hostile content, broken TOML, or bytes that are not UTF-8 at all."""
    kind = draw(st.sampled_from(["valid", "valid", "mangled", "raw", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "raw":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    doc = tomli_w.dumps(draw(toml_doc))
    if kind == "mangled" and doc:
        cut = draw(st.integers(min_value=0, max_value=len(doc)))
        junk = draw(st.sampled_from(["[", "=", '"', "\n[[", "]]", "\\", "\x00", "= =", "\n"]))
        doc = doc[:cut] + junk + doc[cut:]
    return doc.encode("utf-8", "surrogatepass")


def assert_one_line(exc: VpError) -> None:
    """The error as the CLI prints it: one `vp: error:` line, then at most one hint line."""
    assert exc.message and exc.exit_code in (1, 2)
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        UI().error(exc.message, hint=exc.hint)
    lines = buf.getvalue().splitlines()
    assert len(lines) == (2 if exc.hint else 1), lines
    assert lines[0].startswith("vp: error: ")
    assert exc.hint is None or lines[1].startswith("vp: hint: ")


# ------------------------------------------------------------------------- config files


@given(text=toml_texts(), where=st.sampled_from(["project", "user", "pyproject"]))
@FAST
def test_any_config_text_loads_or_fails_in_one_line(text: bytes, where: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        project = root / "proj"
        project.mkdir()
        xdg = root / "xdg"
        if where == "user":
            (xdg / "vp").mkdir(parents=True)
            (xdg / "vp" / "config.toml").write_bytes(text)
        elif where == "pyproject":
            head = b"[tool.vp]\n" if not text.lstrip().startswith(b"[") else b""
            (project / "pyproject.toml").write_bytes(head + text.replace(b"\n[", b"\n[tool.vp."))
        else:
            (project / "vp.toml").write_bytes(text)
        with mock.patch.dict(os.environ, {"XDG_CONFIG_HOME": str(xdg)}):
            try:
                cfg = config.load(cwd=project, environ={})
            except VpError as exc:
                assert_one_line(exc)
                return
            # a config that loads is one the rest of vp can use
            assert isinstance(cfg.project, str) and cfg.project
            assert cfg.platform in __import__("vp.platforms").platforms.NAMES
            masked = config.masked(cfg)
            for section, key in config.SECRET_KEYS:
                assert masked.get(section, {}).get(key) in (None, "", "****")


@given(
    name=st.one_of(st.sampled_from([f"VP_{s.upper()}_{k.upper()}" for s, k in [
        ("host", "gpus"), ("ssh", "reconnect_timeout"), ("sync", "download"),
        ("sync", "workdir"), ("host", "platform"), ("sync", "extra_ignore"),
    ]] + ["VP_PLATFORM", "VP_WORKDIR", "VP_PROJECT"])),
    value=nasty_text,
)  # fmt: skip
@FAST
def test_any_env_value_loads_or_fails_in_one_line(name: str, value: str) -> None:
    with tempfile.TemporaryDirectory() as d, mock.patch.dict(os.environ, {"XDG_CONFIG_HOME": d}):
        try:
            config.load(cwd=Path(d), environ={name: value})
        except VpError as exc:
            assert_one_line(exc)


@given(key=nasty_text, value=nasty_text)
@FAST
def test_config_keys_for_set_and_get(key: str, value: str) -> None:
    for dotted in (key, f"host.{key}", f"env.{key}", f"{key}.gpu"):
        try:
            section, name = config.parse_key(dotted)
            config.coerce_value(section, name, value)
        except VpError as exc:
            assert_one_line(exc)


# ------------------------------------------------------------------------- .vpignore


@given(lines=st.lists(nasty_text, max_size=8), path=nasty_text)
@FAST
def test_any_vpignore_line_filters_or_fails_in_one_line(lines: list[str], path: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "keep.py").write_text("x")
        (root / "sub").mkdir()
        (root / "sub" / "a.txt").write_text("x")
        (root / ".vpignore").write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
        try:  # the rules compile on first use (a cached warm walk needs none): either place
            rules = IgnoreRules.for_project(root, extra=lines[:2])
            files = rules.walk(root)
        except VpError as exc:
            assert_one_line(exc)
            assert exc.exit_code == 2
            return
        assert set(files) <= {"keep.py", "sub/a.txt", ".vpignore"}
        rules.ignored(path)
        rules.ignored(path, is_dir=True)


# ------------------------------------------------------------------------- host strings

SAFE_HOST_CHARS = set(string.ascii_letters + string.digits + "_.-:[]")


@given(spec=st.one_of(nasty_text, st.from_regex(r"\A[a-z@:\[\]0-9.\-_ ;$]{0,30}\Z")))
@FAST
def test_host_strings_are_parsed_or_refused(spec: str) -> None:
    try:
        target = parse_target(spec)
    except UsageError as exc:
        assert_one_line(exc)
        return
    # what got through can never be read as an ssh option or shell text
    assert target.host and not target.host.startswith("-")
    assert set(target.host) <= SAFE_HOST_CHARS, target.host
    assert target.user is None or (
        not target.user.startswith("-") and set(target.user) <= SAFE_HOST_CHARS
    )
    assert target.port is None or 0 < target.port < 65536
    argv = SshTransport(target).shell_argv()
    assert argv[argv.index("--") + 1] == target.host  # the host always follows `--`


# ------------------------------------------------------------------------- run ids


@given(run_id=st.one_of(nasty_text, st.from_regex(r"\A[a-z0-9\-%_]{0,12}\Z")))
@FAST
def test_run_ids_are_found_or_refused(run_id: str, tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    try:
        state.run(run_id)
    except UsageError as exc:
        assert_one_line(exc)


# ------------------------------------------------------------------------- the real binary


def check_cli_failure(r, *, codes=(1, 2)) -> None:
    assert r.returncode in codes, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("vp: error:")]
    assert len(errors) == 1, r.stderr
    others = [ln for ln in lines if not ln.startswith(("vp: error:", "vp: hint:"))]
    assert not others, r.stderr


CLI_CASES = [
    ["-o", "xml", "runs"],
    ["--output=", "runs"],
    ["-p", "nowhere", "true"],
    ["-p", "ssh", "true"],  # no host configured
    ["--host", "-oProxyCommand=touch PWNED", "-p", "ssh", "true"],
    ["--host", "a;touch PWNED", "-p", "ssh", "true"],
    ["--host", "$(touch PWNED)", "-p", "ssh", "true"],
    ["--host", "root@a b:22", "-p", "ssh", "true"],
    ["--host", "x:99999", "-p", "ssh", "true"],
    ["logs", "../../etc/passwd"],
    ["logs", "a;touch PWNED"],
    ["logs", "nosuchrun"],
    ["kill", "%"],
    ["--config", "/nonexistent/vp.toml", "true"],
    ["--no-such-flag"],
    ["config", "get", "nosuch.key"],
    ["config", "set", "host.gpus", "many"],
    ["runs", "-n", "lots"],
]


@pytest.mark.parametrize("argv", CLI_CASES, ids=[" ".join(a)[:40] for a in CLI_CASES])
def test_cli_bad_input_is_one_line(vp_env: VpEnv, argv: list[str]) -> None:
    vp_env.write_config('[project]\nname = "proj"\n')
    r = vp_env.run(*argv, timeout=60)
    check_cli_failure(r)
    assert not (vp_env.project / "PWNED").exists()


@given(text=toml_texts())
@FEW
def test_cli_bad_vp_toml_is_one_line(vp_env: VpEnv, text: bytes) -> None:
    (vp_env.project / "vp.toml").write_bytes(text + b"\n[host]\nplatform = 'nowhere'\n")
    r = vp_env.run("true", timeout=60)
    check_cli_failure(r)


@given(lines=st.lists(st.sampled_from(["\\", "!", "[z-a]", "ok.txt", "a\\"]), min_size=1))
@settings(max_examples=3, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_cli_bad_vpignore_is_one_line_or_works(vp_env: VpEnv, lines: list[str]) -> None:
    vp_env.write_config('[project]\nname = "proj"\n')
    (vp_env.project / ".vpignore").write_text("\n".join(lines) + "\n")
    r = vp_env.run("--sync-only", "true", timeout=60)
    if set(lines) - {"ok.txt"}:  # each of the others is invalid gitignore syntax
        check_cli_failure(r, codes=(2,))
        assert ".vpignore: line" in r.stderr
    else:
        assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------- nothing reaches a shell


def test_shell_metacharacters_in_workdir_and_names_stay_literal(
    vp_env: VpEnv, ssh_host: SshHost, tmp_path: Path
) -> None:
    pwned = tmp_path / "PWNED"
    base = tmp_path / "remote"
    base.mkdir()
    workdir = f"{base}/x; touch {pwned}; $(touch {pwned}) `touch {pwned}` '\" end"
    vp_env.use_ssh_host(ssh_host, Path("/placeholder"))
    cfg = vp_env.project / "vp.toml"
    cfg.write_text(
        cfg.read_text().replace('workdir = "/placeholder"', f"workdir = {tomli_w_str(workdir)}")
        + f"\n[env]\nEVIL = {tomli_w_str(f'$(touch {pwned})')}\n"
    )
    evil_name = "a; touch PWNED; $(touch PWNED) `touch PWNED` '\".txt"
    (vp_env.project / evil_name).write_text("data")
    r = vp_env.run("sh", "-c", f'printf "%s" "$EVIL" > "$(printf out)"; cat {quote(evil_name)}')
    assert r.returncode == 0, r.stderr
    assert r.stdout == "data"
    assert not pwned.exists()
    [made] = list(base.iterdir())
    assert made.name == workdir[len(str(base)) + 1 :].split("/")[0]
    assert (Path(workdir) / evil_name).read_text() == "data"
    assert (vp_env.project / "out").read_text() == f"$(touch {pwned})"
    assert not [p for p in tmp_path.rglob("PWNED")]
    # a hostile --host never gets as far as ssh
    r = vp_env.run("-p", "ssh", "--host", f"x;touch {pwned}", "true")
    check_cli_failure(r, codes=(2,))
    assert not pwned.exists()


def tomli_w_str(value: str) -> str:
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def quote(value: str) -> str:
    import shlex

    return shlex.quote(value)
