"""A rented host is not trusted: whatever a run leaves in the workdir, sync down (rsync, the
tar fallback, `vp download`) writes only inside the project, never replaces vp's own control
files, and brings back only plain files and contained links, owned by the local user.

Every attack is checked against a canary tree outside the project that must stay
byte-identical. The test hosts share this machine's filesystem, so the canary sits outside
both the project and the host's workdir, and no attack writes to it from the host side.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.sshhost import SshHost
from tests.test_sync import _NoRsyncHost


def _snapshot(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", st.st_mode)
            else:
                out[rel] = ("f", st.st_mode, path.read_bytes())
    return out


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "canary"
    (root / ".ssh").mkdir(parents=True)
    (root / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA the-users-own-key\n")
    (root / "secret.txt").write_text("do not touch\n")
    before = _snapshot(root)
    yield root
    assert _snapshot(root) == before, "a download wrote outside the project"


@pytest.fixture(params=["rsync", "tar"])
def hostile(request, vp_env: VpEnv, tmp_path: Path) -> Iterator[VpEnv]:
    """A project on a host reached with rsync, or with the tar fallback (no rsync there)."""
    remote = tmp_path / "remote-workspace"
    if request.param == "rsync":
        host: SshHost = request.getfixturevalue("ssh_host")
        vp_env.use_ssh_host(host, remote)
        yield vp_env
        return
    host = _NoRsyncHost(tmp_path / "norsync-host")
    host.start()
    try:
        vp_env.use_ssh_host(host, remote)
        yield vp_env
    finally:
        host.close()


def _ok(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 0, r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_link_then_a_write_through_it_stays_out(hostile: VpEnv, canary: Path) -> None:
    p = hostile.project
    r = hostile.run("sh", "-c", f"ln -s {canary}/.ssh results")
    _ok(r)
    assert not os.path.lexists(p / "results")  # an absolute link is never created
    assert "results" in r.stderr and "warning" in r.stderr
    r = hostile.run("sh", "-c", "rm -f results; mkdir results; echo KEY > results/authorized_keys")
    _ok(r)
    assert (p / "results" / "authorized_keys").read_text() == "KEY\n"  # a real dir here


def test_dotdot_links_are_skipped_and_never_written_through(hostile: VpEnv, canary: Path) -> None:
    p = hostile.project
    rel = os.path.relpath(canary, p)
    r = hostile.run(
        "sh", "-c", f"ln -s {rel} up; mkdir -p a; ln -s ../../x a/out; ln -s ../ok.txt a/fine"
    )
    _ok(r)
    assert not os.path.lexists(p / "up") and not os.path.lexists(p / "a" / "out")
    assert os.readlink(p / "a" / "fine") == "../ok.txt"  # a contained link comes back
    r = hostile.run("sh", "-c", "rm up; mkdir -p up/.ssh; echo KEY > up/.ssh/authorized_keys")
    _ok(r)


def test_dangling_contained_link_is_not_written_through_or_fatal(
    hostile: VpEnv, canary: Path
) -> None:
    p = hostile.project
    _ok(hostile.run("sh", "-c", "ln -s missing results"))
    assert os.readlink(p / "results") == "missing"
    r = hostile.run(
        "sh", "-c", "rm results; mkdir results; echo KEY > results/k; echo after > zz.txt"
    )
    _ok(r)
    assert os.readlink(p / "results") == "missing"  # the local link is left as it was
    assert not os.path.lexists(p / "missing")
    assert (p / "zz.txt").read_text() == "after\n"  # the rest of the download still lands
    assert "results/k" in r.stderr and "warning" in r.stderr


def test_absolute_links_are_skipped_with_a_warning(hostile: VpEnv, canary: Path) -> None:
    p = hostile.project
    r = hostile.run(
        "sh", "-c", f"ln -s /etc/passwd abs; ln -s {canary}/secret.txt abs2; echo x > plain"
    )
    _ok(r)
    assert not os.path.lexists(p / "abs") and not os.path.lexists(p / "abs2")
    assert (p / "plain").read_text() == "x\n"
    assert "abs2" in r.stderr


def test_control_files_are_never_replaced_from_the_host(hostile: VpEnv, canary: Path) -> None:
    p = hostile.project
    (p / ".vpignore").write_text("*.log\n")
    (p / ".env").write_text("SECRET=1\n")
    config = (p / "vp.toml").read_bytes()
    r = hostile.run(
        "sh",
        "-c",
        "echo '[env]' >> vp.toml; printf '!.env\\n' >> .vpignore; "
        "printf '[tool.vp]\\n' > pyproject.toml; echo ok > result.txt",
    )
    _ok(r)
    assert (p / "vp.toml").read_bytes() == config
    assert (p / ".vpignore").read_text() == "*.log\n"
    assert not (p / "pyproject.toml").exists()
    assert (p / "vp.toml.vp-remote").read_bytes() == config + b"[env]\n"
    assert (p / ".vpignore.vp-remote").read_text() == "*.log\n!.env\n"
    assert (p / "pyproject.toml.vp-remote").read_text() == "[tool.vp]\n"
    assert "vp.toml.vp-remote" in r.stderr and ".vpignore.vp-remote" in r.stderr
    assert (p / "result.txt").read_text() == "ok\n"
    # the next run does not upload .env, and puts the host's control files back to ours
    r = hostile.run("sh", "-c", "test ! -e .env && cat .vpignore")
    _ok(r)
    assert r.stdout == "*.log\n"


def test_no_setuid_special_files_or_foreign_owner(hostile: VpEnv, canary: Path) -> None:
    p = hostile.project
    r = hostile.run(
        "sh",
        "-c",
        "echo x > suid; chmod 6755 suid; echo y > sticky; chmod 1777 sticky; "
        "mkfifo fifo; echo z > owned; chown 1234:1234 owned; "
        "ln -s owned ownedlink; chown -h 1234:1234 ownedlink",
    )
    _ok(r)
    for name in ("suid", "sticky"):
        mode = (p / name).stat().st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), (name, oct(mode))
    assert (p / "suid").stat().st_mode & 0o777 == 0o755
    assert not os.path.lexists(p / "fifo")
    for name in ("owned", "ownedlink"):
        st = (p / name).lstat()
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), name


def test_host_made_names_are_escaped_in_messages(hostile: VpEnv, canary: Path) -> None:
    r = hostile.run(
        "sh",
        "-c",
        f"ln -s {canary} \"$(printf 'evil\\033]0;pwned\\007')\"; "
        "ln -s \"$(printf '../../x\\033[2J')\" evil2",
    )
    _ok(r)
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr
    assert "evil\\x1b]0;pwned\\x07" in r.stderr


# ------------------------------------------------------------------------------ vp download


def test_vp_download_places_only_plain_files_and_contained_links(
    hostile: VpEnv, remote_workdir: Path, canary: Path
) -> None:
    p = hostile.project
    _ok(hostile.run("--sync-only"))
    out = remote_workdir / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "authorized_keys").write_text("KEY\n")
    (out / "plain.txt").write_text("plain\n")
    (out / "abs").symlink_to(canary / "secret.txt")
    (out / "up").symlink_to("../../canary")
    (out / "fine").symlink_to("plain.txt")
    (out / "suid").write_text("x\n")
    os.chmod(out / "suid", 0o6755)
    os.chown(out / "plain.txt", 1234, 1234)
    os.mkfifo(out / "fifo")
    os.mknod(out / "dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    # the user's own link in the project: the download must not write through it
    (p / "out").mkdir()
    (p / "out" / "sub").symlink_to(canary / ".ssh")
    r = hostile.run("download", "out")
    _ok(r)
    local = p / "out"
    assert (local / "plain.txt").read_text() == "plain\n"
    assert (local / "plain.txt").stat().st_uid == os.getuid()
    assert os.readlink(local / "fine") == "plain.txt"
    for name in ("abs", "up", "fifo", "dev"):
        assert not os.path.lexists(local / name), name
    assert not (local / "suid").stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert os.readlink(local / "sub") == str(canary / ".ssh")
    assert "out/sub" in r.stderr and "warning" in r.stderr


def test_vp_download_keeps_control_files(
    hostile: VpEnv, remote_workdir: Path, canary: Path
) -> None:
    p = hostile.project
    _ok(hostile.run("--sync-only"))
    config = (p / "vp.toml").read_bytes()
    with open(remote_workdir / "vp.toml", "a") as fh:
        fh.write("[env]\n")
    r = hostile.run("download", "vp.toml", "--force")
    _ok(r)
    assert (p / "vp.toml").read_bytes() == config
    assert (p / "vp.toml.vp-remote").read_bytes() == config + b"[env]\n"
    assert "vp.toml.vp-remote" in r.stderr


# ------------------------------------------------------------------ results filter, disk full


def test_sync_results_brings_back_only_the_named_folders(ssh_project: VpEnv) -> None:
    p = ssh_project.project
    with open(p / "vp.toml", "a") as fh:
        fh.write('results = ["outputs/", "checkpoints/"]\n')  # still in [sync]
    r = ssh_project.run(
        "sh",
        "-c",
        "mkdir -p outputs checkpoints other; echo a > outputs/a; echo c > checkpoints/c; "
        "echo b > other/b; echo t > top.txt",
    )
    _ok(r)
    assert (p / "outputs" / "a").read_text() == "a\n"
    assert (p / "checkpoints" / "c").read_text() == "c\n"
    assert not (p / "other").exists() and not (p / "top.txt").exists()


def test_sync_results_must_be_a_list_of_patterns(ssh_project: VpEnv) -> None:
    with open(ssh_project.project / "vp.toml", "a") as fh:
        fh.write('results = "outputs/"\n')
    r = ssh_project.run("true")
    assert r.returncode == 2 and "[sync] results must be a list" in r.stderr, r.stderr
    text = (ssh_project.project / "vp.toml").read_text().replace('"outputs/"', '["a", "!"]')
    (ssh_project.project / "vp.toml").write_text(text)
    r = ssh_project.run("true")
    assert r.returncode == 2 and "[sync] results" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture
def small_disk(vp_env: VpEnv) -> Iterator[Path]:
    """The project on its own 1 MB tmpfs: the local disk fills before the host's."""
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "vp-test", str(vp_env.project)], check=True
    )
    try:
        yield vp_env.project
    finally:
        subprocess.run(["umount", "-l", str(vp_env.project)], check=False)


