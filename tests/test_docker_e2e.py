"""`vp` with [docker] enabled, end to end: build, push to the local registry, run on the sshd
test host (whose engine is this machine's), stream, exit code, results back."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from tests.conftest import VpEnv, on_vast
from tests.dockerenv import Registry, busybox_image, docker_engine, registry  # noqa: F401
from tests.emulators.vast import vast_emulator  # noqa: F401

__all__ = ["busybox_image", "docker_engine", "registry", "vast_emulator"]


def _docker_project(env: VpEnv, reg: Registry, workdir: Path, repo: str, extra: str = "") -> None:
    cfg = env.project / "vp.toml"
    cfg.write_text(
        cfg.read_text()
        + f'\n[docker]\nenabled = true\nimage = "{reg.host}/{repo}"\n{extra}'
        + '\n[env]\nSECRET_TOKEN = "tok-123"\n'
    )
    (env.project / "Dockerfile").write_text(
        "FROM vp-test/busybox:latest\nCOPY marker.txt /marker.txt\n"
    )
    (env.project / "marker.txt").write_text("v1\n")
    # the workspace is mounted at run time; the image holds only the environment, so
    # results the runs bring back must not change its hash
    (env.project / ".dockerignore").write_text("*\n!marker.txt\n")


def _registry_env(reg: Registry) -> dict[str, str]:
    return {
        "VP_REGISTRY": reg.host,
        "VP_REGISTRY_USER": reg.username,
        "VP_REGISTRY_PASSWORD": reg.password,
    }


def test_build_push_run_in_container(
    ssh_project: VpEnv,
    remote_workdir: Path,
    registry: Registry,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> None:
    repo = f"vp-e2e/run{uuid.uuid4().hex[:8]}"
    _docker_project(ssh_project, registry, remote_workdir, repo)
    env = _registry_env(registry)
    cmd = "cat /marker.txt; echo $SECRET_TOKEN; pwd; echo made > result.txt; exit 3"
    r = ssh_project.run(cmd, extra_env=env, timeout=300)
    assert r.returncode == 3, r.stderr
    assert r.stdout.split() == ["v1", "tok-123", "/workspace"]
    assert (ssh_project.project / "result.txt").read_text() == "made\n"
    tags = subprocess.run(
        ["docker", "images", "--format", "{{.Tag}}", f"{registry.host}/{repo}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert len(tags) == 1
    digest = registry.manifest_digest(repo, tags[0])
    assert digest is not None

    # Nothing changed: no build and no push (asserted on the registry, not on log text).
    offset = registry.log_offset()
    r = ssh_project.run("cat /marker.txt", extra_env=env, timeout=300)
    assert r.returncode == 0 and r.stdout == "v1\n", r.stderr
    writes = [
        line
        for line in registry.requests_since(offset)
        if any(f'"{m} /v2/{repo}/' in line for m in ("PUT", "POST", "PATCH"))
    ]  # this repo only: other tests push to the same registry at the same time
    assert writes == []
    assert registry.manifest_digest(repo, tags[0]) == digest

    # A changed source file: a new tag is built and pushed.
    (ssh_project.project / "marker.txt").write_text("v2\n")
    r = ssh_project.run("cat /marker.txt", extra_env=env, timeout=300)
    assert r.stdout == "v2\n", r.stderr


def test_wrong_registry_password_is_one_line(
    ssh_project: VpEnv,
    remote_workdir: Path,
    registry: Registry,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> None:
    _docker_project(ssh_project, registry, remote_workdir, "vp-e2e/badpass")
    env = {**_registry_env(registry), "VP_REGISTRY_PASSWORD": "wrong"}
    r = ssh_project.run("true", extra_env=env, timeout=300)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("vp: error:")]
    assert len(errors) == 1 and registry.host in errors[0]
    assert "wrong" not in r.stderr


def test_remote_build_over_forwarded_socket(
    ssh_project: VpEnv,
    remote_workdir: Path,
    registry: Registry,  # noqa: F811
    busybox_image: str,  # noqa: F811
) -> None:
    _docker_project(ssh_project, registry, remote_workdir, "vp-e2e/remote", 'build_on = "remote"\n')
    r = ssh_project.run("cat /marker.txt", timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "v1\n"
    assert "building on" in r.stderr


def test_container_platform_boots_from_the_image_and_flags_a_stale_one(
    vp_env: VpEnv,
    remote_workdir: Path,
    registry: Registry,  # noqa: F811
    busybox_image: str,  # noqa: F811
    vast_emulator,  # noqa: F811
) -> None:
    repo = f"vp-e2e/vast{uuid.uuid4().hex[:8]}"
    vp_env.env.update(_registry_env(registry))
    docker = f'[docker]\nenabled = true\nimage = "{registry.host}/{repo}"\n'
    on_vast(
        vp_env, vast_emulator, remote_workdir, project="boxed", ready_timeout=None, extra=docker
    )
    (vp_env.project / "Dockerfile").write_text("FROM vp-test/busybox:latest\nCOPY m.txt /m.txt\n")
    (vp_env.project / ".dockerignore").write_text("*\n!m.txt\n")
    (vp_env.project / "m.txt").write_text("v1\n")
    r = vp_env.run("echo", "hi", timeout=300)
    assert r.returncode == 0 and r.stdout == "hi\n", r.stderr
    [instance] = vast_emulator.instances.values()
    assert instance["image_uuid"].startswith(f"{registry.host}/{repo}:")  # booted from it
    assert "runs" not in r.stderr
    (vp_env.project / "m.txt").write_text("v2\n")
    r = vp_env.run("echo", "hi", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "recreate it with `vp down --yes`" in r.stderr
    assert vp_env.run("down", "--yes").returncode == 0
