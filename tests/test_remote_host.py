"""The host side of a run (vp/remote.py), run by the host's real /bin/sh and GNU find/tail:
the change listing split over several finds lists exactly what one find lists, a big tree
is remembered as such, the run's environment reaches the command through the wrapper's
stdin only (no file), and end to end a file changed in place in a split listing comes back.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.requires import requires
from tests.waiting import wait_for
from vp import remote
from vp.sync.ignore import PRUNE_DIRS
from vp.transport import Transport

OLD = time.time() - 3600

# Names a shell glob or a find start point could get wrong: blanks, a newline, glob
# characters, names find takes for an expression ("-x", "(", "!", ","), hidden ones, the
# pruned names (as directories and as files), a symlink to a directory at two depths.
AWKWARD = ["b c", "-dash", "-", "(", "!bang", ",comma", ".hidden", "..dots", "x\nnl", "d*star"]
AWKWARD += ["q?[x]", "node_modules", ".git"]


def _tree(root: Path, plain_dirs: int) -> list[Path]:
    """A tree of the awkward names plus `plain_dirs` ordinary ones; all its times old."""
    files = []
    for name in ["a", *AWKWARD, *(f"m{i:03d}" for i in range(plain_dirs))]:
        for sub in ["s1", "-s2", "__pycache__", ".h", "deep/er"]:
            (root / name / sub).mkdir(parents=True, exist_ok=True)
            files += [root / name / sub / f for f in ("f1", ".git", "g 2")]
        files.append(root / name / "top")
    files += [root / "tf", root / "-tf", root / ".venv"]  # .venv: a file of a pruned name
    for f in files:
        f.write_text("x")
    (root / "link").symlink_to("a")
    (root / "a" / "lsub").symlink_to("../b c")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath) / name, (OLD, OLD), follow_symlinks=False)
    os.utime(root, (OLD, OLD))
    return files


def _one_find(root: Path, marker: Path) -> list[bytes]:
    """The listing as the wrapper always made it: one find, every name tested on every entry."""
    prune = " -o ".join(f"-name {shlex.quote(d)}" for d in PRUNE_DIRS)
    script = (
        f"cd {shlex.quote(str(root))} && find . \\( {prune} \\) -prune -o "
        f"\\( -type f -o -type l -o -type d \\) -newercm {shlex.quote(str(marker))} "
        "-printf '%y %s %T@ %P\\0'"
    )
    out = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout
    return [r for r in out.split(b"\0") if r]


def _listing(root: Path, marker: Path, hint: Path, tmp: Path, finds: int) -> list[bytes]:
    """vp's listing (on stderr, as in the wrapper) with the hint saying `finds` finds."""
    hint.write_text(f"{finds}\n")
    script = remote.changes_script(
        shlex.quote(str(root)),
        shlex.quote(str(marker)),
        shlex.quote(str(hint)),
        shlex.quote(str(tmp)),
    )
    proc = subprocess.run(["sh", "-c", script], capture_output=True, check=True)
    assert proc.stdout == b""
    assert not [p for p in tmp.iterdir() if p.name.startswith("l.")]  # its files are gone
    return [r for r in proc.stderr.split(b"\0") if r]


@pytest.mark.parametrize("plain_dirs", [0, 40], ids=["second-level split", "top-level split"])
def test_the_split_listing_lists_exactly_what_one_find_lists(
    tmp_path: Path, plain_dirs: int
) -> None:
    root, tmp, hint, marker = tmp_path / "ws", tmp_path / "tmp", tmp_path / "hint", tmp_path / "m"
    root.mkdir()
    tmp.mkdir()
    files = _tree(root, plain_dirs)
    marker.touch()
    os.utime(marker, (OLD + 60, OLD + 60))
    # Every entry's ctime is newer than the marker (utime moved them): all are listed, so
    # the traversals themselves are compared, entry by entry.
    everything = sorted(_one_find(root, marker))
    assert len(everything) > 150 and any(b" -dash/-s2/f1" in r for r in everything)
    # Then what a run does: files written in place (no directory's times move) after the
    # marker; the pruned dirs' files and the `.git`/`.venv` files are not listed.
    marker.touch()
    time.sleep(0.02)
    random.seed(plain_dirs)
    for f in random.sample(files, 25):
        with f.open("a") as out:
            out.write("more")
    changed = sorted(_one_find(root, marker))
    assert 0 < len(changed) < 25
    for finds in (1, 2, 3):
        got = _listing(root, marker, hint, tmp, finds)
        assert sorted(got) == changed and len(set(got)) == len(got), finds
    os.utime(marker, (OLD + 60, OLD + 60))
    everything = sorted(_one_find(root, marker))  # the sizes and times of now
    for finds in (1, 2, 3):
        got = _listing(root, marker, hint, tmp, finds)
        assert sorted(got) == everything and len(set(got)) == len(got), finds


def test_a_big_listing_is_remembered_and_a_small_one_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, tmp, hint, marker = tmp_path / "ws", tmp_path / "tmp", tmp_path / "hint", tmp_path / "m"
    root.mkdir()
    tmp.mkdir()
    _tree(root, 0)
    marker.touch()
    cores = len(os.sched_getaffinity(0))

    def listing(threshold_ms: int) -> str | None:
        monkeypatch.setattr(remote, "BIG_LISTING_MS", threshold_ms)
        script = remote.changes_script(
            shlex.quote(str(root)), shlex.quote(str(marker)), shlex.quote(str(hint)), str(tmp)
        )
        subprocess.run(["sh", "-c", script], capture_output=True, check=True)
        return hint.read_text().strip() if hint.exists() else None

    assert listing(10**9) is None  # small, as the default: nothing written
    # Any listing costs at least 0 ms: "big", so the next one uses the host's cores.
    assert listing(0) == (str(min(cores, remote.MAX_FINDS)) if cores > 1 else None)
    if cores > 1:
        assert listing(0) == str(min(cores, remote.MAX_FINDS))  # and keeps them
        assert listing(10**9) == "1"  # small again: one find


