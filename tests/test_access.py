"""Access and everyday use: `vp ssh`, `ssh-config`, `cleanup`, `tunnel`, `upload`, `download`,
`sync [--watch|--status]`, each run as a real `vp` process against a real sshd test host."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.requires import require_module, requires
from tests.waiting import wait_for
from vp import sshconfig
from vp.errors import VpError
from vp.platforms.base import Host

HOST_KEY_LINE = (
    "vp-vast-4242 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRoZXJlLWlzLW5vLXN1Y2gtaG9zdC1rZXktYXQtYWxs"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _readline(stream, timeout: float) -> str:
    """One line from a pipe, or '' after `timeout` seconds."""
    buf = b""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 1)
            if not chunk:
                break
            buf += chunk
            if chunk == b"\n":
                return buf.decode()
    return buf.decode()


def _stderr_until(proc: subprocess.Popen[bytes], needle: str, timeout: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        line = _readline(proc.stderr, max(0.1, deadline - time.monotonic()))
        if not line and proc.poll() is not None:
            break
        seen += line
    assert needle in seen, seen
    return seen


# ---------------------------------------------------------------------------- vp ssh


def test_ssh_runs_one_command_and_keeps_its_exit_status(ssh_project: VpEnv, remote_workdir):
    hi = ssh_project.run("ssh", "--", "echo", "hi")
    assert (hi.returncode, hi.stdout) == (0, "hi\n"), hi.stderr

    seven = ssh_project.run("ssh", "--", "sh", "-c", "exit 7")
    assert seven.returncode == 7, seven.stderr

    # one argument is shell text, run in the workdir once it exists
    remote_workdir.mkdir()
    text = ssh_project.run("ssh", "--", "echo $((6 * 7)) && pwd")
    assert text.stdout.split() == ["42", str(remote_workdir)], text.stderr

    quoted = ssh_project.run("ssh", "--", "printf", "%s|", "a b", "it's")
    assert quoted.stdout == "a b|it's|"


def _prompt_in_tmux(screen: bytes, session: str) -> bool:
    """tmux drew its status line for `session` and the shell in it printed its prompt (what
    is typed now reaches the shell, not a terminal still being set up)."""
    status = f"[{session}]".encode()
    return status in screen and re.search(rb"[#$] ", screen.rsplit(status, 1)[1]) is not None


def test_ssh_interactive_attaches_the_project_tmux_session(ssh_project: VpEnv, remote_workdir):
    remote_workdir.mkdir()
    pid, fd = pty.fork()
    if pid == 0:  # child: vp ssh on a terminal
        os.chdir(ssh_project.project)
        os.execvpe(sys.executable, [sys.executable, "-m", "vp", "ssh"], ssh_project.env)
    out = b""
    try:
        deadline = time.monotonic() + 20
        sent = False
        while b"SESSION=vp-proj DIR=" + str(remote_workdir).encode() not in out:
            assert time.monotonic() < deadline, out.decode(errors="replace")
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break
            if not sent and _prompt_in_tmux(out, "vp-proj"):
                os.write(fd, b"echo SESSION=$(tmux display-message -p '#S') DIR=$(pwd)\r")
                sent = True
        os.write(fd, b"tmux kill-session\r")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0


def test_ssh_on_the_local_platform_opens_the_local_workspace(vp_env: VpEnv):
    proc = vp_env.run("-p", "local", "ssh", "--", "pwd")
    assert proc.returncode == 0, proc.stderr
    assert "/vp/local/workspaces/" in proc.stdout


# ---------------------------------------------------------------------------- ssh-config


def test_ssh_config_writes_a_pinned_alias_and_removes_exactly_it(ssh_project: VpEnv):
    config = ssh_project.home / ".ssh" / "config"
    original = config.read_text() + "\n# my own comment\nHost other\n    User someone\n"
    config.write_text(original)

    first = ssh_project.run("ssh-config")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "vp-proj"
    text = config.read_text()
    assert text.startswith("# >>> vp proj >>>\n")
    assert "# <<< vp proj <<<\n" in text and text.endswith(original)
    block = text[: text.index("# <<< vp proj <<<")]
    assert "StrictHostKeyChecking yes" in block
    assert f"UserKnownHostsFile {ssh_project.home}/.local/state/vp/known_hosts" in block

    again = ssh_project.run("ssh-config")
    assert again.returncode == 0 and config.read_text() == text  # idempotent

    # plain OpenSSH, no vp options: the alias alone must log in and verify the pinned key
    login = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "vp-proj", "echo", "via-alias"],
        capture_output=True,
        text=True,
        timeout=30,
        env=ssh_project.env,
    )
    assert (login.returncode, login.stdout) == (0, "via-alias\n"), login.stderr

    removed = ssh_project.run("ssh-config", "--remove")
    assert removed.returncode == 0, removed.stderr
    assert config.read_text() == original


def test_ssh_config_blocks_unit(tmp_path: Path):
    path = tmp_path / "ssh" / "config"
    host = Host(id="1", name="box", platform="vast", ssh_host="10.0.0.1", ssh_port=2222)
    opts = {"hostname": ["10.0.0.1"], "port": ["2222"], "user": ["root"]}
    sshconfig.write_block("a", sshconfig.render_block("a", host, opts), path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    sshconfig.write_block("b", sshconfig.render_block("b", host, opts), path)
    text = path.read_text()
    assert [b.project for b in sshconfig.find_blocks(text)] == ["b", "a"]
    assert "HostKeyAlias" not in text and "# vp-host: vast:1" in text
    assert sshconfig.remove_blocks({"a", "b"}, path) == ["b", "a"]
    assert path.read_text() == ""


def test_cleanup_drops_blocks_and_pins_of_hosts_that_are_gone(ssh_project: VpEnv):
    assert ssh_project.run("ssh-config").returncode == 0  # a live host: kept
    config = ssh_project.home / ".ssh" / "config"
    dead = sshconfig.render_block(
        "dead",
        Host(id="4242", name="vp-dead", platform="vast", ssh_host="10.1.1.1"),
        {"hostname": ["10.1.1.1"], "port": ["22"], "user": ["root"]},
    )
    config.write_text(dead + "\n" + config.read_text())
    known = ssh_project.home / ".local/state/vp/known_hosts"
    pinned = known.read_text()
    known.write_text(pinned + HOST_KEY_LINE + "\n")

    proc = ssh_project.run("-o", "json", "cleanup")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ssh_config_removed"] == ["vp-dead"]
    assert report["known_hosts_removed"] == ["vp-vast-4242"]
    assert "# >>> vp proj >>>" in config.read_text()
    assert "vp-dead" not in config.read_text()
    assert known.read_text() == pinned


# ---------------------------------------------------------------------------- tunnel


def _serve_http(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`python -m http.server` on the host side (the test host is this machine)."""
    root.mkdir()
    (root / "index.html").write_text("hello through the tunnel")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return server, port


