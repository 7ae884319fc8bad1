"""The Makefile snippet from `vp init --make`: `make train` runs on the host through vp,
`make train VP=` runs the same target on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import VpEnv

TRAIN = "import os\nopen('marker.txt', 'w').write(os.getcwd())\n"


def _make(env: VpEnv, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "train", *args],
        cwd=env.project,
        env={**env.env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_train_runs_remotely_through_vp_and_locally_without(
    ssh_project: VpEnv, remote_workdir: Path, tmp_path: Path
):
    project = ssh_project.project
    init = ssh_project.run("init", "--make")
    assert init.returncode == 0, init.stderr
    assert "VP ?= vp" in (project / "Makefile").read_text()
    (project / "train.py").write_text(TRAIN)

    # The template runs `python train.py`: provide `python` on both sides (the host is
    # this machine) without relying on the distribution shipping one.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    path = f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    with (project / "vp.toml").open("a") as fh:
        fh.write(f'\n[env]\nPATH = "{path}"\n')

    remote = _make(ssh_project, path, f"VP={sys.executable} -m vp")
    assert remote.returncode == 0, remote.stdout + remote.stderr
    assert (remote_workdir / "marker.txt").read_text() == str(remote_workdir)
    assert (project / "marker.txt").read_text() == str(remote_workdir)  # fetched back

    (project / "marker.txt").unlink()
    local = _make(ssh_project, path, "VP=")
    assert local.returncode == 0, local.stdout + local.stderr
    assert (project / "marker.txt").read_text() == str(project)
    assert (remote_workdir / "marker.txt").read_text() == str(remote_workdir)


def test_init_make_twice_leaves_one_train_target_and_no_warnings(vp_env: VpEnv) -> None:
    """Issue #12 item 9: a second `vp init --make` adds nothing and warns about nothing; a
    Makefile with its own `train` keeps it (no "overriding recipe" from make)."""
    first = vp_env.run("init", "--make")
    assert first.returncode == 0, first.stderr
    once = (vp_env.project / "Makefile").read_text()
    second = vp_env.run("init", "--make")
    assert second.returncode == 0 and "warning" not in second.stderr, second.stderr
    assert (vp_env.project / "Makefile").read_text() == once
    assert once.count("\ntrain:") + once.startswith("train:") == 1

    own = vp_env.project / "own"
    own.mkdir()
    (own / "Makefile").write_text("train:\n\techo mine\n")
    for _ in range(2):
        r = vp_env.run("init", "--make", cwd=own)
        assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    text = (own / "Makefile").read_text()
    assert text.count("train:") == 1 and "VP ?= vp" in text and "gpu:" in text
    made = subprocess.run(["make", "-n", "train"], cwd=own, capture_output=True, text=True)
    assert made.stdout == "echo mine\n" and "overriding" not in made.stderr, made.stderr
    # the disk_gb shown in the template is the real default
    from vp.config import HostTable

    toml = (vp_env.project / "vp.toml").read_text()
    assert f"# disk_gb = {HostTable.disk_gb}\n" in toml
    assert vp_env.run("config", "get", "host.disk_gb").stdout.strip() == "50"
    # asked for explicitly, an existing file is still worth a warning
    assert "exists; left as is" in vp_env.run("init").stderr
