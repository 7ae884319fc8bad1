"""What the upload must never do (issue #10): delete a result the host made, upload `/` or
`$HOME` or a huge unconfigured folder unasked, ship a secret, or drop a `#name` silently."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.requires import require
from tests.sshhost import SshHost
from tests.test_sync import _NoRsyncHost, _tree
from vp.sync import ignore
from vp.sync.ignore import IgnoreRules

SECRETS = [
    ".env",
    ".env.local",
    "server.pem",
    "tls.key",
    "id_rsa",
    "id_ed25519.pub",
    ".netrc",
    ".aws/credentials",
    "credentials.json",
    ".thunder/token",
    ".config/vastai/vast_api_key",
    ".kube/config",
    ".git-credentials",
    ".gnupg/private-keys-v1.d/k.key",
    ".gnupg/pubring.kbx",
    ".bash_history",
    ".zsh_history",
    ".python_history",
    ".psql_history",
    ".npmrc",
    ".pypirc",
    ".pgpass",
    "cert.p12",
    "cert.pfx",
    "secrets.toml",
    ".streamlit/secrets.toml",
    ".docker/config.json",
    ".ssh/id_ecdsa",
    ".ssh/config",
    ".config/gcloud/application_default_credentials.json",
    ".azure/accessTokens.json",
    ".runpod/config.toml",
    "sub/.env",
]


def _user_config(env: VpEnv, text: str) -> None:
    path = env.home / ".config" / "vp" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def _unconfigured(env: VpEnv, host: SshHost, remote: Path, extra: str = "") -> None:
    """The ssh host set up in the user file: the project folder has no vp.toml."""
    env.use_ssh_host(host, remote)
    (env.project / "vp.toml").unlink()
    _user_config(
        env,
        f"""
        [host]
        platform = "ssh"
        [ssh]
        host = "testhost"
        [sync]
        workdir = "{remote}"
        """
        + textwrap.dedent(extra),
    )


# -- item 5: a downloaded result is never deleted on the host --------------------------------


def test_deleting_a_downloaded_result_locally_leaves_the_hosts_copy(
    ssh_project: VpEnv, remote_workdir: Path
) -> None:
    p = ssh_project.project
    _tree(p, ["src.py"])
    r = ssh_project.run("sh", "-c", "mkdir -p ckpt && echo w > ckpt/model.bin && echo r > r.txt")
    assert r.returncode == 0, r.stderr
    assert (p / "ckpt" / "model.bin").read_text() == "w\n"
    (p / "ckpt" / "model.bin").unlink()
    (p / "ckpt").rmdir()
    (p / "r.txt").unlink()
    (p / "src.py").unlink()
    r = ssh_project.run("true")
    assert r.returncode == 0, r.stderr
    assert (remote_workdir / "ckpt" / "model.bin").read_text() == "w\n"
    assert (remote_workdir / "r.txt").read_text() == "r\n"
    assert not (remote_workdir / "src.py").exists()  # vp uploaded it; the user deleted it
    # and a later run does not bring the result back uninvited, nor delete it
    assert ssh_project.run("true").returncode == 0
    assert (remote_workdir / "r.txt").exists() and not (p / "r.txt").exists()


def test_a_result_edited_locally_becomes_yours(ssh_project: VpEnv, remote_workdir: Path) -> None:
    """Edited here, it is uploaded (the host's bytes are gone already); deleting it then
    deletes your version on the host, like any file you uploaded."""
    p = ssh_project.project
    assert ssh_project.run("sh", "-c", "echo host > r.txt").returncode == 0
    (p / "r.txt").write_text("mine\n")
    assert ssh_project.run("true").returncode == 0
    assert (remote_workdir / "r.txt").read_text() == "mine\n"
    (p / "r.txt").unlink()
    assert ssh_project.run("true").returncode == 0
    assert not (remote_workdir / "r.txt").exists()


def test_a_result_is_kept_on_a_host_without_rsync(vp_env: VpEnv, tmp_path: Path) -> None:
    host = _NoRsyncHost(tmp_path / "norsync-host")
    host.start()
    try:
        remote = tmp_path / "remote"
        vp_env.use_ssh_host(host, remote)
        assert vp_env.run("sh", "-c", "echo r > r.txt").returncode == 0
        (vp_env.project / "r.txt").unlink()
        (vp_env.project / "gone.py").write_text("x")
        assert vp_env.run("true").returncode == 0
        (vp_env.project / "gone.py").unlink()
        assert vp_env.run("true").returncode == 0
        assert (remote / "r.txt").read_text() == "r\n"
        assert not (remote / "gone.py").exists()
    finally:
        host.close()


# -- item 9: / and $HOME, big unconfigured folders, secrets -----------------------------------


def test_home_is_refused_without_a_vp_toml(
    vp_env: VpEnv, ssh_host: SshHost, remote_workdir: Path
) -> None:
    _unconfigured(vp_env, ssh_host, remote_workdir)
    (vp_env.project / "notes.txt").write_text("x")
    shutil.copytree(vp_env.home / ".ssh", vp_env.project / ".ssh")  # the host's alias
    env = {"HOME": str(vp_env.project)}  # XDG dirs stay in the test's own home
    r = vp_env.run("true", extra_env=env, input="")
    assert r.returncode == 2, r.stderr
    assert "vp: error: " in r.stderr and "home folder" in r.stderr, r.stderr
    assert "vp: hint: " in r.stderr and "vp init" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 2, r.stderr
    assert not remote_workdir.exists()
    r = vp_env.run("sync", "--status", extra_env=env, input="")
    assert r.returncode == 2 and "home folder" in r.stderr, r.stderr
    # a run without sync has nothing to refuse
    assert vp_env.run("--no-sync", "true", extra_env=env, input="").returncode == 0
    # an explicit vp.toml there is the user saying "this is the project"
    (vp_env.project / "vp.toml").write_text("")
    r = vp_env.run("true", extra_env=env, input="")
    assert r.returncode == 0, r.stderr
    assert (remote_workdir / "notes.txt").exists()
    assert not (remote_workdir / ".ssh").exists()


def test_a_folder_holding_home_is_refused(
    vp_env: VpEnv, ssh_host: SshHost, remote_workdir: Path
) -> None:
    _unconfigured(vp_env, ssh_host, remote_workdir)
    r = vp_env.run("true", cwd=vp_env.home.parent, input="")
    assert r.returncode == 2 and "holds your home folder" in r.stderr, r.stderr
    assert not remote_workdir.exists()


def test_root_is_refused(vp_env: VpEnv, ssh_host: SshHost, remote_workdir: Path) -> None:
    _unconfigured(vp_env, ssh_host, remote_workdir)
    r = vp_env.run("true", cwd=Path("/"), input="", timeout=30)
    assert r.returncode == 2, r.stderr
    assert "vp: error: " in r.stderr and "refusing to sync /" in r.stderr, r.stderr
    assert "cd into the project" in r.stderr
    assert not remote_workdir.exists()


def test_a_big_first_upload_of_an_unconfigured_folder_asks_first(
    vp_env: VpEnv, ssh_host: SshHost, remote_workdir: Path
) -> None:
    _unconfigured(vp_env, ssh_host, remote_workdir, "confirm_files = 5\n")
    _tree(vp_env.project, [f"f{i}.txt" for i in range(8)])
    r = vp_env.run("true", input="")  # stdin is not a terminal: nobody to ask
    assert r.returncode == 2, r.stderr
    assert "8 files" in r.stderr and "no vp.toml" in r.stderr, r.stderr
    assert "vp: hint: " in r.stderr and "vp --yes true" in r.stderr, r.stderr
    assert not remote_workdir.exists()
    r = vp_env.run("--yes", "true", input="")  # the command the hint names
    assert r.returncode == 0, r.stderr
    assert (remote_workdir / "f7.txt").exists()
    # not the first upload any more: more files go up without a question
    _tree(vp_env.project, [f"g{i}.txt" for i in range(8)])
    r = vp_env.run("true", input="")
    assert r.returncode == 0, r.stderr
    assert (remote_workdir / "g7.txt").exists()


def _answer_on_a_terminal(env: VpEnv, answer: bytes, *args: str) -> tuple[int, bytes]:
    """Run vp on a terminal; answer its upload question once it is asked."""
    return env.on_a_terminal(*args, answer=answer, when=b"Upload it?")


def test_on_a_terminal_the_big_first_upload_is_a_question(
    vp_env: VpEnv, ssh_host: SshHost, remote_workdir: Path
) -> None:
    _unconfigured(vp_env, ssh_host, remote_workdir, "confirm_files = 5\n")
    _tree(vp_env.project, [f"f{i}.txt" for i in range(8)])
    code, seen = _answer_on_a_terminal(vp_env, b"n", "true")
    assert code == 2 and b"8 files" in seen and b"not uploading" in seen, seen
    assert not remote_workdir.exists()
    code, seen = _answer_on_a_terminal(vp_env, b"y", "true")
    assert code == 0, seen
    assert (remote_workdir / "f7.txt").exists()


def test_a_git_checkout_or_a_configured_threshold_is_not_asked(
    vp_env: VpEnv, ssh_host: SshHost, remote_workdir: Path
) -> None:
    _unconfigured(vp_env, ssh_host, remote_workdir, "confirm_files = 5\n")
    _tree(vp_env.project, [f"f{i}.txt" for i in range(8)])
    (vp_env.project / ".git").mkdir()
    assert vp_env.run("--sync-only", input="").returncode == 0
    # bytes count too; 0 turns a check off
    _unconfigured(
        vp_env, ssh_host, remote_workdir / "b", "confirm_files = 0\nconfirm_gb = 0.00000001\n"
    )
    (vp_env.project / ".git").rmdir()
    r = vp_env.run("sync", input="")
    assert r.returncode == 2 and "vp --yes sync" in r.stderr, r.stderr
    assert vp_env.run("--yes", "sync", input="").returncode == 0
    assert (remote_workdir / "b" / "f7.txt").exists()


def test_confirm_thresholds_are_validated(vp_env: VpEnv) -> None:
    vp_env.write_config("[sync]\nconfirm_files = -1\n")
    r = vp_env.run("--sync-only")
    assert r.returncode == 2 and "confirm_files" in r.stderr and "vp.toml" in r.stderr, r.stderr
    vp_env.write_config('[sync]\nconfirm_gb = "big"\n')
    r = vp_env.run("--sync-only")
    assert r.returncode == 2 and "confirm_gb" in r.stderr, r.stderr


def test_secret_files_are_never_uploaded(ssh_project: VpEnv, remote_workdir: Path) -> None:
    _tree(ssh_project.project, [*SECRETS, "train.py", ".config/app.yaml", "keys.txt"])
    r = ssh_project.run("true")
    assert r.returncode == 0, r.stderr
    assert (remote_workdir / "train.py").exists()
    assert (remote_workdir / ".config" / "app.yaml").exists()
    assert (remote_workdir / "keys.txt").exists()
    sent = [s for s in SECRETS if (remote_workdir / s).exists()]
    assert sent == []


def test_the_walk_never_follows_a_linked_directory_out_of_the_project(
    ssh_project: VpEnv, remote_workdir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    _tree(outside, ["private.txt"])
    (ssh_project.project / "escape").symlink_to(outside)
    (ssh_project.project / "proc").symlink_to("/proc")
    assert ssh_project.run("true").returncode == 0
    assert os.readlink(remote_workdir / "escape") == str(outside)  # the link, not its files
    assert not (remote_workdir / "escape").resolve().is_relative_to(remote_workdir)
    assert not any(p.name == "private.txt" for p in remote_workdir.rglob("*"))


# -- item 10: names rsync would read as comments ---------------------------------------------

COMMENT_NAMES = ["#notes.txt", ";x", "#", "sub/#y", "-rf", "- q"]


def test_names_starting_with_hash_or_semicolon_are_uploaded(
    ssh_project: VpEnv, remote_workdir: Path
) -> None:
    _tree(ssh_project.project, COMMENT_NAMES)
    r = ssh_project.run("true")
    assert r.returncode == 0, r.stderr
    for name in COMMENT_NAMES:
        assert (remote_workdir / name).read_text() == name, name
    (ssh_project.project / "#notes.txt").unlink()
    assert ssh_project.run("true").returncode == 0
    assert not (remote_workdir / "#notes.txt").exists()
    # and results with such names come back
    assert ssh_project.run("sh", "-c", "echo r > '#out'; echo s > ';out'").returncode == 0
    assert (ssh_project.project / "#out").read_text() == "r\n"
    assert (ssh_project.project / ";out").read_text() == "s\n"


def test_names_starting_with_hash_or_semicolon_go_up_by_tar(vp_env: VpEnv, tmp_path: Path) -> None:
    host = _NoRsyncHost(tmp_path / "norsync-host")
    host.start()
    try:
        remote = tmp_path / "remote"
        vp_env.use_ssh_host(host, remote)
        _tree(vp_env.project, COMMENT_NAMES)
        r = vp_env.run("true")
        assert r.returncode == 0, r.stderr
        for name in COMMENT_NAMES:
            assert (remote / name).read_text() == name, name
        (vp_env.project / ";x").unlink()
        assert vp_env.run("true").returncode == 0
        assert not (remote / ";x").exists()
        assert vp_env.run("sh", "-c", "echo r > '#out'").returncode == 0
        assert (vp_env.project / "#out").read_text() == "r\n"
    finally:
        host.close()


# -- the ignore prefilter fails closed --------------------------------------------------------


def test_prefilter_falls_back_to_pathspec_never_to_ignoring_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """If pathspec's private `pattern.regex` changes shape, the prefilter is skipped, and
    every decision is pathspec's own: `.env` stays excluded."""
    real = IgnoreRules.for_project(tmp_path)
    assert real._prefilter is not None
    # force the fallback at the seam: the regex of no pattern can be read
    monkeypatch.setattr(ignore, "_pattern_regex", lambda _pattern: None)
    rules = IgnoreRules.for_project(tmp_path)
    assert rules._prefilter is None
    for name in (".env", ".ssh/", "sub/.env", "id_rsa", ".thunder/"):
        assert rules.ignored(name.rstrip("/"), is_dir=name.endswith("/")), name
    assert not rules.ignored("train.py")
    _tree(tmp_path, [".env", "train.py", ".kube/config"])
    assert sorted(rules.walk(tmp_path)) == ["train.py"]


def test_prefilter_is_skipped_when_a_regex_is_not_a_compiled_pattern(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ignore, "_pattern_regex", lambda _pattern: "^\\.env$")
    rules = IgnoreRules([".env", "*.log"])
    assert rules._prefilter is None
    assert rules.ignored(".env") and rules.ignored("a/b.log") and not rules.ignored("x.py")


def test_the_walk_never_descends_into_a_kernel_filesystem(
    ssh_project: VpEnv, remote_workdir: Path
) -> None:
    """/proc bind-mounted (or mounted) inside the project: its files are skipped, the rest
    goes up. vp runs in a private mount namespace so the mount is gone with it."""
    import subprocess

    from tests.conftest import VP

    if shutil.which("unshare") is None or os.geteuid() != 0:
        require(False, "needs root and unshare to mount /proc")
    p = ssh_project.project
    _tree(p, ["train.py", "kproc/.keep"])
    script = 'mount -t proc proc kproc && exec "$0" "$@"'
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, *VP, "true"],
        cwd=p,
        env=ssh_project.env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (remote_workdir / "train.py").exists()
    assert not (remote_workdir / "kproc" / "self").exists()
    assert not (remote_workdir / "kproc" / "meminfo").exists()
