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
