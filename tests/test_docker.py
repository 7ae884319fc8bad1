"""Docker (ARCHITECTURE.md §6): a content-tagged image is built, pushed and run against a real
engine and a real registry; an unchanged project costs neither a build nor a push."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vp.docker import (
    FREE_BYTES_SHELL,
    check_disk,
    ensure_image,
    image_size,
    image_tag,
    parse_free_bytes,
    registry_auth,
    wrap_command,
)
from vp.docker.run import pull_env
from vp.errors import UsageError, VpError

try:
    from tests.dockerenv import Registry, busybox_image, docker_engine, registry
except ModuleNotFoundError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from dockerenv import Registry, busybox_image, docker_engine, registry

__all__ = ["busybox_image", "docker_engine", "registry"]  # fixtures, used by name


def make_project(root: Path, base: str = "vp-test/busybox:latest", run: str = "true") -> Path:
    (root / "src").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "Dockerfile").write_text(f"FROM {base}\nCOPY src /app/src\nRUN {run}\n")
    (root / "src" / "main.sh").write_text("echo main\n")
    # Content of its own: concurrent identical builds share BuildKit steps, and only one of
    # them gets to report the shared steps.
    (root / "src" / "id.txt").write_text(uuid.uuid4().hex)
    (root / "data" / "big.bin").write_bytes(b"\0" * 1000)
    (root / ".dockerignore").write_text("data/\n*.log\n")
    return root


_created: list[str] = []


def unique(name: str) -> str:
    """A repository name of this test's own (removed from the engine after the test)."""
    repo = f"vp-test/{name}-{uuid.uuid4().hex[:8]}"
    _created.append(repo)
    return repo