def _get(url: str) -> bytes:
    errors: list[OSError] = []

    def fetch() -> bytes | None:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert resp.status == 200
                return resp.read()
        except OSError as exc:  # http.server may still be starting
            errors[:] = [exc]
            return None

    return wait_for(fetch, 10, f"{url} to answer", context=lambda: f"last error: {errors}")


def _check_tunnel(env: VpEnv, remote_port: int, backend: str) -> None:
    local_port = _free_port()
    tunnel = env.popen("-v", "tunnel", f"{remote_port}:{local_port}")
    try:
        url = _readline(tunnel.stdout, 30).strip()
        assert url == f"http://127.0.0.1:{local_port}", tunnel.stderr.read1().decode()
        assert _get(url + "/") == b"hello through the tunnel"
        tunnel.send_signal(signal.SIGINT)
        assert tunnel.wait(timeout=10) == 130
        stderr = tunnel.stderr.read().decode()
        assert "error" not in stderr and f"forwarding with {backend}" in stderr, stderr
    finally:
        if tunnel.poll() is None:
            tunnel.kill()
            tunnel.wait()


def test_tunnel_forwards_a_host_port_until_ctrl_c(ssh_project: VpEnv, tmp_path: Path):
    server, port = _serve_http(tmp_path / "www")
    try:
        _check_tunnel(ssh_project, port, "OpenSSH")
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = ssh_project.run("tunnel", f"{port}:{taken.getsockname()[1]}", timeout=30)
        assert busy.returncode == 2 and "already in use" in busy.stderr, busy.stderr
    finally:
        server.kill()
        server.wait()


