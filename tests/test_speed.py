"""The fast paths of issue #17 stay correct: the typer-free dispatch, the cached walk (a
changed file is always sent, whatever its times say), the tar first upload (same tree and
manifest as rsync's), and many concurrent runs on one host with sshd's MaxSessions at 10."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import VP, VpEnv
from tests.sshhost import SshHost
from vp import cli, fastpath, options, output
from vp.ssh import MASTERS
from vp.state import State
from vp.sync import walkcache
from vp.sync.ignore import IgnoreRules
from vp.sync.transfer import Manifest
from vp.sync.walkcache import cached_walk

# -- dispatch fast path -------------------------------------------------------------------------


def test_both_parsers_read_the_one_table_of_global_options() -> None:
    """The typer root command's options are vp.options.OPTIONS (plus typer's own), the same
    rows the fast path parses with: an option added there is known to both."""
    import typer

    assert set(options.OUTPUTS) == set(output.FORMATS)
    root = typer.main.get_command(cli.app)
    typer_names = {n for p in root.params for n in [*p.opts, *p.secondary_opts]}
    helper = {"-h", "--help", "--version", "--install-completion", "--show-completion"}
    assert typer_names - helper == set(options.BY_NAME)
    assert set(options.BY_NAME) | helper == cli.FLAG_OPTIONS | cli.VALUE_OPTIONS
    assert {o.dest for o in options.OPTIONS} == set(options.Globals.__dataclass_fields__)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["ls"],
        ["run", "--", "true"],
        ["--", "true"],
        ["-p"],
        ["--bogus", "true"],
        ["-o", "xml", "true"],
        ["-v"],
    ],
)
def test_fastpath_leaves_everything_but_a_plain_command_to_the_cli(argv: list[str]) -> None:
    assert fastpath.parse(argv) is None


def test_fastpath_parses_global_options_like_the_cli() -> None:
    g, command = fastpath.parse(
        ["-q", "--no-download", "-p", "ssh", "--host=h", "--tunnel", "8888", "--nodes", "2", "x"]
    )
    assert command == ["x"]
    assert g.quiet and g.no_download and g.nodes == 2
    assert (g.platform, g.host, g.tunnel) == ("ssh", "h", ["8888"])
    assert fastpath.parse(["--nodes", "two", "x"]) is None  # typer names the bad value


def test_a_bad_node_count_is_refused_without_loading_the_multi_node_code(vp_env: VpEnv) -> None:
    r = vp_env.run("--nodes", "0", "true")
    assert r.returncode == 2 and "at least one node" in r.stderr, r.stderr


def test_a_warm_run_imports_no_typer_rich_or_pydantic(ssh_project: VpEnv) -> None:
    assert ssh_project.run("true").returncode == 0
    probe = (
        "import os, sys, runpy\n"
        "def _exit(code): raise SystemExit(code)\n"
        "os._exit = _exit  # vp leaves without the interpreter's teardown\n"
        "sys.argv = ['vp', 'true']\n"
        "try:\n"
        "    runpy.run_module('vp', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('typer', 'click', 'rich', 'pydantic', 'pathspec'))\n"
        "sys.__stderr__.write(f'CODE={code} HEAVY={heavy}\\n')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ssh_project.project,
        env=ssh_project.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "CODE=0 HEAVY=[]" in proc.stderr, proc.stderr


# -- the cached walk ---------------------------------------------------------------------------


def _walk(root: Path, cache: Path, lines: list[str] | None = None) -> dict:
    rules = IgnoreRules(lines) if lines is not None else IgnoreRules.for_project(root)
    return {p: e.as_list() for p, e in cached_walk(rules, root, cache).items()}


def _fresh(root: Path, lines: list[str] | None = None) -> dict:
    rules = IgnoreRules(lines) if lines is not None else IgnoreRules.for_project(root)
    return {p: e.as_list() for p, e in rules.walk(root).items()}


def _age(path: Path, seconds: float = 60) -> None:
    """Make `path` look old, so the cache may trust it (no coarse-clock doubt)."""
    old = time.time() - seconds
    os.utime(path, (old, old), follow_symlinks=False)


def _old_tree(root: Path) -> None:
    for name in ("a.py", "sub/b.py", "sub/deep/c.py", ".env"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    for path in sorted(root.rglob("*"), reverse=True):
        _age(path)
    _age(root)


def test_the_cached_walk_equals_a_fresh_walk_through_every_kind_of_change(
    tmp_path: Path,
) -> None:
    root, cache = tmp_path / "p", tmp_path / "cache"
    root.mkdir()
    _old_tree(root)
    assert _walk(root, cache) == _fresh(root)  # cold: fills the cache
    assert _walk(root, cache) == _fresh(root)  # warm: every directory reused
    assert ".env" not in _walk(root, cache)

    # an in-place edit, same size, mtime restored: the ctime still moves
    before = _walk(root, cache)["sub/deep/c.py"]
    target = root / "sub/deep/c.py"
    st = target.stat()
    target.write_text("SUB/DEEP/C.PY"[: len("sub/deep/c.py")])
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = _walk(root, cache)["sub/deep/c.py"]
    assert after[:2] == before[:2] and after != before
    assert _walk(root, cache) == _fresh(root)

    # a new empty directory, then a file in it (its parent is old; the new dir is not)
    (root / "sub/new").mkdir()
    _age(root / "sub")
    assert _walk(root, cache) == _fresh(root)
    (root / "sub/new/d.py").write_text("d")
    assert "sub/new/d.py" in _walk(root, cache)

    # a file deleted and one replaced by a directory, parents made to look untouched
    (root / "a.py").unlink()
    (root / "sub/b.py").unlink()
    (root / "sub/b.py").mkdir()
    (root / "sub/b.py/e.py").write_text("e")
    assert _walk(root, cache) == _fresh(root)
    assert "a.py" not in _walk(root, cache) and "sub/b.py/e.py" in _walk(root, cache)


def test_a_directory_changed_within_the_clock_granule_is_listed_again(tmp_path: Path) -> None:
    """A coarse clock (whole seconds) can hide a change made in the cache's own second: such
    a directory is not trusted, even when its stat is exactly what the cache saw."""
    root, cache = tmp_path / "p", tmp_path / "cache"
    (root / "sub").mkdir(parents=True)
    (root / "sub/a.py").write_text("a")
    now = int(time.time())
    os.utime(root / "sub", (now, now))  # a whole-second mtime: a coarse filesystem
    _walk(root, cache)
    st = (root / "sub").stat()
    (root / "sub/b.py").write_text("b")  # added in the same "second"...
    os.utime(root / "sub", ns=(st.st_atime_ns, st.st_mtime_ns))  # ...mtime does not move
    assert "sub/b.py" in _walk(root, cache)


def test_an_ignore_rule_change_invalidates_the_cache(tmp_path: Path) -> None:
    root, cache = tmp_path / "p", tmp_path / "cache"
    root.mkdir()
    _old_tree(root)
    assert "sub/b.py" in _walk(root, cache)
    (root / ".vpignore").write_text("sub/\n")
    _age(root / ".vpignore")
    _age(root)  # the root's listing looks untouched
    walked = _walk(root, cache)
    assert walked == _fresh(root) and "sub/b.py" not in walked
    (root / ".vpignore").write_text("!.env\n")  # an un-ignored secret comes in
    _age(root / ".vpignore")
    _age(root)
    assert ".env" in _walk(root, cache)


@pytest.mark.parametrize("threads", [False, True], ids=["one-thread", "threads"])
def test_the_walk_cache_vouches_for_a_manifest_only_while_nothing_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: bool
) -> None:
    if threads:  # the check of a big tree, from several threads, on this small one
        monkeypatch.setattr(walkcache, "PARALLEL_FROM", 0)
        monkeypatch.setattr(os, "cpu_count", lambda: 4)
    root, cache = tmp_path / "p", tmp_path / "cache"
    root.mkdir()
    _old_tree(root)
    rules = IgnoreRules.for_project(root)

    def walk() -> walkcache.Walk:
        found = walkcache.walk(rules, root, cache)
        assert found.lists() == _fresh(root)
        return found

    first = walk()
    assert not first.unchanged  # cold
    first.vouch("s1")
    first.save()
    warm = walk()
    assert warm.unchanged and warm.vouches("s1")
    assert not warm.vouches("s2") and not warm.vouches("")

    # an in-place edit, same size, mtime put back: no longer vouched, and not afterwards
    target = root / "sub/deep/c.py"
    st = target.stat()
    target.write_text("SUB/DEEP/C.PY")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    edited = walk()
    assert not edited.unchanged and not edited.vouches("s1")
    edited.save()
    assert walk().unchanged and not walk().vouches("s1")

    # each kind of change breaks the vouch: a new empty directory (its parent made to look
    # untouched), a deleted file, a file replaced by a link
    def vouched_then(change) -> None:
        found = walk()
        found.vouch("s")
        found.save()
        assert walk().vouches("s")
        change()
        changed = walk()
        assert not changed.unchanged and not changed.vouches("s")
        changed.save()

    def new_dir() -> None:
        (root / "sub/new").mkdir()
        _age(root / "sub")

    vouched_then(new_dir)
    vouched_then(lambda: (root / "a.py").unlink())
    vouched_then(lambda: ((root / "sub/b.py").unlink(), (root / "sub/b.py").symlink_to("x")))


def test_a_directory_listed_again_for_its_recent_mtime_keeps_the_vouch(tmp_path: Path) -> None:
    """A directory changed within a granule of the cache's walk is listed again; holding
    exactly what the cache says, nothing changed, and the manifest stays vouched for."""
    root, cache = tmp_path / "p", tmp_path / "cache"
    root.mkdir()
    (root / "a.py").write_text("a")
    _age(root / "a.py")
    rules = IgnoreRules.for_project(root)
    first = walkcache.walk(rules, root, cache)  # the root's mtime is recent: listed again
    first.vouch("s1")
    first.save()
    again = walkcache.walk(rules, root, cache)
    assert again.unchanged and again.vouches("s1")


def test_a_corrupt_walk_cache_is_a_cold_walk(tmp_path: Path) -> None:
    root, cache = tmp_path / "p", tmp_path / "cache"
    root.mkdir()
    _old_tree(root)
    rules = IgnoreRules.for_project(root)
    found = walkcache.walk(rules, root, cache)
    found.vouch("s1")
    found.save()
    import marshal

    data = marshal.loads(cache.read_bytes())
    data["dirs"][""] = (1, 2, 3, 4, 5, 6)  # not a record
    cache.write_bytes(marshal.dumps(data))
    again = walkcache.walk(rules, root, cache)
    assert not again.vouches("s1") and again.lists() == _fresh(root)


def test_a_manifest_reads_its_file_tables_only_when_asked(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    key = ("h", "/root", "/w")
    saved = Manifest(files={"a": [1, 2, 0, 3]}, uploaded={"a": [1, 2, 0, 3]}, t=5, stamp="s1")
    state.save_manifest(*key, saved.to_json(), saved.head())
    head = state.manifest_head(*key)
    assert head == {"clean": True, "stamp": "s1", "t": 5}
    reads: list[int] = []

    def load() -> dict | None:
        reads.append(1)
        return state.manifest(*key)

    lazy = Manifest.from_head(head, load)
    assert lazy.clean and lazy.stamp == "s1" and not lazy.loaded and not reads
    assert lazy.files == {"a": [1, 2, 0, 3]} and lazy.loaded and reads == [1]

    # another vp saved meanwhile: the whole newer manifest is taken, never its tables
    # under the older head
    lazy = Manifest.from_head(head, load)
    newer = Manifest(files={}, clean=False, t=9, stamp="s2")
    state.save_manifest(*key, newer.to_json(), newer.head())
    assert lazy.files == {} and not lazy.clean and lazy.t == 9 and lazy.stamp == "s2"

    # a row saved by a vp that kept no head is read whole, and so is one an older vp
    # wrote over (its head goes with the old row)
    state.save_manifest(*key, saved.to_json())
    assert state.manifest_head(*key) is None
    state.save_manifest(*key, saved.to_json(), saved.head())
    state.db.execute(
        "INSERT OR REPLACE INTO manifests(host_key, root, workdir, data) VALUES (?,?,?,?)",
        (*key, "{}"),
    )
    assert state.manifest_head(*key) is None
    state.save_manifest(*key, saved.to_json(), saved.head())
    state.db.execute("UPDATE manifests SET data='{}'")
    assert state.manifest_head(*key) is None
    state.save_manifest(*key, saved.to_json(), saved.head())
    state.forget_host("h")
    assert state.manifest_head(*key) is None and state.manifest(*key) is None


def _set_manifest_data(vp_env: VpEnv, data: str) -> str:
    db = vp_env.home / ".local/state/vp/state.db"
    with sqlite3.connect(db) as conn:
        (old,) = conn.execute("SELECT data FROM manifests").fetchone()
        heads = conn.execute("SELECT * FROM manifest_heads").fetchall()
        assert heads
        conn.execute("UPDATE manifests SET data=?", (data,))  # drops the head (trigger)
        conn.executemany("INSERT INTO manifest_heads VALUES (?,?,?,?)", heads)
    return old


def test_a_warm_call_the_cache_vouches_for_reads_no_file_table(
    ssh_project: VpEnv, remote_workdir: Path
) -> None:
    """The warm no-change call neither parses the manifest's file tables nor builds the
    walk's (they cost ~0.6 s at 100k files): with the tables unreadable it still runs. Then
    every kind of change is still sent."""
    p = ssh_project.project
    (p / "data").mkdir()
    for name in ("data/x.txt", "y.txt", "gone.txt"):
        (p / name).write_text(name)
    for path in (p / "data/x.txt", p / "y.txt", p / "gone.txt", p / "data", p):
        _age(path)
    assert ssh_project.run("true").returncode == 0  # the upload: vouched for at once
    good = _set_manifest_data(ssh_project, "not json")
    r = ssh_project.run("true")
    assert r.returncode == 0, r.stderr
    _set_manifest_data(ssh_project, good)

    # same size, in place, mtime put back: sent
    st = (p / "data/x.txt").stat()
    (p / "data/x.txt").write_text("DATA/X.TXT")
    os.utime(p / "data/x.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    r = ssh_project.run("cat", "data/x.txt")
    assert r.returncode == 0 and r.stdout == "DATA/X.TXT", r.stderr

    # deleted here: deleted there
    (p / "gone.txt").unlink()
    _age(p)
    r = ssh_project.run("true")
    assert r.returncode == 0 and not (remote_workdir / "gone.txt").exists(), r.stderr

    # a new empty directory, then a file in it
    (p / "data/new").mkdir()
    assert ssh_project.run("true").returncode == 0
    (p / "data/new/z.txt").write_text("z")
    r = ssh_project.run("cat", "data/new/z.txt")
    assert r.returncode == 0 and r.stdout == "z", r.stderr

    # replaced by a file of the same size and the same whole-second mtime
    now = int(time.time())
    os.utime(p / "y.txt", (now, now))
    assert ssh_project.run("cat", "y.txt").stdout == "y.txt"
    assert ssh_project.run("true").returncode == 0
    replacement = p / "y.tmp"
    replacement.write_text("Y.TXT")
    os.utime(replacement, (now, now))
    os.replace(replacement, p / "y.txt")
    r = ssh_project.run("cat", "y.txt")
    assert r.returncode == 0 and r.stdout == "Y.TXT", r.stderr


def _manifest(vp_env: VpEnv) -> dict:
    db = vp_env.home / ".local/state/vp/state.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT data FROM manifests").fetchall()
    assert len(rows) == 1
    return json.loads(rows[0][0])


def test_every_changed_file_is_sent_whatever_its_times_say(
    ssh_project: VpEnv, remote_workdir: Path
) -> None:
    p = ssh_project.project
    (p / "data").mkdir()
    (p / "data/x.txt").write_text("one")
    (p / "y.txt").write_text("aaaa")
    for path in (p / "data/x.txt", p / "y.txt", p / "data", p):
        _age(path)
    assert ssh_project.run("true").returncode == 0
    assert ssh_project.run("true").returncode == 0  # warm: from the cache

    # same size, in place, mtime put back with os.utime
    st = (p / "data/x.txt").stat()
    (p / "data/x.txt").write_text("two")
    os.utime(p / "data/x.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    r = ssh_project.run("cat", "data/x.txt")
    assert r.returncode == 0 and r.stdout == "two", r.stderr

    # replaced by another file of the same size and the same whole-second mtime
    now = int(time.time())
    os.utime(p / "y.txt", (now, now))
    assert ssh_project.run("cat", "y.txt").stdout == "aaaa"
    replacement = p / "y.tmp"
    replacement.write_text("bbbb")
    os.utime(replacement, (now, now))
    os.replace(replacement, p / "y.txt")
    r = ssh_project.run("cat", "y.txt")
    assert r.returncode == 0 and r.stdout == "bbbb", r.stderr

    # a new empty directory, then a file in it
    (p / "data/new").mkdir()
    assert ssh_project.run("true").returncode == 0
    (p / "data/new/z.txt").write_text("z")
    r = ssh_project.run("cat", "data/new/z.txt")
    assert r.returncode == 0 and r.stdout == "z", r.stderr


def test_an_ignore_rule_change_is_honoured_on_the_next_call(
    ssh_project: VpEnv, remote_workdir: Path
) -> None:
    p = ssh_project.project
    (p / "logs").mkdir()
    (p / "logs/big.log").write_text("x")
    (p / "keep.py").write_text("k")
    assert ssh_project.run("true").returncode == 0
    assert (remote_workdir / "logs/big.log").exists()
    (p / ".vpignore").write_text("!.env\n")
    (p / ".env").write_text("TOKEN=1")
    r = ssh_project.run("cat", ".env")
    assert r.returncode == 0 and r.stdout == "TOKEN=1", r.stderr


# -- first upload: tar stream == rsync -----------------------------------------------------------


def _tree_for_upload(root: Path) -> None:
    files = {
        "a.py": "a",
        "#hash.txt": "comment-looking name",
        ";semi.txt": "s",
        "sub dir/ü b.txt": "unicode",
        "priv/p.txt": "private dir",
        "deep/er/x.bin": "x" * 5000,
        ".env": "SECRET=1",
        "keys/id_rsa": "key",
        "cache/__pycache__/m.pyc": "pyc",
    }
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body)
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "priv").chmod(0o700)
    (root / "link").symlink_to("a.py")
    old = time.time() - 3600
    os.utime(root / "deep/er", (old, old))


def _remote_tree(root: Path) -> dict:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = path.relative_to(root).as_posix()
        body = (
            os.readlink(path)
            if path.is_symlink()
            else (path.read_bytes() if path.is_file() else None)
        )
        # whole seconds: tar's default format keeps no more (nor does rsync's quick check)
        mtime = st.st_mtime_ns // 10**9 if not path.is_dir() else None
        out[rel] = (oct(st.st_mode), mtime, body)
    return out


def test_the_tar_first_upload_matches_rsync(
    vp_env: VpEnv, ssh_host: SshHost, tmp_path: Path
) -> None:
    _tree_for_upload(vp_env.project)
    first = tmp_path / "first"
    vp_env.use_ssh_host(ssh_host, first)
    r = vp_env.run("--sync-only")
    assert r.returncode == 0, r.stderr
    tar_manifest = _manifest(vp_env)

    # the same tree through the rsync path: the host already has our files (clean manifest
    # but another workdir would be a first upload again), so copy with the rsync argv.
    second = tmp_path / "second"
    names = sorted(tar_manifest["files"])
    payload = b"".join(b"./" + n.encode() + b"\0" for n in names)
    subprocess.run(
        ["rsync", "-a", "--files-from=-", "--from0", f"{vp_env.project}/", f"{second}/"],
        input=payload,
        check=True,
    )
    assert _remote_tree(first) == _remote_tree(second)
    assert ".env" not in tar_manifest["files"] and "keys/id_rsa" not in tar_manifest["files"]
    assert "#hash.txt" in tar_manifest["files"] and ";semi.txt" in tar_manifest["files"]
    assert tar_manifest["uploaded"] == tar_manifest["files"]
    assert tar_manifest["clean"] is True
    assert not (first / ".env").exists()
    # the next call has nothing to send
    r = vp_env.run("-v", "--sync-only")
    assert "not syncing" in r.stderr, r.stderr


# -- many runs on one host -----------------------------------------------------------------------


def _many(vp_env: VpEnv, n: int) -> None:
    """`n` runs at once: each gets its own output and exit code, and they ride vp's shared
    masters: a session the master refuses makes ssh log in anew on its own (and, past
    sshd's MaxStartups, be dropped), so new logins are counted too."""
    host: SshHost = vp_env.host  # type: ignore[attr-defined]
    offset = host.log_path.stat().st_size
    procs = [vp_env.popen("sh", "-c", f"echo {i}; exit {i % 5}") for i in range(n)]
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=600)
        assert (proc.returncode, out.decode()) == (i % 5, f"{i}\n"), err.decode()
    with open(host.log_path, "rb") as fh:
        fh.seek(offset)
        log = fh.read().decode(errors="replace")
    logins = log.count("Accepted publickey")
    assert logins <= MASTERS - 1, f"{logins} new ssh connections for {n} runs"


@pytest.fixture
def ten_session_host(tmp_path: Path, vp_env: VpEnv):
    root = tmp_path / "host10"
    host = SshHost(root, max_sessions=10)
    host.start()
    try:
        vp_env.use_ssh_host(host, tmp_path / "remote")
        (vp_env.project / "job.py").write_text("print(1)\n")
        assert vp_env.run("true").returncode == 0  # one master, the manifest current
        vp_env.host = host  # type: ignore[attr-defined]
        yield vp_env
    finally:
        host.close()


def test_fifty_concurrent_runs_on_a_ten_session_host(ten_session_host: VpEnv) -> None:
    _many(ten_session_host, 50)


@pytest.mark.heavy
def test_two_hundred_concurrent_runs_queue_rather_than_fail(ten_session_host: VpEnv) -> None:
    _many(ten_session_host, 200)


def test_the_fast_path_reports_errors_in_one_line(vp_env: VpEnv) -> None:
    vp_env.write_config('[project]\nname = "p"\n[host]\nplatform = "nosuch"\n')
    proc = subprocess.run(
        [*VP, "true"], cwd=vp_env.project, env=vp_env.env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert proc.stderr.startswith("vp: error: ") and "Traceback" not in proc.stderr
