"""`vp secret` and `[secrets]`: values come in on stdin, are stored 0600, reach only the runs of a
project that names them (never argv, never a file kept on the host), and show as *** in vp's
output and in the run's stored log. A missing required secret fails before any host call."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import VpEnv, on_vast
from tests.sshhost import SshHost
from tests.test_secrets import _ArgvScan, _files_holding, _host_runs_dir, _sha

try:
    from tests.emulators.vast import vast_emulator  # noqa: F401 - fixture
except ImportError:  # pragma: no cover - vastai missing
    vast_emulator = None

pytestmark = pytest.mark.timeout(180)


def _add(env: VpEnv, text: str) -> None:
    cfg = env.project / "vp.toml"
    cfg.write_text(cfg.read_text() + "\n" + text)


def _store(env: VpEnv) -> Path:
    return env.home / ".config" / "vp" / "secrets.toml"


def test_secret_set_ls_rm(vp_env: VpEnv) -> None:
    value = "hf_" + secrets.token_hex(20)
    r = vp_env.run("secret", "set", "HF_TOKEN", input=value + "\n")
    assert r.returncode == 0, r.stderr
    assert value not in r.stdout + r.stderr
    store = _store(vp_env)
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert value in store.read_text()
    assert not [p for p in store.parent.iterdir() if p.name.endswith(".tmp")]
    # multi-line values keep their inner newlines; one trailing newline is dropped
    pem = "-----BEGIN KEY-----\nabc\n-----END KEY-----"
    assert vp_env.run("secret", "set", "DEPLOY_KEY", input=pem + "\n").returncode == 0

    for fmt in ("text", "json"):
        r = vp_env.run("-o", fmt, "secret", "ls")
        assert r.returncode == 0, r.stderr
        assert value not in r.stdout + r.stderr and "abc" not in r.stdout
    rows = {row["name"]: row for row in json.loads(vp_env.run("-o", "json", "secret", "ls").stdout)}
    assert set(rows) == {"HF_TOKEN", "DEPLOY_KEY"}
    assert rows["HF_TOKEN"]["source"].startswith("user store")
    r = vp_env.run("-o", "json", "secret", "ls", extra_env={"HF_TOKEN": "from-env"})
    shown = {row["name"]: row["source"] for row in json.loads(r.stdout)}
    assert shown["HF_TOKEN"] == "environment (overrides the store)"

    # never from argv: an extra argument is refused, not stored
    r = vp_env.run("secret", "set", "HF_TOKEN", "sk-in-argv")
    assert r.returncode == 2 and "sk-in-argv" not in store.read_text()
    r = vp_env.run("secret", "set", "EMPTY", input="")
    assert r.returncode == 2 and "no value" in r.stderr

    assert vp_env.run("secret", "rm", "HF_TOKEN").returncode == 0
    assert value not in store.read_text()
    r = vp_env.run("secret", "rm", "HF_TOKEN")
    assert r.returncode == 2 and "no stored secret" in r.stderr
    assert stat.S_IMODE(store.stat().st_mode) == 0o600


def _sessions_log(host: SshHost) -> int:
    return host.log_path.stat().st_size


def test_missing_required_secret_fails_before_connecting(ssh_project: VpEnv) -> None:
    env = ssh_project
    host: SshHost = env.host  # type: ignore[attr-defined]
    _add(env, '[secrets]\nrequired = ["HF_TOKEN"]\n')
    offset = _sessions_log(host)
    r = env.run("true")
    assert r.returncode == 2, r.stderr
    assert "HF_TOKEN" in r.stderr and "vp secret set HF_TOKEN" in r.stderr
    assert "Traceback" not in r.stderr
    with host.log_path.open("rb") as f:
        f.seek(offset)
        assert b"Connection from" not in f.read(), "vp connected to the host"
    # set through the environment, it is enough
    r = env.run("true", extra_env={"HF_TOKEN": "x" * 12})
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(vast_emulator is None, reason="vastai is not installed")
def test_missing_required_secret_creates_no_cloud_host(
    vp_env: VpEnv,
    vast_emulator,  # noqa: F811
    remote_workdir: Path,
) -> None:
    extra = '[secrets]\nrequired = ["HF_TOKEN", "WANDB_API_KEY"]\n'
    on_vast(vp_env, vast_emulator, remote_workdir, extra=extra)
    r = vp_env.run("python", "train.py")
    assert r.returncode == 2, r.stderr
    assert "HF_TOKEN, WANDB_API_KEY" in r.stderr
    assert vast_emulator.requests == []
    assert vast_emulator.instances == {}


@pytest.mark.skipif(vast_emulator is None, reason="vastai is not installed")
def test_every_path_that_creates_or_starts_a_host_checks_required_secrets(
    vp_env: VpEnv,
    vast_emulator,  # noqa: F811
    remote_workdir: Path,
) -> None:
    """`vp up`, `vp start` (what the web page's start runs), a run, `vp setup` and `--nodes`:
    a missing required secret is the same error, before any provider call; a path that finds
    the host stopped only on the way (`vp ssh`) fails before starting it."""
    extra = '[setup]\nrun = "true"\n[secrets]\nrequired = ["HF_TOKEN"]\n'
    on_vast(vp_env, vast_emulator, remote_workdir, extra=extra)
    r = vp_env.run("up")
    assert r.returncode == 2 and "HF_TOKEN" in r.stderr, r.stderr
    assert vast_emulator.requests == [] and vast_emulator.instances == {}

    token = {"HF_TOKEN": "hf_" + secrets.token_hex(8)}
    r = vp_env.run("-o", "json", "up", extra_env=token)
    assert r.returncode == 0, r.stderr
    name = json.loads(r.stdout)["name"]
    assert vp_env.run("stop").returncode == 0
    (iid,) = vast_emulator.instances
    assert vast_emulator.instances[iid]["actual_status"] == "stopped"

    for args in (["up"], ["start", name], ["setup"], ["true"], ["--nodes", "2", "true"]):
        vast_emulator.requests.clear()
        r = vp_env.run(*args)
        assert r.returncode == 2, (args, r.stderr)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("vp: error:")]
        assert len(errors) == 1 and "HF_TOKEN" in errors[0], (args, r.stderr)
        assert "vp secret set HF_TOKEN" in r.stderr and "Traceback" not in r.stderr
        assert vast_emulator.requests == [], (args, vast_emulator.requests)
    r = vp_env.run("ssh", "--", "true")
    assert r.returncode == 2 and "HF_TOKEN" in r.stderr, r.stderr
    assert not [q for q in vast_emulator.requests if q[0] != "GET"], vast_emulator.requests
    assert list(vast_emulator.instances) == [iid]
    assert vast_emulator.instances[iid]["actual_status"] == "stopped"

    r = vp_env.run("start", name, extra_env=token)
    assert r.returncode == 0, r.stderr
    assert vp_env.run("down", "--yes").returncode == 0


def test_a_project_cannot_have_vp_send_your_credentials(ssh_project: VpEnv) -> None:
    """A cloned repo's vp.toml listing your cloud keys would ship them to a rented host."""
    env = ssh_project
    host: SshHost = env.host  # type: ignore[attr-defined]
    stolen = "aws-secret-" + secrets.token_hex(12)
    for name in ("AWS_SECRET_ACCESS_KEY", "VAST_API_KEY", "VP_REGISTRY_PASSWORD", "PATH"):
        cfg = env.project / "vp.toml"
        base = cfg.read_text().split("\n[secrets]")[0]
        cfg.write_text(base + f'\n[secrets]\noptional = ["{name}"]\n')
        offset = _sessions_log(host)
        r = env.run(
            "sh", "-c", f'echo "${{{name}:-unset}}"', extra_env={"AWS_SECRET_ACCESS_KEY": stolen}
        )
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        assert f"{name} is one of vp's own credentials" in r.stderr
        assert stolen not in r.stdout + r.stderr
        with host.log_path.open("rb") as f:
            f.seek(offset)
            assert b"Connection from" not in f.read()


def test_secret_reaches_the_run_masked_and_nowhere_else(
    ssh_project: VpEnv, remote_workdir: Path, tmp_path: Path
) -> None:
    env = ssh_project
    t0 = time.time()
    token = "hf_" + secrets.token_hex(20)
    unlisted = "unlisted-" + secrets.token_hex(16)
    _add(env, '[secrets]\nrequired = ["HF_TOKEN"]\noptional = ["WANDB_API_KEY"]\n')
    assert env.run("secret", "set", "HF_TOKEN", input=token).returncode == 0
    # stored too, but this project does not name it: it goes to no host
    assert env.run("secret", "set", "UNLISTED", input=unlisted).returncode == 0
    needles = {"HF_TOKEN": token, "UNLISTED": unlisted}
    started, release = tmp_path / "started", tmp_path / "release"
    command = (
        f'printf %s "$HF_TOKEN" | sha256sum > {tmp_path}/hash; '
        'echo "token=$HF_TOKEN"; '
        # the value split across two writes, far apart: still one secret in the output
        'vp_head=${HF_TOKEN%????????????????}; printf "split:%s" "$vp_head"; sleep 0.5; '
        'printf "%s:end\\n" "${HF_TOKEN#"$vp_head"}"; '
        'echo "unlisted=${UNLISTED:-none} wandb=${WANDB_API_KEY:-none}"; '
        f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done; echo done"
    )
    with _ArgvScan(needles) as scan:
        proc = env.popen("sh", "-c", command)
        deadline = time.monotonic() + 120
        while not started.exists():  # the event: the command is running on the host
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        wanted = scan.passes + 2
        while scan.passes < wanted:
            assert time.monotonic() < deadline, "the scan stalled"
            time.sleep(0.05)
        # while the command runs: no file in the host's runs dir holds the value (the env and
        # mask files are gone, the log is masked as it is written)
        assert _files_holding(_host_runs_dir(), needles, since=t0) == []
        release.touch()
        out_b, err_b = proc.communicate(timeout=120)
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, err
    assert (tmp_path / "hash").read_text().split()[0] == _sha(token)  # the run saw it
    assert out.splitlines() == [
        "token=***",
        "split:***:end",
        "unlisted=none wandb=none",
        "done",
    ]
    assert scan.hits == [], scan.hits[:3]
    assert token not in err

    run_id = json.loads(env.run("-o", "json", "runs").stdout)[0]["id"]
    log = (_host_runs_dir() / run_id / "log").read_bytes()
    assert b"token=***\n" in log and b"split:***:end\n" in log
    r = env.run("logs", run_id)
    assert r.returncode == 0 and r.stdout == out, r.stdout
    assert _files_holding(_host_runs_dir(), needles, since=t0) == []
    assert _files_holding(env.home, needles, skip=(_store(env),)) == []
    assert _files_holding(remote_workdir, needles) == []
    assert _files_holding(env.project, needles) == []


def test_vp_logs_masks_a_log_the_host_could_not(ssh_project: VpEnv) -> None:
    """A host with neither perl nor python3 keeps the raw log; vp still shows ***."""
    env = ssh_project
    token = "tok-" + secrets.token_hex(16)
    _add(env, '[secrets]\nrequired = ["MY_TOKEN"]\n')
    r = env.run("sh", "-c", 'echo "t=$MY_TOKEN"', extra_env={"MY_TOKEN": token})
    assert r.returncode == 0 and r.stdout == "t=***\n", r.stdout + r.stderr
    run_id = json.loads(env.run("-o", "json", "runs").stdout)[0]["id"]
    log = _host_runs_dir() / run_id / "log"
    log.write_text(f"t={token}\n")  # as an unfiltered host would have stored it
    r = env.run("logs", run_id, extra_env={"MY_TOKEN": token})
    assert r.returncode == 0 and r.stdout == "t=***\n", r.stdout


ODD = "a'b\"c $HOME `x` \\ é\nline2 *** end"


@pytest.mark.parametrize("program", ["perl", "python3", "local"])
def test_filters_mask_values_split_anywhere(program: str, tmp_path: Path) -> None:
    """The host filters and vp's own: every split point of a value gives the same output, and
    bytes that only looked like the start of a value are not lost."""
    from vp import mask

    values = ["hf_abcdefghij", "hf_abcXYZ", ODD]
    text = ("x hf_abcdefghij y hf_abcXYZ z hf_ab " + ODD + " tail hf_a").encode()
    expected = b"x *** y *** z hf_ab *** tail hf_a"
    env = {**os.environ, **{f"_VP_MASK_{i}": v for i, v in enumerate(values)}}
    for cut in range(1, len(text)):
        parts = [text[:cut], text[cut:]]
        if program == "local":
            m = mask.Masker(values)
            got = m.feed(parts[0]) + m.feed(parts[1]) + m.flush()
        else:
            if shutil.which(program) is None:
                pytest.skip(f"{program} is not installed")
            source = mask.PERL_FILTER if program == "perl" else mask.PYTHON_FILTER
            script = tmp_path / "filter"
            script.write_text(source)
            exe = sys.executable if program == "python3" else program  # pyenv shims are slow
            proc = subprocess.Popen(
                [exe, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
            )
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(parts[0])
            proc.stdin.flush()
            # The filter answers the first part on its own ("x" never starts a value), and
            # what it let out already is final: a prefix of the masked whole.
            first = proc.stdout.read1(65536)
            assert expected.startswith(first), (cut, first)
            proc.stdin.write(parts[1])
            proc.stdin.close()
            got = first + proc.stdout.read()
            assert proc.wait() == 0
        assert got == expected, (program, cut, got)