@requires(shutil.which("busybox"), "needs busybox nc (apt-get install busybox-static)")
def test_tunnel_through_a_proxycommand_alias_uses_openssh(ssh_project: VpEnv, tmp_path: Path):
    """vp leaves ProxyCommand/ProxyJump hops to OpenSSH: the forward rides vp's master."""
    host = ssh_project.host  # type: ignore[attr-defined]
    config = ssh_project.home / ".ssh" / "config"
    config.write_text(
        config.read_text()
        + f"Host jumped\n    HostName 127.0.0.1\n    Port {host.port}\n    User root\n"
        f"    IdentityFile {host.client_key}\n    ProxyCommand busybox nc %h %p\n"
    )
    vp_toml = ssh_project.project / "vp.toml"
    vp_toml.write_text(vp_toml.read_text().replace('host = "testhost"', 'host = "jumped"'))
    server, port = _serve_http(tmp_path / "www")
    try:
        _check_tunnel(ssh_project, port, "OpenSSH")
    finally:
        server.kill()
        server.wait()


def test_hashed_known_hosts_pin_and_verify_and_serve_in_process_forwards(
    ssh_project: VpEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`HashKnownHosts yes` in the user's ssh config: vp's pin is hashed, still verified on the
    next connection, refused when the key changes, and found by the in-process forwarder."""
    config = ssh_project.home / ".ssh" / "config"
    config.write_text("HashKnownHosts yes\n" + config.read_text())
    for _ in range(2):  # the first pins, the second verifies against the hashed pin
        r = ssh_project.run("true")
        assert r.returncode == 0, r.stderr
    host = ssh_project.host  # type: ignore[attr-defined]
    known = ssh_project.home / ".local/state/vp/known_hosts"
    text = known.read_text()
    assert text.startswith("|1|") and "127.0.0.1" not in text, text
    found = subprocess.run(
        ["ssh-keygen", "-F", f"[127.0.0.1]:{host.port}", "-f", str(known)],
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0 and host.host_public_key.split()[1] in found.stdout

    for name in ("HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(name, ssh_project.env[name])
    from vp import tunnel
    from vp.ssh import SshTransport, parse_target

    server, port = _serve_http(tmp_path / "www")
    transport = SshTransport(parse_target("testhost"))
    try:
        forwards = tunnel.connect_in_process(transport, [tunnel.Forward(port, 0)])
        try:
            assert forwards.backend == "sshtunnel"
            assert _get(forwards.forwards[0].url + "/") == b"hello through the tunnel"
        finally:
            forwards.close()
        # another key in the hashed pin's place: refused by OpenSSH and by paramiko
        other = tmp_path / "other_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True
        )
        pin = f"[127.0.0.1]:{host.port} " + " ".join(
            other.with_suffix(".pub").read_text().split()[:2]
        )
        subprocess.run(
            ["ssh-keygen", "-R", f"[127.0.0.1]:{host.port}", "-f", str(known)], check=True
        )
        known.write_text(pin + "\n")
        subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
        with pytest.raises(VpError) as refused:
            tunnel.connect_in_process(transport, [tunnel.Forward(port, 0)])
        assert "does not match" in str(refused.value)
        transport.close()
        r = ssh_project.run("true")
        assert r.returncode != 0 and "does not match the one vp pinned" in r.stderr, r.stderr
    finally:
        transport.close()
        server.kill()
        server.wait()


def test_tunnel_rejects_a_bad_spec(vp_env: VpEnv):
    proc = vp_env.run("-p", "local", "tunnel", "http")
    assert proc.returncode == 2 and "REMOTE_PORT" in proc.stderr


# ---------------------------------------------------------------------------- upload/download


@pytest.fixture(params=["rsync", "tar"])
def copy_project(request, vp_env: VpEnv, remote_workdir: Path, tmp_path: Path):
    """A project on a host with rsync, or on one without it (a container image): the tar
    path `vp run` already took must serve `vp upload`/`vp download` too."""
    if request.param == "rsync":
        vp_env.use_ssh_host(request.getfixturevalue("ssh_host"), remote_workdir)
        yield vp_env
        return
    from tests.test_sync import _NoRsyncHost

    host = _NoRsyncHost(tmp_path / "norsync-host")
    host.start()
    try:
        vp_env.use_ssh_host(host, remote_workdir)
        yield vp_env
    finally:
        host.close()


def test_upload_and_download_a_folder_outside_the_sync_rules(copy_project: VpEnv, remote_workdir):
    ssh_project = copy_project
    project = ssh_project.project
    (project / ".vpignore").write_text("data/\n")
    raw = project / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "a b.txt").write_text("one")
    (raw / "sub").mkdir()
    (raw / "sub" / "ünï.bin").write_bytes(b"\0\1\2")

    up = ssh_project.run("upload", "data/raw")
    assert up.returncode == 0, up.stderr
    assert (remote_workdir / "data/raw/a b.txt").read_text() == "one"
    assert (remote_workdir / "data/raw/sub/ünï.bin").read_bytes() == b"\0\1\2"

    # a single file to an explicit folder, absolute path on the host
    elsewhere = remote_workdir.parent / "elsewhere"
    up2 = ssh_project.run("upload", "data/raw/a b.txt", f"{elsewhere}/")
    assert up2.returncode == 0 and (elsewhere / "a b.txt").read_text() == "one", up2.stderr

    # the host changes one file and adds one; the local copy of the first was not edited
    (remote_workdir / "data/raw/sub/new.txt").write_text("new")
    (remote_workdir / "data/raw/a b.txt").write_text("host edit")
    down = ssh_project.run("-o", "json", "download", "data/raw")
    assert down.returncode == 0, down.stderr
    result = json.loads(down.stdout)
    assert result["fetched"] == ["raw/sub/new.txt"]
    assert result["conflicts"] == ["raw/a b.txt"]
    assert (raw / "a b.txt").read_text() == "one"  # never clobbered
    assert (raw / "a b.txt.vp-remote").read_text() == "host edit"
    assert (raw / "sub/new.txt").read_text() == "new"
    assert not list(raw.parent.glob(".vp-dl-*"))  # staging removed

    forced = ssh_project.run("download", "--force", "data/raw/a b.txt", "copy.txt")
    assert forced.returncode == 0, forced.stderr
    assert (project / "copy.txt").read_text() == "host edit"
    forced = ssh_project.run("download", "--force", "data/raw")
    assert (raw / "a b.txt").read_text() == "host edit"

    missing = ssh_project.run("download", "no/such/thing")
    assert missing.returncode == 1 and "nothing at" in missing.stderr


# ---------------------------------------------------------------------------- sync


def test_sync_status_is_a_dry_run_with_clean_json(ssh_project: VpEnv, remote_workdir):
    project = ssh_project.project
    (project / "train.py").write_text("print(1)\n")
    (project / "big.bin").write_bytes(b"x" * 5000)
    (project / ".env").write_text("SECRET=1\n")

    status = ssh_project.run("-o", "json", "sync", "--status")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)  # nothing but data on stdout
    assert data["upload"]["paths"] == ["big.bin", "train.py", "vp.toml"]
    assert data["upload"]["bytes"] >= 5000
    assert not remote_workdir.exists()  # nothing moved

    assert ssh_project.run("sync").returncode == 0
    assert (remote_workdir / "big.bin").exists() and not (remote_workdir / ".env").exists()
    (project / "big.bin").unlink()
    (project / "train.py").write_text("print(2)\n")
    data = json.loads(ssh_project.run("-o", "json", "sync", "--status").stdout)
    assert data["upload"]["paths"] == ["train.py"]
    assert data["delete"]["paths"] == ["big.bin"]
    assert data["unchanged"] == 1

    text = ssh_project.run("sync", "--status")
    assert "to upload: 1 file(s)" in text.stdout and "- big.bin" in text.stdout


def test_sync_watch_uploads_changes_but_not_ignored_files(ssh_project: VpEnv, remote_workdir):
    project = ssh_project.project
    (project / "train.py").write_text("print(1)\n")
    watcher = ssh_project.popen("sync", "--watch")
    try:
        _stderr_until(watcher, "watching", 30)
        assert (remote_workdir / "train.py").exists()
        (project / "secret.pem").write_text("key")  # ignored by default
        (project / "notes").mkdir()
        (project / "notes" / "new file.txt").write_text("hello")
        wait_for(lambda: (remote_workdir / "notes" / "new file.txt").exists(), 15, "upload")
        assert not (remote_workdir / "secret.pem").exists()
        (project / "train.py").unlink()
        wait_for(lambda: not (remote_workdir / "train.py").exists(), 15, "remote delete")
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=10) == 130
        assert b"error" not in watcher.stderr.read()
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()


@pytest.mark.parametrize("spec", ["8888", "8888:9999", "6006:0"])
def test_tunnel_spec_parsing(spec: str):
    from vp.tunnel import parse_spec

    f = parse_spec(spec)
    assert f.remote == int(spec.split(":")[0])
    assert f.local == int(spec.split(":")[-1])


def test_cleanup_finds_orphans_on_a_provider_and_destroys_them_with_yes(
    vp_env: VpEnv, tmp_path: Path, monkeypatch
):
    """Against the vast emulator: a vp-labelled instance this state doesn't know is an
    orphan (listed; destroyed with --yes); a known host the provider no longer has is gone,
    so its ssh-config block and host key pin go too."""
    require_module("vastai")
    from tests.emulators.vast import VastEmulator
    from vp.platforms import get_platform
    from vp.platforms.base import HostSpec
    from vp.state import State

    emulator = VastEmulator(tmp_path / "vast-emulator")
    emulator.start()
    try:
        vp_env.env.update(VAST_URL=emulator.url, VAST_API_KEY=emulator.api_key)
        for name in ("HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "VAST_URL", "VAST_API_KEY"):
            monkeypatch.setenv(name, vp_env.env[name])
        orphan = get_platform("vast", {"poll_interval": 0.1}).create(
            HostSpec(gpu="4090", max_price=0.5, disk_gb=40), "vp-elsewhere"
        )
        gone = Host(id="31337", name="vp-proj", platform="vast", ssh_host="10.9.9.9")
        State().save_host(gone, "proj")
        opts = {"hostname": ["10.9.9.9"], "port": ["22"], "user": ["root"]}
        sshconfig.write_block("proj", sshconfig.render_block("proj", gone, opts))
        known = vp_env.home / ".local/state/vp/known_hosts"
        known.write_text("vp-vast-31337 " + HOST_KEY_LINE.split(" ", 1)[1] + "\n")

        vp_env.write_config('[project]\nname = "proj"\n')
        listed = vp_env.run("-p", "vast", "-o", "json", "cleanup")
        assert listed.returncode == 0, listed.stderr
        report = json.loads(listed.stdout)
        assert [o["id"] for o in report["orphans"]] == [orphan.id], listed.stderr
        assert report["destroyed"] == []
        assert report["ssh_config_removed"] == ["vp-proj"]
        assert report["known_hosts_removed"] == ["vp-vast-31337"]
        assert "vp-proj" not in (vp_env.home / ".ssh/config").read_text()

        destroyed = vp_env.run("-p", "vast", "-o", "json", "cleanup", "--orphans", "--yes")
        assert destroyed.returncode == 0, destroyed.stderr
        assert json.loads(destroyed.stdout)["destroyed"] == [f"vast:{orphan.id}"]
        assert get_platform("vast", {}).list(None) == []
    finally:
        emulator.close()


def test_run_tunnel_forwards_while_the_run_lasts(ssh_project: VpEnv, tmp_path: Path):
    (ssh_project.project / "index.html").write_text("served by the run")
    remote_port, local_port = _free_port(), _free_port()
    serve = (
        f"python3 -m http.server {remote_port} --bind 127.0.0.1 & "
        "while [ ! -e stop ]; do sleep 0.1; done; kill $!"
    )
    run = ssh_project.popen("--tunnel", f"{remote_port}:{local_port}", serve)
    try:
        assert _get(f"http://127.0.0.1:{local_port}/index.html") == b"served by the run"
        ssh_project.run("ssh", "--", "touch stop")
        assert run.wait(timeout=30) in (0, 143), run.stderr.read().decode()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    with pytest.raises(OSError):  # closed with the run
        urllib.request.urlopen(f"http://127.0.0.1:{local_port}/", timeout=2)
