"""Every `vp ...` command vp tells a person to type is one that parses (issue #12 item 1).

The commands are read from vp's own source: every string literal (and f-string) outside
docstrings and `help=`/`epilog=` texts that names a vp command. Each must have a row in HINTS,
which says how to run it here (placeholders filled in; on the local platform, a real sshd
host or the vast.ai emulator); the row is then executed through the real CLI and must not end
in a usage error. A new hint without a row fails `test_every_hint_in_the_source_has_a_row`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import vp
from tests.conftest import VpEnv
from vp.cli import SUBCOMMANDS
from vp.errors import EXIT_USAGE

try:
    from tests.emulators.vast import vast_emulator  # noqa: F401 - fixture
except ImportError:  # tests/ itself is on sys.path
    from emulators.vast import vast_emulator  # type: ignore[no-redef]  # noqa: F401

pytestmark = pytest.mark.timeout(180)

SOURCE = Path(vp.__file__).resolve().parent
# Words that end a command inside a sentence ("vp ls shows your hosts").
STOP_WORDS = {"lists", "shows", "the", "and", "to", "for", "or", "is", "with", "it", "deletes"}
STOP_WORDS |= {"this", "writes", "keeps", "from", "on", "in", "at", "fetches"}

# hint as written in the source -> (how to run it here, where: "local", "local-setup", "ssh" or
# "vast").
# {run_id} is a real detached run made first.
HINTS: dict[str, tuple[list[str], str]] = {
    "vp python train.py": (["python3", "-c", "pass"], "local"),
    "vp cleanup": (["cleanup"], "vast"),
    "vp cleanup --yes": (["cleanup", "--yes"], "vast"),
    "vp cleanup --orphans": (["cleanup", "--orphans"], "vast"),
    "vp cleanup --orphans --yes": (["cleanup", "--orphans", "--yes"], "vast"),
    "vp stop": (["stop"], "vast"),
    "vp ssh": (["ssh", "--", "true"], "local"),  # a bare `vp ssh` would wait for a person
    "vp config set --user {dotted} VALUE": (
        ["config", "set", "--user", "vast.api_key", "-"],
        "local",
    ),
    "vp ls": (["ls"], "vast"),
    "vp ls -p vast": (["ls", "-p", "vast"], "vast"),
    "vp ls -p thunder": (["ls", "-p", "thunder"], "local"),  # no key: an error, not a usage one
    "vp up": (["up"], "local"),
    "vp start": (["start"], "vast"),
    "vp down": (["down"], "vast"),
    "vp down --yes": (["down", "--yes"], "vast"),
    "vp init --docker": (["init", "--docker"], "local"),
    "vp -v offers": (["-v", "offers"], "vast"),
    "vp offers -p {platform}": (["offers", "-p", "vast"], "vast"),
    "vp offers -p vast": (["offers", "-p", "vast"], "vast"),
    "vp offers -p {self.name}": (["offers", "-p", "vast"], "vast"),
    "vp offers -p {cfg.platform}": (["offers", "-p", "auto"], "vast"),
    "vp offers -p thunder": (["offers", "-p", "thunder"], "local"),
    "vp offers -p aws": (["offers", "-p", "aws"], "local"),
    "vp offers -p gce": (["offers", "-p", "gce"], "local"),
    "vp logs {run_id}": (["logs", "{run_id}"], "local"),
    "vp logs -f {run_id}": (["logs", "-f", "{run_id}"], "local"),
    "vp attach {run_id}": (["attach", "{run_id}"], "local"),
    # A single-node run has no node 1: an error, not a usage one.
    "vp logs {run_id} --node 1": (["logs", "{run_id}", "--node", "1"], "local"),
    "vp logs {run_id} --node {failed[0]}": (["logs", "{run_id}", "--node", "1"], "local"),
    "vp tunnel PORT": (["tunnel", "8888"], "local"),
    "vp tunnel 8888": (["tunnel", "8888"], "local"),
    "vp ssh-config": (["ssh-config"], "ssh"),
    "vp ssh-config --remove": (["ssh-config", "--remove"], "ssh"),
    "vp runs": (["runs"], "local"),
    "vp runs --all": (["runs", "--all"], "local"),
    "vp sync": (["sync"], "local"),
    "vp download outputs/": (["download", "outputs/"], "local"),
    "vp download PATH": (["download", "outputs/"], "local"),
    "vp status": (["status"], "local"),
    "vp config set --user {dotted} -": (["config", "set", "--user", "vast.api_key", "-"], "local"),
    "vp config set --user {provider}.{cred.key} -": (
        ["config", "set", "--user", "thunder.token", "-"],
        "local",
    ),
    "vp config set --user {section}.{key} VALUE": (
        ["config", "set", "--user", "vast.url", "https://vast.example"],
        "local",
    ),
    "vp config set --user docker.dockerfile /ABSOLUTE/PATH": (
        ["config", "set", "--user", "docker.dockerfile", "/tmp/Dockerfile"],
        "local",
    ),
    "vp config set --user docker.registry HOST": (
        ["config", "set", "--user", "docker.registry", "127.0.0.1:5000"],
        "local",
    ),
    "vp down {host.id}": (["down", "--yes", "12345"], "vast"),
    "vp init": (["init"], "local"),
    "vp config set host.gpu NAME": (["config", "set", "host.gpu", "RTX4090"], "local"),
    "vp secret set {name}": (["secret", "set", "HF_TOKEN"], "local"),
    "vp secret set {first}": (["secret", "set", "HF_TOKEN"], "local"),
    "vp secret set": (["secret", "set", "HF_TOKEN"], "local"),
    "vp secret set NAME": (["secret", "set", "HF_TOKEN"], "local"),
    "vp secret ls": (["secret", "ls"], "local"),
    "vp trust": (["trust"], "ssh"),
    "vp trust --forget": (["trust", "--forget"], "ssh"),
    "vp setup": (["setup"], "local-setup"),
    "vp setup --force runs": (["setup", "--force"], "local-setup"),
}


def _strings(tree: ast.AST):
    """(line, text) of every string a user may see: f-string parts become {expr}."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant):
                skip.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.keyword) and node.arg in ("help", "epilog"):
            skip.update(id(sub) for sub in ast.walk(node.value))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values)
            yield (
                node.lineno,
                "".join(
                    v.value if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}"  # type: ignore[attr-defined]
                    for v in node.values
                ),
            )
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def hints_in_source() -> dict[str, str]:
    """Each `vp CMD ...` named in vp's messages -> where it is written."""
    found: dict[str, str] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        if path.name == "helptext.py":  # generated copies of the help screens, scanned at source
            continue
        for line, text in _strings(ast.parse(path.read_text())):
            for m in re.finditer(r"(?<![\w/-])vp((?: [^\s`,;()?]+)+)", text):
                words: list[str] = []
                for word in m.group(1).split():
                    if word in STOP_WORDS:
                        break
                    words.append(word)
                first = next((w for w in words if not w.startswith("-")), "")
                if first in SUBCOMMANDS or first == "python":
                    found.setdefault(" ".join(["vp", *words]), f"{path.name}:{line}")
    return found