@pytest.mark.parametrize("transport", ["rsync", "tar"])
def test_local_disk_full_names_this_disk_and_the_rest_comes_later(
    transport: str, small_disk: Path, vp_env: VpEnv, tmp_path: Path, request
) -> None:
    remote = tmp_path / "remote-workspace"
    if transport == "rsync":
        vp_env.use_ssh_host(request.getfixturevalue("ssh_host"), remote)
    else:
        host = _NoRsyncHost(tmp_path / "norsync-host")
        host.start()
        request.addfinalizer(host.close)
        vp_env.use_ssh_host(host, remote)
    p = vp_env.project
    r = vp_env.run(
        "sh",
        "-c",
        "echo small > small.txt; head -c 600000 /dev/urandom > big1.bin; "
        "head -c 600000 /dev/urandom > big2.bin; head -c 600000 /dev/urandom > big3.bin",
    )
    assert r.returncode == 1, r.stderr
    assert "this computer's disk is full" in r.stderr and str(p) in r.stderr, r.stderr
    assert "host's disk" not in r.stderr and "disk_gb" not in r.stderr
    assert (p / "small.txt").read_text() == "small\n"  # what fits is placed
    assert not list(p.glob(".vp-dl-*"))
    subprocess.run(["mount", "-o", "remount,size=4m", str(p)], check=True)
    missing = [n for n in ("big1.bin", "big2.bin", "big3.bin") if not (p / n).exists()]
    assert missing
    if transport == "rsync":
        r = vp_env.run("download", missing[0])
        _ok(r)
        assert (p / missing[0]).read_bytes() == (remote / missing[0]).read_bytes()
    r = vp_env.run("true")  # the next run fetches what the last one could not
    _ok(r)
    for name in ("big1.bin", "big2.bin", "big3.bin"):
        assert (p / name).read_bytes() == (remote / name).read_bytes()


def test_sparse_files_stay_sparse(hostile: VpEnv) -> None:
    r = hostile.run("sh", "-c", "truncate -s 64M sparse.bin; printf end >> sparse.bin")
    _ok(r)
    st = (hostile.project / "sparse.bin").stat()
    assert st.st_size == (64 << 20) + 3
    assert st.st_blocks * 512 < (4 << 20), st.st_blocks
