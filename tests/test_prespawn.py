"""The warm run's session opened at start-up (vp/prespawn.py): used when the folder, its
config and vp's environment are as the last run here left them, and otherwise never a session,
let alone a connection, that the full pipeline would not have made."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.sshhost import SshHost

pytestmark = pytest.mark.timeout(180)

# What vp.prespawn.start decided, seen from a child with the user's environment.
_PROBE = """
import json, sys
from vp import prespawn
prespawn.start(sys.argv[1:])
early = prespawn._early
print(json.dumps({"early": early is not None, "argv": early[0] if early else None}))
prespawn.discard()
"""


def _probe(env: VpEnv, *argv: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        cwd=env.project,
        env=env.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _log(host: SshHost) -> int:
    return host.log_path.stat().st_size


def _since(host: SshHost, offset: int) -> str:
    with host.log_path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _entries(env: VpEnv) -> list[Path]:
    folder = env.home / ".local/state/vp/dispatch"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _warm(env: VpEnv) -> None:
    (env.project / "train.py").write_text("print('hi')\n")
    for _ in range(2):
        r = env.run("true")
        assert r.returncode == 0, r.stderr


def test_a_warm_run_reuses_the_session_the_last_run_here_used(ssh_project: VpEnv) -> None:
    env, host = ssh_project, ssh_project.host  # type: ignore[attr-defined]
    _warm(env)
    [entry] = _entries(env)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700
    probe = _probe(env, "echo", "hi")
    assert probe["early"] and probe["argv"][-1] == "sh -s", probe

    before, written = _log(host), entry.stat().st_mtime_ns
    r = env.run("echo", "from-the-early-session")
    assert r.returncode == 0 and r.stdout == "from-the-early-session\n", r.stderr
    log = _since(host, before)
    assert log.count("Starting session:") == 1 and "Accepted publickey" not in log, log
    assert entry.stat().st_mtime_ns == written, "a warm call that hit rewrote its entry"


def test_nothing_is_opened_early_for_a_subcommand_or_options(ssh_project: VpEnv) -> None:
    env = ssh_project
    _warm(env)
    assert not _probe(env, "runs")["early"]
    assert not _probe(env, "--no-sync", "true")["early"]
    no = dict(env.env, VP_NO_PRESPAWN="1")
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, "true"],
        cwd=env.project,
        env=no,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(probe.stdout)["early"] is False, probe.stderr


def test_a_changed_project_file_opens_no_session_on_the_old_host(
    ssh_project: VpEnv, tmp_path: Path
) -> None:
    """A pulled commit that points the project elsewhere: the old host must not even get a
    session from the guess."""
    env, host = ssh_project, ssh_project.host  # type: ignore[attr-defined]
    _warm(env)
    cfg = env.project / "vp.toml"
    cfg.write_text(cfg.read_text().replace('"testhost"', '"nowhere.invalid"'))
    assert "nowhere.invalid" in cfg.read_text()
    assert not _probe(env, "true")["early"]
    before = _log(host)
    r = env.run("true")
    assert r.returncode != 0
    assert "Starting session:" not in _since(host, before)


def test_an_environment_change_opens_nothing_early(ssh_project: VpEnv) -> None:
    env = ssh_project
    _warm(env)
    env.env["VP_PLATFORM"] = "local"
    assert not _probe(env, "true")["early"]


def test_the_guess_never_makes_a_connection_of_its_own(ssh_project: VpEnv) -> None:
    """The master is gone (host rebooted, `vp down`): an early `ssh` with ControlMaster=no would
    log in by itself. Only vp's own new master may log in."""
    env, host = ssh_project, ssh_project.host  # type: ignore[attr-defined]
    _warm(env)
    [entry] = _entries(env)
    import marshal

    key, argv, subcommands, base, slots = marshal.loads(entry.read_bytes())
    subprocess.run(
        [*argv[: argv.index("-T")], "-O", "exit", "--", argv[-2]],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert not os.path.exists(base)
    assert not _probe(env, "true")["early"]
    before = _log(host)
    r = env.run("true")
    assert r.returncode == 0, r.stderr
    assert _since(host, before).count("Accepted publickey") == 1


def test_a_guess_that_does_not_match_is_ended_unused(ssh_project: VpEnv, tmp_path: Path) -> None:
    """An entry whose argv the run would not use (vp upgraded, ssh options changed): its
    session gets no script, the run uses its own, and the entry is corrected."""
    env = ssh_project
    _warm(env)
    [entry] = _entries(env)
    import marshal

    key, argv, subcommands, base, slots = marshal.loads(entry.read_bytes())
    got = tmp_path / "what-the-guess-was-sent"
    wrong = [*argv[:-1], f"cat > {got}"]
    entry.write_bytes(marshal.dumps((key, tuple(wrong), subcommands, base, slots)))
    r = env.run("echo", "ok")
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
    assert not got.exists() or got.read_bytes() == b"", "the run's script went to the guess"
    assert marshal.loads(entry.read_bytes())[1] == argv


def test_after_an_edit_the_early_session_waits_for_the_upload(ssh_project: VpEnv) -> None:
    """Edit, then run (the everyday loop): the upload takes a second session slot and the run
    goes into the session opened at start-up: two sessions, no set-up after the upload."""
    env, host = ssh_project, ssh_project.host  # type: ignore[attr-defined]
    _warm(env)
    (env.project / "train.py").write_text("print('edited')\n")
    before = _log(host)
    r = env.run("cat", "train.py")
    assert r.returncode == 0 and r.stdout == "print('edited')\n", r.stderr
    assert _since(host, before).count("Starting session:") == 2


def test_with_no_second_slot_free_the_early_session_makes_way(ssh_project: VpEnv) -> None:
    """Every other session slot on the master is held (other vp calls): the early session is
    ended before the upload rather than holding two sessions on one slot."""
    import fcntl

    env = ssh_project
    _warm(env)
    [entry] = _entries(env)
    import marshal

    _, _, _, base, slots = marshal.loads(entry.read_bytes())
    held = []
    for s in range(1, slots):
        fd = os.open(f"{base}.m0s{s}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(fd)
    try:
        (env.project / "train.py").write_text("print('edited again')\n")
        r = env.run("cat", "train.py")
        assert r.returncode == 0 and r.stdout == "print('edited again')\n", r.stderr
    finally:
        for fd in held:
            os.close(fd)


def test_no_credential_from_the_environment_lands_in_the_entry(ssh_project: VpEnv) -> None:
    """The entry is keyed on vp's environment, which holds credentials (VP_REGISTRY_PASSWORD,
    API keys): a digest of it, never the values, may be kept."""
    env = ssh_project
    secret = "Zq8-registry-password-7Tx"
    env.env["VP_REGISTRY_PASSWORD"] = secret
    _warm(env)
    [entry] = _entries(env)
    assert secret.encode() not in entry.read_bytes()
    found = [
        p
        for p in env.home.rglob("*")
        if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes()
    ]
    assert not found, found


def test_a_first_upload_goes_into_the_session_opened_before_the_walk(
    ssh_project: VpEnv, remote_workdir: Path
) -> None:
    """The host's side of a first upload opens before vp walks the tree (vp/sync/tarpipe.py
    Receiver): the files go into that very session, so a first run is two sessions (the
    upload, the run), not one opened for nothing and another for the tar."""
    env, host = ssh_project, ssh_project.host  # type: ignore[attr-defined]
    for i in range(30):
        (env.project / f"f{i}.txt").write_text(f"{i}\n")
    before = _log(host)
    r = env.run("cat", "f29.txt")
    assert r.returncode == 0 and r.stdout == "29\n", r.stderr
    assert (remote_workdir / "f0.txt").read_text() == "0\n"
    assert _since(host, before).count("Starting session:") == 2