def _launch(
    home: Path, workdir: Path, command: str, env: dict[str, str], mask=(), path: str = "", code=0
) -> bytes:
    script = remote.launch_script(
        '"$HOME"/.vp/runs',
        remote.new_run_id(),
        shlex.quote(str(workdir)),
        command,
        env,
        mask=mask,
    )
    proc = subprocess.run(
        ["sh", "-s"],
        input=script.encode(),
        capture_output=True,
        env={**os.environ, "HOME": str(home), "PATH": path + os.environ["PATH"]},
        timeout=60,
    )
    assert f"{remote.EXIT_MARK}{code}\n".encode() in proc.stderr, proc.stderr
    return proc.stdout


def test_the_environment_reaches_the_command_and_no_file(tmp_path: Path) -> None:
    home, workdir = tmp_path / "home", tmp_path / "ws"
    home.mkdir()
    secret = "s3cr3t-" + os.urandom(8).hex()
    env = {
        "PLAIN": "value",
        "EMPTY": "",
        "LINES": "first\n  indented \\ back'slash\n\nlast",
        "TOKEN": secret,
    }
    command = 'for v in PLAIN EMPTY LINES TOKEN; do eval "printf \'[%s]\' \\"\\$$v\\""; done'
    out = _launch(home, workdir, command, env)
    assert out == remote.STARTED + "".join(f"[{v}]" for v in env.values()).encode()
    # Masked: the log shows *** for the value, and the values are in no file either.
    out = _launch(home, workdir, 'echo "$TOKEN"; printf %s "$LINES"', env, mask=[secret])
    assert out == remote.STARTED + b"***\n" + env["LINES"].encode()
    runs = home / ".vp" / "runs"
    run_dirs = [d for d in runs.iterdir() if not d.name.startswith(".")]
    assert len(run_dirs) == 2
    for d in run_dirs:
        assert (d / "ended").exists() and (d / "exit").read_text() == "0\n"
        assert not (d / "env").exists() and not (d / "mask").exists()
        for f in d.iterdir():  # the unmasked run printed it into its log: that's all
            if f.name != "log" or b"***" in (d / "log").read_bytes():
                assert secret.encode() not in f.read_bytes(), f


@requires(shutil.which("busybox"), "needs busybox (apt-get install busybox-static)")
def test_a_host_whose_tail_has_no_pid_option_still_streams_every_byte(tmp_path: Path) -> None:
    home, workdir, bin_dir = tmp_path / "home", tmp_path / "ws", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    (bin_dir / "tail").symlink_to(shutil.which("busybox"))  # no --pid, no --follow=name
    command = "echo first; sleep 0.3; printf 'second\\nno newline'; exit 3"
    out = _launch(home, workdir, command, {}, path=f"{bin_dir}:", code=3)
    assert out == remote.STARTED + b"first\nsecond\nno newline"


def test_a_file_changed_in_place_in_a_split_listing_comes_back(
    ssh_project: VpEnv, remote_workdir: Path
) -> None:
    for i in range(12):
        d = ssh_project.project / f"d{i:02d}"
        d.mkdir()
        for j in range(3):
            (d / f"f{j}.txt").write_text(f"{i} {j}\n")
    r = ssh_project.run("true")
    assert r.returncode == 0, r.stderr
    # The host remembers this workdir as big: the next listing is split over two finds.
    hint_sh = remote._list_hint(Transport.runs_dir_sh, shlex.quote(str(remote_workdir)))
    hint = Path(hint_sh.replace('"$HOME"', str(Path.home())))  # the test host is this user
    hint.write_text("2\n")
    try:
        r = ssh_project.run("sh", "-c", "printf 'in place\\n' >> d07/f1.txt && echo n > d03/n")
        assert r.returncode == 0, r.stderr
        assert (ssh_project.project / "d07" / "f1.txt").read_text() == "7 1\nin place\n"
        assert (ssh_project.project / "d03" / "n").read_text() == "n\n"
    finally:
        hint.unlink(missing_ok=True)


def test_the_idle_watchdog_is_started_once_and_again_only_for_another_version(
    tmp_path: Path,
) -> None:
    from vp import idle

    home = tmp_path / "home"
    (home / ".vp" / "runs").mkdir(parents=True)
    snippet = idle.watchdog_snippet('"$HOME"/.vp/runs', 60.0, "true")
    env = {**os.environ, "HOME": str(home)}
    base = home / ".vp" / "watchdog"
    pids: list[int] = []
    try:
        pid_file = base.with_suffix(".pid")

        def started(other_than: int = 0) -> int:
            subprocess.run(["sh", "-c", snippet], env=env, check=True, timeout=30)
            wait_for(
                lambda: pid_file.exists() and int(pid_file.read_text() or 0) not in (0, other_than),
                30,
                "the watchdog's pid",
            )
            pids.append(int(pid_file.read_text()))
            return pids[-1]

        first = started()
        subprocess.run(["sh", "-c", snippet], env=env, check=True, timeout=30)
        assert int(pid_file.read_text()) == first  # the same one goes on: not started again
        os.kill(first, 0)
        base.with_suffix(".ver").write_text("other\n")  # one of another vp version runs
        assert started(other_than=first) != first
        assert base.with_suffix(".sh").read_text().startswith("W=")
    finally:
        for pid in set(pids):
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
