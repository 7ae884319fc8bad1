"""The embedded `local` platform: the same pipeline on this machine, with no configuration."""

from __future__ import annotations

import signal
from pathlib import Path

import vp.commands  # noqa: F401  - registers every subcommand, as `vp` itself does
from tests.conftest import VpEnv
from vp.cli import normalize_argv


def test_fresh_install_runs_hello_locally(vp_env: VpEnv) -> None:
    r = vp_env.run("python3", "-c", "print('hello')")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello\n"
    workspaces = vp_env.home / ".local/share/vp/local/workspaces"
    assert [p.name.startswith("proj-") for p in workspaces.iterdir()] == [True]


def test_local_results_come_back_and_exit_code(vp_env: VpEnv) -> None:
    (vp_env.project / "in.txt").write_text("data\n")
    r = vp_env.run("sh", "-c", "cat in.txt; tr a-z A-Z < in.txt > out.txt; exit 3")
    assert r.returncode == 3
    assert r.stdout == "data\n"
    assert (vp_env.project / "out.txt").read_text() == "DATA\n"
    # the run happened in the workspace copy, not in the project itself
    assert "vp/local/workspaces" in vp_env.run("pwd").stdout


def test_local_ctrl_c_and_detach(vp_env: VpEnv) -> None:
    proc = vp_env.popen("sh", "-c", "echo ready; sleep 30")
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    proc.stdout.read()
    assert proc.wait(timeout=30) == 130
    r = vp_env.run("--detach", "sh", "-c", "echo bg")
    run_id = r.stdout.strip()
    f = vp_env.run("logs", "-f", run_id)
    assert f.stdout == "bg\n" and f.returncode == 0