def test_every_hint_in_the_source_has_a_row() -> None:
    found = hints_in_source()
    assert "vp offers -p {platform}" in found  # the scan itself works
    missing = {hint: where for hint, where in found.items() if hint not in HINTS}
    assert not missing, f"add these to HINTS: {missing}"


def _place(where: str, request, vp_env: VpEnv, tmp_path: Path) -> VpEnv:
    """`local`: a project on the local platform; `ssh`: one on a real sshd host; `vast`: one on
    vast.ai (the emulator), no host yet; `local-setup`: a local project with a setup step."""
    if where == "local-setup":
        vp_env.write_config('[setup]\nrun = "true"\n')
    if where == "ssh":
        return request.getfixturevalue("ssh_project")
    if where == "vast":
        emulator = request.getfixturevalue("vast_emulator")
        vp_env.env.update(VAST_URL=emulator.url, VAST_API_KEY=emulator.api_key)
        vp_env.write_config('[project]\nname = "proj"\n[host]\nplatform = "vast"\ngpu = "4090"\n')
    return vp_env


@pytest.mark.parametrize("hint", sorted(HINTS))
def test_hint_parses_and_runs(hint: str, request, vp_env: VpEnv, tmp_path: Path) -> None:
    argv, where = HINTS[hint]
    env = _place(where, request, vp_env, tmp_path)
    if "{run_id}" in argv:
        r = env.run("--detach", "sh", "-c", "echo hi")
        assert r.returncode == 0, r.stderr
        argv = [a.replace("{run_id}", r.stdout.strip()) for a in argv]
    args = argv
    tunnel = args[0] == "tunnel"
    if tunnel:  # it forwards until Ctrl-C: parsed and started is enough
        proc = env.popen(*args)
        try:
            _out, err_b = proc.communicate(timeout=5)
            err, code = err_b.decode(), proc.returncode
        except Exception:  # noqa: BLE001 - still forwarding: it parsed
            proc.terminate()
            proc.communicate()
            return
    else:
        r = env.run(*args, input="secret-value\n", extra_env={"AWS_EC2_METADATA_DISABLED": "true"})
        err, code = r.stderr, r.returncode
    assert "see vp --help" not in err, (hint, err)  # click's parser errors
    assert "No such option" not in err and "Traceback" not in err, (hint, err)
    assert code != EXIT_USAGE, (hint, err)