@pytest.fixture(autouse=True)
def _remove_test_images() -> Iterator[None]:
    yield
    names, _created[:] = list(_created), []
    if not names or shutil.which("docker") is None:
        return
    listed = engine("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout
    refs = [ref for ref in listed.split() if any(name in ref for name in names)]
    if refs:
        engine("rmi", "-f", *refs, check=False)


def engine(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def image_exists(ref: str) -> bool:
    return engine("image", "inspect", ref, check=False).returncode == 0


def engine_events(since: float, until: float, needle: str) -> list[dict]:
    """The engine's events in [since, until] that mention `needle`."""
    out = engine(
        "events", "--since", f"{since:.6f}", "--until", f"{until:.6f}", "--format", "{{json .}}"
    ).stdout
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [e for e in events if needle in json.dumps(e)]


# ---------------------------------------------------------------------------- the content tag


def test_tag_follows_the_context_dockerignore_and_dockerfile(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    tag = image_tag(project)
    assert len(tag) == 12 and int(tag, 16) >= 0
    assert image_tag(project, "Dockerfile") == tag

    (project / "data" / "big.bin").write_bytes(b"\1" * 1000)  # ignored by .dockerignore
    (project / "build.log").write_text("noise")  # ignored by pattern
    os.utime(project / "src" / "main.sh", (1, 1))  # times are not content
    assert image_tag(project) == tag

    (project / "src" / "main.sh").write_text("echo changed\n")
    changed = image_tag(project)
    assert changed != tag

    (project / "src" / "main.sh").chmod(0o755)  # COPY keeps permission bits
    assert image_tag(project) != changed

    (project / "src" / "new.txt").write_text("")
    assert image_tag(project) != changed

    before = image_tag(project)
    with (project / "Dockerfile").open("a") as f:
        f.write("ENV X=1\n")
    assert image_tag(project) != before


def test_tag_cache_never_hides_a_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Digests are cached by size/mtime/ctime/inode; same-size edits with the old mtime put
    back are still seen."""
    from vp.docker import build

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(build._DigestCache, "RACY_SECONDS", -1.0)  # cache even fresh files
    project = make_project(tmp_path / "p")
    main = project / "src" / "main.sh"
    tag = image_tag(project)
    assert list((tmp_path / "cache" / "vp" / "docker-context").glob("*.json"))
    assert image_tag(project) == tag
    st = main.stat()
    main.write_text("echo MAIN\n")  # same size
    os.utime(main, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert image_tag(project) != tag


def test_dockerignore_exceptions_and_ignored_dockerfile(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    (project / "data" / "keep.txt").write_text("a")
    (project / ".dockerignore").write_text("data/\n!data/keep.txt\nDockerfile\n")
    tag = image_tag(project)
    (project / "data" / "big.bin").write_bytes(b"x")
    assert image_tag(project) == tag
    (project / "data" / "keep.txt").write_text("b")  # re-included by "!"
    assert image_tag(project) != tag
    tag = image_tag(project)
    (project / "Dockerfile").write_text("FROM scratch\n")  # listed, but always sent
    assert image_tag(project) != tag


def test_missing_dockerfile_names_the_path(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    with pytest.raises(VpError) as err:
        image_tag(project, "docker/Dockerfile.gpu")
    assert str(project / "docker" / "Dockerfile.gpu") in str(err.value)
    with pytest.raises(VpError) as err:
        ensure_image(project, dockerfile="nope", image="x/y", push=False, auth=None)
    assert str(project / "nope") in str(err.value)


# ---------------------------------------------------------------------------- build, push, run


def test_build_push_pull_and_run(tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    project = make_project(tmp_path / "p", base=busybox_image)
    image = f"{registry.host}/{unique('app')}"
    lines: list[str] = []
    ref = ensure_image(
        project,
        dockerfile="Dockerfile",
        image=image,
        push=True,
        auth=registry.auth,
        progress=lines.append,
    )
    tag = image_tag(project)
    assert ref == f"{image}:{tag}"
    repo = image.split("/", 1)[1]
    assert registry.manifest_digest(repo, tag) is not None
    assert any("COPY src /app/src" in line for line in lines)  # build steps as progress
    assert any(line.startswith("pushed ") for line in lines)

    # The run host has no copy: it pulls from the registry with the credentials we pass,
    # through a throwaway docker config. Neither the password nor [env] values are in the text
    # (it is the argv of a shell): they come from the environment, as vp's wrapper exports them.
    engine("rmi", ref)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    secret = "s3cret 'quoted' $HOME"
    text = wrap_command(
        'echo hi; cat /app/src/main.sh; printf %s "$TOKEN" > /workspace/out.txt; exit 3',
        image=ref,
        workdir=str(workspace),
        env=["TOKEN"],
        gpus=None,
        pull_auth=registry.auth,
    )
    assert registry.password not in text and secret not in text
    home = tmp_path / "home"
    home.mkdir()
    run = subprocess.run(
        ["sh", "-c", text],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(home), "TOKEN": secret, **pull_env(registry.auth)},
    )
    assert run.returncode == 3, run.stderr
    assert run.stdout.splitlines()[:2] == ["hi", "echo main"]
    assert (workspace / "out.txt").read_text() == secret
    assert not (home / ".docker").exists()  # the login did not outlive the pull
    assert image_size(ref) > 1_000_000  # busybox, for check_disk on the run host

    # A wrong password on the run host fails before running anything, and says why.
    engine("rmi", ref)
    wrong = {**registry.auth, "password": "wrong"}
    bad = wrap_command(
        "echo ran", image=ref, workdir=str(workspace), env=[], gpus=False, pull_auth=wrong
    )
    run = subprocess.run(
        ["sh", "-c", bad],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **pull_env(wrong)},
    )
    assert run.returncode != 0 and "ran" not in run.stdout
    assert "unauthorized" in run.stderr.lower()


def test_unchanged_project_neither_builds_nor_pushes(
    tmp_path: Path, registry: Registry, busybox_image: str
) -> None:
    project = make_project(tmp_path / "p", base=busybox_image)
    image = f"{registry.host}/{unique('same')}"
    repo = image.split("/", 1)[1]
    kwargs = dict(dockerfile="Dockerfile", image=image, push=True, auth=registry.auth)
    ref = ensure_image(project, **kwargs)
    tag = ref.rsplit(":", 1)[1]
    image_before = json.loads(engine("image", "inspect", ref).stdout)[0]
    digest_before = registry.manifest_digest(repo, tag)
    log_offset = registry.log_offset()
    time.sleep(0.05)
    since = time.time()

    assert ensure_image(project, **kwargs) == ref
    # Local only, no registry: not rebuilt either.
    assert ensure_image(project, **{**kwargs, "push": False, "auth": None}) == ref

    until = time.time()
    image_after = json.loads(engine("image", "inspect", ref).stdout)[0]
    assert (image_after["Id"], image_after["Created"]) == (
        image_before["Id"],
        image_before["Created"],
    )
    assert registry.manifest_digest(repo, tag) == digest_before
    assert engine_events(since, until, repo) == []  # no tag, push or build event for the image
    writes = [
        line
        for line in registry.requests_since(log_offset)
        if repo in line and any(f'"{m} ' in line for m in ("PUT", "POST", "PATCH"))
    ]
    assert writes == []


def test_changed_source_rebuilds_and_ignored_change_does_not(
    tmp_path: Path, busybox_image: str
) -> None:
    project = make_project(tmp_path / "p", base=busybox_image)
    image = unique("local")
    first = ensure_image(project, dockerfile="Dockerfile", image=image, push=False, auth=None)

    (project / "data" / "big.bin").write_bytes(b"changed")
    assert (
        ensure_image(project, dockerfile="Dockerfile", image=image, push=False, auth=None) == first
    )

    (project / "src" / "main.sh").write_text("echo second\n")
    second = ensure_image(project, dockerfile="Dockerfile", image=image, push=False, auth=None)
    assert second != first
    out = engine("run", "--rm", second, "cat", "/app/src/main.sh").stdout
    assert out == "echo second\n"
    engine("rmi", first, second)


@pytest.mark.parametrize("built_before", [False, True], ids=["fresh", "built-not-pushed"])
def test_wrong_registry_password_is_one_line_unauthorized(
    tmp_path: Path, registry: Registry, busybox_image: str, built_before: bool
) -> None:
    project = make_project(tmp_path / "p", base=busybox_image)
    image = f"{registry.host}/{unique('denied')}"
    if built_before:
        ensure_image(project, dockerfile="Dockerfile", image=image, push=False, auth=None)
    bad = {**registry.auth, "password": "wrong"}
    with pytest.raises(VpError) as err:
        ensure_image(project, dockerfile="Dockerfile", image=image, push=True, auth=bad)
    message = str(err.value)
    assert "unauthorized" in message and registry.host in message
    assert "\n" not in message
    assert err.value.hint
    if not built_before:  # credentials are checked before spending time on a build
        assert not image_exists(f"{image}:{image_tag(project)}")


@pytest.mark.parametrize(
    ("builder", "step"),
    [
        ("1", "[2/3] RUN echo before-the-failure && exit 7"),  # LABEL is no BuildKit step
        ("0", "Step 3/4 : RUN echo before-the-failure && exit 7"),
    ],
    ids=["buildkit", "classic"],
)
def test_failing_run_step_is_named(
    tmp_path: Path, busybox_image: str, monkeypatch: pytest.MonkeyPatch, builder: str, step: str
) -> None:
    monkeypatch.setenv("DOCKER_BUILDKIT", builder)
    project = make_project(tmp_path / "p", base=busybox_image)
    label = f"vp-test={uuid.uuid4().hex}"  # the classic builder keeps the steps that worked
    (project / "Dockerfile").write_text(
        f"FROM {busybox_image}\nLABEL {label}\nRUN echo before-the-failure && exit 7\nRUN true\n"
    )
    try:
        with pytest.raises(VpError) as err:
            ensure_image(
                project, dockerfile="Dockerfile", image=unique("fail"), push=False, auth=None
            )
    finally:
        engine("image", "prune", "-f", "--filter", f"label={label}", check=False)
    message = str(err.value)
    assert message == f"docker build failed at {step} (exit 7)"
    assert "before-the-failure" in err.value.hint


def test_buildkit_features_work(tmp_path: Path, busybox_image: str) -> None:
    """Cache mounts (as in templates/Dockerfile) need BuildKit; the classic builder refuses them."""
    project = make_project(tmp_path / "p", base=busybox_image)
    (project / "Dockerfile").write_text(
        f"FROM {busybox_image}\n"
        "RUN --mount=type=cache,target=/root/.cache echo cached > /root/.cache/x && "
        "cat /root/.cache/x > /seen\n"
    )
    ref = ensure_image(project, dockerfile="Dockerfile", image=unique("bk"), push=False, auth=None)
    assert engine("run", "--rm", ref, "cat", "/seen").stdout == "cached\n"
    engine("rmi", ref)


def test_unreachable_engine_is_named(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    sock = f"unix://{tmp_path}/no-such.sock"
    with pytest.raises(VpError) as err:
        ensure_image(
            project, dockerfile="Dockerfile", image="x/y", push=False, auth=None, docker_host=sock
        )
    assert sock in str(err.value)
    assert "\n" not in str(err.value)


def test_remote_build_through_an_ssh_forwarded_socket(tmp_path: Path, busybox_image: str) -> None:
    try:
        from tests.sshhost import SshHost
    except ModuleNotFoundError:
        from sshhost import SshHost

    host = SshHost(tmp_path / "sshd")
    host.start()
    short = Path(tempfile.mkdtemp(prefix="vpd", dir="/tmp"))  # unix socket paths are short
    forward = None
    try:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(host.known_hosts_line() + "\n")
        local = short / "docker.sock"
        forward = subprocess.Popen(
            [
                "ssh", "-N", "-F", "/dev/null",
                "-i", str(host.client_key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
                "-p", str(host.port),
                "-L", f"{local}:/var/run/docker.sock",
                f"{host.user}@{host.address}",
            ],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while not local.exists():
            assert forward.poll() is None, forward.stderr.read().decode()
            assert time.monotonic() < deadline, "ssh -L did not create the socket"
            time.sleep(0.05)
        project = make_project(tmp_path / "p", base=busybox_image)
        image = unique("remote")
        remote = dict(dockerfile="Dockerfile", image=image, push=False, auth=None)
        ref = ensure_image(project, **remote, docker_host=f"unix://{local}")
        assert ref == f"{image}:{image_tag(project)}"
        assert image_exists(ref)  # the host's engine has it (here: the same engine)
        engine("rmi", ref)
        forward.terminate()  # the socket was ssh's: without the forward there is no engine
        forward.wait(timeout=10)
        with pytest.raises(VpError, match="not reachable"):
            ensure_image(project, **remote, docker_host=f"unix://{local}")
    finally:
        if forward is not None:
            forward.terminate()
            forward.wait(timeout=10)
        host.close()
        shutil.rmtree(short, ignore_errors=True)


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_sigint_to_the_process_group_stops_the_container(
    tmp_path: Path, busybox_image: str, shell: str
) -> None:
    name = f"vp-test-{uuid.uuid4().hex[:10]}"
    text = wrap_command(
        "echo started; sleep 30", image=busybox_image, workdir=str(tmp_path), env={}, name=name
    )
    if shell == "bash":
        text += '; echo "docker exited $?"'  # bash waits for docker before it dies
    proc = subprocess.Popen(
        [shell, "-c", text], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout.readline() == "started\n"
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
        assert time.monotonic() - started < 10  # not the 30 s of sleep, nor docker's 10 s kill
        if shell == "bash":
            assert out.strip() == "docker exited 130"
        deadline = time.monotonic() + 10
        while engine("ps", "-aq", "--filter", f"name={name}").stdout.strip():
            assert time.monotonic() < deadline, "container still there after SIGINT"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        engine("rm", "-f", name, check=False)


# ---------------------------------------------------------------------------- wrap_command


def fake_docker(bin_dir: Path, nvidia: bool = False) -> None:
    """A `docker` that prints its argv (one per line) and TOKEN from its environment."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "docker"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = info ] && exit 1\n'
        'for a in "$@"; do printf "arg:%s\\n" "$a"; done\n'
        'printf "env:%s\\n" "$TOKEN"\n'
    )
    script.chmod(0o755)
    if nvidia:
        hook = bin_dir / "nvidia-container-runtime-hook"
        hook.write_text("#!/bin/sh\n")
        hook.chmod(0o755)


def run_text(text: str, bin_dir: Path, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    env = {
        **os.environ,
        **(env or {}),
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(cwd / "home"),
    }
    out = subprocess.run(["sh", "-c", text], capture_output=True, text=True, env=env, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_wrap_command_quotes_everything_and_keeps_env_values_off_argv(tmp_path: Path) -> None:
    fake_docker(tmp_path / "bin")
    command = """python -c "print('a b; c')" && echo '$HOME' "it's" """
    value = "p@ss word; $(touch /tmp/pwned) `id` 'q' \"dq\""
    lines = run_text(
        wrap_command(
            command, image="reg:5000/me/img:abc", workdir="/work space/it's", env=["TOKEN"]
        ),
        tmp_path / "bin",
        tmp_path,
        env={"TOKEN": value},
    )
    args = [line[4:] for line in lines if line.startswith("arg:")]
    assert args[:2] == ["run", "--rm"]
    assert "--init" in args
    assert args[args.index("-v") + 1] == "/work space/it's:/workspace"
    assert args[args.index("-w") + 1] == "/workspace"
    assert args[args.index("-e") + 1] == "TOKEN"
    assert args[-4:] == ["reg:5000/me/img:abc", "sh", "-c", command]
    assert "--gpus" not in args  # no NVIDIA runtime on this host
    assert not any(value in a for a in args)
    assert f"env:{value}" in lines


def test_wrap_command_gpus(tmp_path: Path) -> None:
    fake_docker(tmp_path / "bin", nvidia=True)
    probed = run_text(
        wrap_command("true", image="i", workdir="/w", env={}), tmp_path / "bin", tmp_path
    )
    assert [x for x in probed if x in ("arg:--gpus", "arg:all")] == ["arg:--gpus", "arg:all"]
    never = run_text(
        wrap_command("true", image="i", workdir="/w", env={}, gpus=False),
        tmp_path / "bin",
        tmp_path,
    )
    assert "arg:--gpus" not in never
    fake_docker(tmp_path / "bin2")
    forced = run_text(
        wrap_command("true", image="i", workdir="~/proj", env={}, gpus=True),
        tmp_path / "bin2",
        tmp_path,
    )
    assert "arg:--gpus" in forced
    assert f"arg:{tmp_path}/home/proj:/workspace" in forced


def test_wrap_command_rejects_bad_env_names() -> None:
    with pytest.raises(UsageError):
        wrap_command("true", image="i", workdir="/w", env=["A B"])


# ---------------------------------------------------------------------------- credentials, disk


@pytest.fixture
def clean_registry_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("VP_REGISTRY_USER", raising=False)
    monkeypatch.delenv("VP_REGISTRY_PASSWORD", raising=False)
    monkeypatch.delenv("VP_REGISTRY", raising=False)
    monkeypatch.delenv("VP_DOCKER_REGISTRY", raising=False)
    config = tmp_path / "docker-config"
    config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    return config


def test_registry_auth_sources(clean_registry_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert registry_auth("ghcr.io/me/app", {}) is None

    token = base64.b64encode(b"alice:from-config").decode()
    (clean_registry_env / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    "https://ghcr.io": {"auth": token},
                    "https://index.docker.io/v1/": {"auth": base64.b64encode(b"bob:hub").decode()},
                }
            }
        )
    )
    assert registry_auth("ghcr.io/me/app", {}) == {
        "username": "alice",
        "password": "from-config",
        "serveraddress": "ghcr.io",
    }
    hub = registry_auth("me/app", {})
    assert hub["username"] == "bob" and hub["serveraddress"] == "https://index.docker.io/v1/"

    settings = {"username": "carol", "password": "from-user-file", "registry": "ghcr.io"}
    assert registry_auth("ghcr.io/me/app", settings)["username"] == "carol"
    assert registry_auth("ghcr.io/me/app", {"docker": settings})["password"] == "from-user-file"

    monkeypatch.setenv("VP_REGISTRY_PASSWORD", "from-env")
    assert registry_auth("ghcr.io/me/app", settings) == {
        "username": "carol",
        "password": "from-env",
        "serveraddress": "ghcr.io",
    }
    monkeypatch.delenv("VP_REGISTRY_PASSWORD")
    with pytest.raises(UsageError):
        registry_auth("ghcr.io/me/app", {"username": "carol", "registry": "ghcr.io"})


def test_registry_auth_from_a_credential_helper(
    clean_registry_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text(
        '#!/bin/sh\nread server\n[ "$server" = registry.example.com:5000 ] || exit 1\n'
        'echo \'{"ServerURL":"x","Username":"dave","Secret":"from-helper"}\'\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    (clean_registry_env / "config.json").write_text(json.dumps({"credsStore": "fake"}))
    auth = registry_auth("registry.example.com:5000/team/app:old", {})
    assert auth == {
        "username": "dave",
        "password": "from-helper",
        "serveraddress": "registry.example.com:5000",
    }


@pytest.mark.parametrize(
    ("image", "registry_name", "repo"),
    [
        ("ghcr.io/me/app:v1", "ghcr.io", "ghcr.io/me/app"),
        ("me/app", "docker.io", "me/app"),
        ("ubuntu:22.04", "docker.io", "ubuntu"),
        ("localhost/app", "localhost", "localhost/app"),
        ("127.0.0.1:5000/team/app:abc", "127.0.0.1:5000", "127.0.0.1:5000/team/app"),
        (
            "reg.example.com:443/a/b@sha256:" + "0" * 64,
            "reg.example.com:443",
            "reg.example.com:443/a/b",
        ),
    ],
)
def test_image_names(image: str, registry_name: str, repo: str) -> None:
    from vp.docker.engine import registry_host, repository

    assert registry_host(image) == registry_name
    assert repository(image) == repo


def test_check_disk() -> None:
    check_disk(2 * 10**9, 10 * 10**9)
    with pytest.raises(VpError) as err:
        check_disk(9 * 10**9, 8 * 10**9, host="gpu-1")
    assert "gpu-1" in str(err.value) and "8.0GB" in str(err.value)
    free = subprocess.run(["sh", "-c", FREE_BYTES_SHELL], capture_output=True, text=True).stdout
    assert parse_free_bytes(free) > 0


def test_a_broken_docker_config_entry_is_one_line(clean_registry_env: Path) -> None:
    (clean_registry_env / "config.json").write_text(
        json.dumps({"auths": {"https://ghcr.io": {"auth": "not base64 of user:password"}}})
    )
    with pytest.raises(VpError) as err:
        registry_auth("ghcr.io/me/app", {})
    assert "ghcr.io" in str(err.value) and "docker login ghcr.io" in (err.value.hint or "")
    # a credential store whose helper is not installed gives no credentials, not an error
    (clean_registry_env / "config.json").write_text(json.dumps({"credsStore": "not-installed"}))
    assert registry_auth("ghcr.io/me/app", {}) is None