def test_runs_history_lists_runs(vp_env: VpEnv) -> None:
    vp_env.run("sh", "-c", "exit 2")
    r = vp_env.run("runs")
    assert r.returncode == 0
    header, row = r.stdout.splitlines()[:2]
    assert header.split() == [
        "ID", "COMMAND", "HOST", "STARTED", "DURATION", "EXIT", "STATUS", "ATTEMPT", "COST", "$"
    ]  # fmt: skip
    assert "local" in row and " 2 " in f" {row} "
    import re

    # a local ISO time and a human duration with its unit, not epoch seconds
    assert re.search(r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d +\d+\.\ds ", row), row


def test_argv_normalisation() -> None:
    assert normalize_argv(["python", "train.py", "--epochs", "3"]) == [
        "run",
        "--",
        "python",
        "train.py",
        "--epochs",
        "3",
    ]
    assert normalize_argv(["-p", "runpod", "nvidia-smi"]) == [
        "-p",
        "runpod",
        "run",
        "--",
        "nvidia-smi",
    ]
    assert normalize_argv(["--detach", "run", "-v", "x", "-y"]) == [
        "--detach",
        "-v",
        "run",
        "--",
        "x",
        "-y",
    ]
    assert normalize_argv(["runs"]) == ["runs"]
    assert normalize_argv(["--", "ls", "-la"]) == ["run", "--", "ls", "-la"]
    assert normalize_argv(["--platform=ssh", "ls"]) == ["--platform=ssh", "ls"]


def _modules_loaded(*argv: str) -> list[str]:
    """The vp command modules and heavy libraries `vp ARGV` imports, run in-process."""
    import subprocess
    import sys

    code = (
        f"import sys; sys.argv=['vp', *{list(argv)!r}]\n"
        "from vp.cli import main\n"
        "try:\n    main()\nexcept SystemExit: pass\n"
        "print('LOADED', sorted(m for m in sys.modules if m.startswith('vp.commands.')"
        " or m in ('typer.rich_utils', 'vp.lifecycle', 'vp.run')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("LOADED "))
    import ast

    return ast.literal_eval(line[len("LOADED ") :])


def test_dispatch_imports_only_the_command_it_runs(vp_env: VpEnv) -> None:
    """The registry (vp.commands.COMMANDS) lets `vp --help` list every command without
    importing one, and `vp ls` import only the module that defines `ls`."""
    assert _modules_loaded("--help") == ["vp.commands.context"]
    assert _modules_loaded("ls", "--help") == [
        "vp.commands.context",
        "vp.commands.hosts",
        "vp.lifecycle",
        "vp.run",
    ]
    assert "vp.commands.hosts" not in _modules_loaded("--version")


def test_help_is_fast_to_import(vp_env: VpEnv) -> None:
    """`vp --help` must not import the cloud SDKs (2-3 s each)."""
    r = vp_env.run("-c", "x", cwd=Path("/"))  # unknown option: still no SDK import needed
    assert r.returncode == 2
    import subprocess
    import sys

    code = (
        "import sys; sys.argv=['vp','--help']\n"
        "from vp.cli import main\n"
        "try:\n    main()\nexcept SystemExit: pass\n"
        "heavy=[m for m in ('runpod','vastai','boto3','google.cloud','docker','rich.progress')"
        " if m in sys.modules]\nprint('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "HEAVY []" in out


def test_sync_only_alone_syncs(vp_env: VpEnv) -> None:
    (vp_env.project / "a.txt").write_text("a")
    r = vp_env.run("--sync-only")
    assert r.returncode == 0, r.stderr
    assert "Usage" not in r.stdout
    workspaces = list((vp_env.home / ".local/share/vp/local/workspaces").iterdir())
    assert (workspaces[0] / "a.txt").read_text() == "a"


def test_subcommand_list_matches_the_registered_commands() -> None:
    from vp.cli import SUBCOMMANDS, registered_commands

    assert set(registered_commands()) == SUBCOMMANDS


def test_vp_never_syncs_its_own_folders(vp_env: VpEnv) -> None:
    """A project at $HOME (allowed only with a vp.toml there) holds vp's state and the local
    workspace: never copied into itself."""
    home_project = vp_env.home
    (home_project / "main.py").write_text("print('hi')")
    (home_project / "vp.toml").write_text("")
    for _ in range(2):
        r = vp_env.run("python3", "main.py", cwd=home_project)
        assert r.returncode == 0 and r.stdout == "hi\n", r.stderr
    [workspace] = (home_project / ".local/share/vp/local/workspaces").iterdir()
    assert sorted(p.name for p in workspace.iterdir()) == ["main.py", "vp.toml"]


def test_global_options_work_before_and_after_a_subcommand(vp_env: VpEnv) -> None:
    """`vp runs -o json` is `vp -o json runs`, for every global option (issue #12 item 1)."""
    import json

    assert vp_env.run("sh", "-c", "exit 0").returncode == 0
    other = vp_env.project / "other.toml"
    other.write_text('[project]\nname = "other"\n')
    for before, after in [
        (["-o", "json", "runs"], ["runs", "-o", "json"]),
        (["--output", "json", "runs"], ["runs", "--output=json"]),
        (["-p", "local", "-o", "json", "ls"], ["ls", "-p", "local", "-o", "json"]),
        (
            ["--platform", "local", "--host", "x", "-o", "json", "ls"],
            ["ls", "--host", "x", "--output", "json", "--platform", "local"],
        ),
        (["-q", "-o", "json", "runs"], ["runs", "-q", "-o", "json"]),
        (["-v", "-o", "json", "runs"], ["runs", "--verbose", "-o", "json"]),
        (
            ["--config", str(other), "-o", "json", "runs"],
            ["runs", "--config", str(other), "-o", "json"],
        ),
        (["-o", "json", "config", "show"], ["config", "show", "-o", "json"]),
    ]:
        a, b = vp_env.run(*before), vp_env.run(*after)
        assert a.returncode == 0 and b.returncode == 0, (after, b.stderr)
        assert json.loads(a.stdout) == json.loads(b.stdout), after
    # --config after the subcommand is honoured: the other project has no runs
    assert json.loads(vp_env.run("runs", "--config", str(other), "-o", "json").stdout) == []
    # a subcommand's own option of the same name stays its own: `init --platform`
    r = vp_env.run("init", "--platform", "ssh", "-q")
    assert r.returncode == 0, r.stderr
    assert 'platform = "ssh"' in (vp_env.project / "vp.toml").read_text()


def test_options_after_a_command_to_run_are_the_commands(vp_env: VpEnv) -> None:
    r = vp_env.run("python3", "-c", "import sys; print(sys.argv[1:])", "-o", "out", "-v", "-p", "x")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "['-o', 'out', '-v', '-p', 'x']\n"
    r = vp_env.run("-q", "run", "-o", "json", "sh", "-c", "echo $0 $1", "-o", "x")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "-o x\n"
    r = vp_env.run("ssh", "--", "echo", "-o", "x", "-p")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "-o x -p\n"


def test_extras_are_one_per_cloud_sdk_and_all_is_only_the_clouds() -> None:
    """Issue #12 item 10: `[all]` must not pull test or development tools, and the README's
    table names the extra each platform needs."""
    import re
    import tomllib

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    clouds = {"vast", "runpod", "aws", "gce"}  # thunder speaks REST over urllib3: no SDK
    assert extras["all"] == [f"vp-runner[{','.join(sorted(clouds, key=list(extras).index))}]"]
    assert clouds <= set(extras)
    core = " ".join(project["dependencies"])
    for dev_only in ("pytest", "hypothesis", "ruff", "moto", "fastapi", "uvicorn"):
        assert dev_only not in core and dev_only not in str(extras["all"])
    readme = (root / "README.md").read_text()
    for cloud in clouds:
        assert re.search(rf"\| `{cloud}` \| `pip install 'vp-runner\[{cloud}\]'`", readme), cloud
