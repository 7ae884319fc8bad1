"""Sync rules and semantics (vp/sync/): what goes up, what comes back, what is never lost."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import VpEnv
from tests.sshhost import SshHost
from vp.sync.ignore import IgnoreRules


def _tree(root: Path, files: list[str]) -> None:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)


def test_ignore_rules_follow_gitignore_semantics(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        ["keep.py", "debug.log", "important.log", "build/out.o", "src/build/gen.c"]
        + ["top.txt", "src/top.txt", "a/x/y/cache.bin", "a/cache.bin", ".git/HEAD"]
        + [".venv/lib/site.py", "pkg/__pycache__/m.pyc", "node_modules/left-pad/index.js"]
        + [".env", ".env.example", "id_rsa", "server.pem"],
    )
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "build").write_text("a file, not a dir")
    (tmp_path / ".vpignore").write_text(
        "*.log\n!important.log\nbuild/\n/top.txt\na/**/cache.bin\n!.env.example\n"
    )
    files = set(IgnoreRules.for_project(tmp_path).walk(tmp_path))
    assert files == {
        ".vpignore",
        "keep.py",
        "important.log",  # negation re-includes
        "src/top.txt",  # anchored rule only matches at the root
        "lib/build",  # dir-only rule leaves a file of that name alone
        ".env.example",  # a default secret rule undone explicitly
    }


def test_extra_ignore_and_gitignore_layers(tmp_path: Path) -> None:
    _tree(tmp_path, ["data/raw/big.bin", "data/clean.csv", "notes.tmp", "main.py"])
    (tmp_path / ".gitignore").write_text("*.tmp\n")
    rules = IgnoreRules.for_project(tmp_path, extra=["data/raw/"])
    assert set(rules.walk(tmp_path)) == {".gitignore", "data/clean.csv", "notes.tmp", "main.py"}
    rules = IgnoreRules.for_project(tmp_path, extra=["data/raw/"], use_gitignore=True)
    assert "notes.tmp" not in rules.walk(tmp_path)
    assert rules.ignored("data/raw/big.bin") and not rules.ignored("data/clean.csv")


def test_ignored_files_are_not_uploaded(ssh_project: VpEnv, remote_workdir: Path) -> None:
    p = ssh_project.project
    _tree(p, ["main.py", ".git/config", ".venv/bin/python", ".env", "logs/a.log"])
    (p / ".vpignore").write_text("logs/\n")
    assert ssh_project.run("true").returncode == 0
    uploaded = {
        str(f.relative_to(remote_workdir)) for f in remote_workdir.rglob("*") if f.is_file()
    }
    assert uploaded == {"main.py", ".vpignore", "vp.toml"}


def test_names_with_spaces_quotes_unicode_and_newlines_round_trip(
    ssh_project: VpEnv, remote_workdir: Path
) -> None:
    names = [
        "with space.txt",
        "quote'single.txt",
        'quote"double.txt',
        "ünïcödé-日本.txt",
        "new\nline.txt",
        "dollar$HOME.txt",
        "-leading-dash.txt",
    ]
    for name in names:
        (ssh_project.project / name).write_text(name)
    (ssh_project.project / "link").symlink_to("with space.txt")
    script = (
        "import os\n"
        "for n in os.listdir('.'):\n"
        "    if n.endswith('.txt'):\n"
        "        open('out-' + n, 'w').write(n.upper())\n"
    )
    r = ssh_project.run("python3", "-c", script)
    assert r.returncode == 0, r.stderr
    for name in names:
        assert (remote_workdir / name).read_text() == name
        assert (ssh_project.project / ("out-" + name)).read_text() == name.upper()
    assert os.readlink(remote_workdir / "link") == "with space.txt"


def test_local_deletion_propagates_but_remote_results_survive(
    ssh_project: VpEnv, remote_workdir: Path
) -> None:
    p = ssh_project.project
    _tree(p, ["a.py", "b.py"])
    r = ssh_project.run("sh", "-c", "echo result > result.txt")
    assert r.returncode == 0, r.stderr
    (p / "a.py").unlink()
    (p / "result.txt").unlink()  # the user deletes the fetched result locally too
    (remote_workdir / "made-on-host.txt").write_text("only there")
    assert ssh_project.run("true").returncode == 0
    assert not (remote_workdir / "a.py").exists()  # vp uploaded it; the user deleted it
    assert (remote_workdir / "b.py").exists()
    assert (remote_workdir / "made-on-host.txt").exists()  # vp never uploaded it
    assert (remote_workdir / "result.txt").exists()  # the run made it: the host's to keep


def test_remote_results_vp_never_uploaded_are_not_deleted(
    ssh_project: VpEnv, remote_workdir: Path
) -> None:
    assert ssh_project.run("sh", "-c", "mkdir -p ckpt && echo w > ckpt/model.bin").returncode == 0
    assert (ssh_project.project / "ckpt" / "model.bin").exists()
    (ssh_project.project / "ckpt" / "model.bin").unlink()
    (ssh_project.project / "ckpt").rmdir()
    assert ssh_project.run("true").returncode == 0
    # downloaded is not uploaded: deleting the local copy leaves the host's result
    assert (remote_workdir / "ckpt" / "model.bin").exists()
    # and a result never downloaded stays too:
    (remote_workdir / "only-remote.bin").write_text("x")
    assert ssh_project.run("true").returncode == 0
    assert (remote_workdir / "only-remote.bin").exists()


def test_download_never_deletes_local_files(ssh_project: VpEnv) -> None:
    p = ssh_project.project
    _tree(p, ["keep.txt"])
    r = ssh_project.run("sh", "-c", "rm keep.txt; echo x > new.txt")
    assert r.returncode == 0, r.stderr
    assert (p / "keep.txt").read_text() == "keep.txt"
    assert (p / "new.txt").read_text() == "x\n"
    # and the next upload restores it on the host (the run deleted it there)
    assert ssh_project.run("test", "-f", "keep.txt").returncode == 0


def test_local_edit_during_run_is_kept_and_remote_copy_saved_beside_it(
    ssh_project: VpEnv,
) -> None:
    p = ssh_project.project
    (p / "notes.txt").write_text("original\n")
    (p / "other.txt").write_text("original\n")
    proc = ssh_project.popen(
        "sh", "-c", "echo started; sleep 1.5; echo remote > notes.txt; echo remote > other.txt"
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    time.sleep(0.2)
    (p / "notes.txt").write_text("my local edit\n")
    proc.stdout.read()
    proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    assert proc.returncode == 0, err
    assert (p / "notes.txt").read_text() == "my local edit\n"
    assert (p / "notes.txt.vp-remote").read_text() == "remote\n"
    assert "notes.txt.vp-remote" in err and "warning" in err
    # a file the user did not touch takes the host's version
    assert (p / "other.txt").read_text() == "remote\n"
    assert not (p / "other.txt.vp-remote").exists()
    # the conflict copy is never uploaded
    r = ssh_project.run("--", "ls")
    assert "notes.txt.vp-remote" not in r.stdout


def test_progress_bars_on_a_terminal_only(ssh_project: VpEnv) -> None:
    (ssh_project.project / "big.bin").write_bytes(os.urandom(8 << 20))
    seen = ssh_project.stderr_on_a_terminal("--sync-only")
    assert b"upload" in seen and b"MB" in seen  # rich's bytes column, drawn on the terminal
    seen = ssh_project.stderr_on_a_terminal("head -c 8000000 /dev/urandom > result.bin")
    assert b"download" in seen and b"MB" in seen
    assert (ssh_project.project / "result.bin").stat().st_size == 8000000
    # not a terminal: plain lines only
    (ssh_project.project / "big.bin").write_bytes(os.urandom(1 << 20))
    r = ssh_project.run("--sync-only")
    assert r.returncode == 0
    assert "\x1b[" not in r.stderr and "MB/s" not in r.stderr


RULE_POOL = [
    ".git/",
    "*.pyc",
    "!keep.pyc",
    "/top",
    "build/",
    "a/**/b",
    "!build/keep",
    "data/raw/",
    "*.log",
    "!important.log",
    "**/cache",
    "x?y",
    "[ab]*.txt",
    "\\#lit",
]
SEGMENTS = [
    "a",
    "b",
    "build",
    "top",
    "keep.pyc",
    "m.pyc",
    "x1y",
    "cache",
    "important.log",
    "d.log",
    "a.txt",
    "c.txt",
    "data",
    "raw",
    ".git",
    "#lit",
    "keep",
]


@settings(max_examples=300, deadline=None)
@given(
    rules=st.lists(st.sampled_from(RULE_POOL), max_size=8),
    path=st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5),
    is_dir=st.booleans(),
)
def test_prefilter_never_changes_a_decision(
    rules: list[str], path: list[str], is_dir: bool
) -> None:
    """The one-regex prefilter is only a shortcut: same answer as pathspec on every path."""
    r = IgnoreRules(rules)
    p = "/".join(path) + ("/" if is_dir else "")
    assert r._match(p) == r.spec.match_file(p)


def test_only_changed_files_are_sent_again(ssh_project: VpEnv, remote_workdir: Path) -> None:
    _tree(ssh_project.project, [f"src/m{i}.py" for i in range(20)])
    r = ssh_project.run("true")
    assert "syncing 21 files" in r.stderr, r.stderr  # 20 + vp.toml
    (ssh_project.project / "src" / "m3.py").write_text("changed")
    r = ssh_project.run("cat", "src/m3.py")
    assert "syncing 1 changed file " in r.stderr, r.stderr
    assert r.stdout == "changed"
    r = ssh_project.run("true")
    assert "syncing" not in r.stderr  # nothing changed: no upload at all


class _NoRsyncHost(SshHost):
    """A host whose image has no rsync: sshd runs in its own mount namespace with a stand-in
    that fails the way a shell does for a missing command."""

    def _argv(self) -> list[str]:
        fake = self.root / "no-rsync"
        fake.write_text('#!/bin/sh\necho "sh: 1: rsync: not found" >&2\nexit 127\n')
        fake.chmod(0o755)
        real = shutil.which("rsync") or "/usr/bin/rsync"
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount --bind {fake} {real} && exec "$0" "$@"',
            *super()._argv(),
        ]


def test_a_host_without_rsync_gets_tar(vp_env: VpEnv, tmp_path: Path) -> None:
    host = _NoRsyncHost(tmp_path / "norsync-host")
    host.start()
    try:
        remote = tmp_path / "remote"
        vp_env.use_ssh_host(host, remote)
        p = vp_env.project
        _tree(p, ["a.py", "sub dir/b ü.txt", "gone.txt"])
        r = vp_env.run("sh", "-c", "cat 'sub dir/b ü.txt'; echo out > result.txt")
        assert r.returncode == 0, r.stderr
        # A first upload is one tar stream anyway; fetching the result finds rsync missing
        # (and remembers it).
        assert r.stdout == "sub dir/b ü.txt"
        assert (p / "result.txt").read_text() == "out\n"
        # the next call goes straight to tar, deletions included
        (p / "gone.txt").unlink()
        (p / "a.py").write_text("changed")
        r = vp_env.run("cat", "a.py")
        assert r.returncode == 0 and r.stdout == "changed", r.stderr
        assert "rsync is not installed" not in r.stderr
        assert not (remote / "gone.txt").exists()
    finally:
        host.close()


def test_upload_progress_moves_while_bytes_flow(tmp_path: Path) -> None:
    """Issue #12 item 9: the bar follows rsync's running byte count, not 0 then the end.
    A real rsync, slowed to 1 MB/s so it takes a few of its one-second progress ticks."""
    from vp.sync.rsync import run_rsync

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    total = 3 << 20
    (src / "big.bin").write_bytes(os.urandom(total))
    seen: list[int] = []
    proc = run_rsync(
        ["rsync", "-a", "--bwlimit=1000", "--files-from=-", "--from0", f"{src}/", f"{dst}/"],
        b"big.bin\0",
        seen.append,
    )
    assert proc.returncode == 0, proc.stderr
    assert any(0 < n < total for n in seen), seen  # it moved in between
    assert seen == sorted(seen) and seen[-1] == total, seen
