"""Shared set-up for the benchmarks: a real sshd test host (tests/sshhost.py), optionally
behind a delaying TCP proxy (tests/tcpdelay.py) to model a WAN round trip, an isolated
HOME/XDG environment for `vp` (like tests/conftest.py), a project pointing at the host
through an ~/.ssh/config alias, and a raw ssh ControlMaster of our own for the baselines.

Not a test module: nothing here is collected by pytest.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.sshhost import SshHost  # noqa: E402
from tests.tcpdelay import DelayProxy  # noqa: E402

PYTHON = sys.executable
VP = [PYTHON, "-m", "vp"]
ALIAS = "vpbench"


def parse_args(description: str, reps: int) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument(
        "--delay-ms",
        type=float,
        default=0,
        help="one-way latency added by a TCP proxy in front of sshd (25 = 50 ms round trip)",
    )
    ap.add_argument("--reps", type=int, default=reps, help=f"repetitions (default {reps})")
    return ap.parse_args()


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def interleaved(cases: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    """Time each case `reps` times, alternating cases (and their order) every round, so slow
    drift of the machine hits every side alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for i in range(reps):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            t0 = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def check(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        out = proc.stdout.decode(errors="replace") if isinstance(proc.stdout, bytes) else ""
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else ""
        raise SystemExit(f"{what} failed ({proc.returncode}):\n{out}\n{err}")
    return proc


def isolated_env(home: Path, tmp: Path) -> dict[str, str]:
    """The environment of one user's machine under `home`, like tests/conftest.py's vp_env."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VP_", "XDG_", "VAST_", "RUNPOD_", "TNR_", "AWS_", "GOOGLE_"))
    }
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".local/state"),
        XDG_DATA_HOME=str(home / ".local/share"),
        PYTHONUNBUFFERED="1",
        # Measure what an installed vp costs: byte-compiled modules, cached after the
        # warm-up call (in our tmp dir, so the repo gets no __pycache__ from us).
        PYTHONPYCACHEPREFIX=str(tmp / "pycache"),
        # the bench's own project names its own test host: the user's, trusted (vp/trust.py)
        VP_TRUSTED_DIRS=str(tmp),
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("SSH_AUTH_SOCK", None)
    return env


class Bench:
    """One isolated user machine talking to one sshd test host (optionally via a delay)."""

    def __init__(self, delay_ms: float = 0) -> None:
        self.delay_ms = delay_ms
        self.tmp = Path(tempfile.mkdtemp(prefix="vpbench-"))
        self.host = SshHost(self.tmp / "host")
        self.proxy: DelayProxy | None = None
        self.home = self.tmp / "home"
        self.project = self.tmp / "proj"
        self.remote = self.tmp / "remote"  # host-side dirs (the test host shares our disk)
        self.raw_socket = str(self.tmp / "raw.sock")
        self.known_hosts = self.tmp / "raw_known_hosts"
        self.env: dict[str, str] = {}
        self._workdir_n = 0

    # -- lifecycle
    def __enter__(self) -> Bench:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.host.start()
        port = self.host.port
        if self.delay_ms:
            self.proxy = DelayProxy(self.host.address, self.host.port, self.delay_ms)
            self.proxy.start()
            port = self.proxy.port
        for d in (self.home, self.project, self.remote):
            d.mkdir(parents=True)
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        self.ssh_config = ssh_dir / "config"
        self.ssh_config.write_text(
            f"Host {ALIAS}\n"
            f"    HostName 127.0.0.1\n"
            f"    Port {port}\n"
            f"    User {self.host.user}\n"
            f"    IdentityFile {self.host.client_key}\n"
            f"    IdentitiesOnly yes\n"
        )
        env = isolated_env(self.home, self.tmp)
        self.env = env
        self.set_workdir(self.remote / "ws")
        self._start_raw_master()

    def close(self) -> None:
        for sock in [self.raw_socket, *self.vp_sockets()]:
            if os.path.exists(sock):
                subprocess.run(
                    [*self.raw_ssh_base(sock), "-O", "exit", ALIAS],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
        cdir = self.vp_control_dir()
        if self.proxy is not None:
            # Connections still open as the masters exit are cancelled: not worth a traceback.
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            self.proxy.close()
        self.host.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if cdir:
            shutil.rmtree(cdir, ignore_errors=True)

    # -- vp
    def set_workdir(self, workdir: Path) -> None:
        (self.project / "vp.toml").write_text(
            "[project]\n"
            'name = "bench"\n\n'
            "[host]\n"
            'platform = "ssh"\n\n'
            "[ssh]\n"
            f'host = "{ALIAS}"\n\n'
            "[sync]\n"
            f'workdir = "{workdir}"\n'
        )

    def fresh_workdir(self) -> Path:
        self._workdir_n += 1
        return self.remote / f"ws{self._workdir_n}"

    def vp(
        self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*VP, *args],
            cwd=cwd or self.project,
            env=env or self.env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )

    def vp_control_dir(self) -> str | None:
        if not self.env:
            return None
        code = "from vp import paths; print(paths.control_dir())"
        proc = subprocess.run([PYTHON, "-c", code], env=self.env, capture_output=True, text=True)
        return proc.stdout.strip() or None

    def vp_sockets(self) -> list[str]:
        cdir = self.vp_control_dir()
        if not cdir:
            return []
        # ssh's sockets only: the control dir also holds project watchers' dirs (w-*)
        return [
            p
            for p in glob.glob(os.path.join(cdir, "*"))
            if not p.endswith(".lock") and stat.S_ISSOCK(os.lstat(p).st_mode)
        ]

    # -- raw ssh baseline
    def raw_ssh_base(self, control_path: str | None = None) -> list[str]:
        return [
            "ssh",
            "-F",
            str(self.ssh_config),
            "-o",
            f"ControlPath={control_path or self.raw_socket}",
            "-o",
            "ControlMaster=no",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ]

    def _start_raw_master(self) -> None:
        argv = [
            "ssh",
            "-o",
            "ControlMaster=yes",
            "-o",
            "ControlPersist=600",
            *self.raw_ssh_base()[1:],
            "-N",
            "-f",
            ALIAS,
        ]
        check(
            subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=60),
            "raw ssh master",
        )

    def raw_ssh(self, *command: str, control_path: str | None = None):
        return subprocess.run(
            [*self.raw_ssh_base(control_path), ALIAS, *command],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )

    def raw_script(self, script: str, control_path: str | None = None):
        """Feed `script` to `sh -s` on the host, the way vp's transport does."""
        return subprocess.run(
            [*self.raw_ssh_base(control_path), "-T", ALIAS, "sh -s"],
            input=script.encode(),
            capture_output=True,
            timeout=120,
        )

    def raw_rsync(self, src: Path, dest: Path, control_path: str | None = None):
        ssh = shlex.join(self.raw_ssh_base(control_path))
        return subprocess.run(
            ["rsync", "-a", "-e", ssh, f"{src}/", f"{ALIAS}:{dest}/"],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )

    # -- sshd log
    def log_size(self) -> int:
        return self.host.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.host.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


def count_sessions(log: str) -> tuple[int, int]:
    """(ssh sessions started, new ssh connections authenticated) in an sshd VERBOSE log."""
    sessions = sum(1 for line in log.splitlines() if "Starting session:" in line)
    logins = sum(1 for line in log.splitlines() if "Accepted publickey" in line)
    return sessions, logins


def header(title: str, args: argparse.Namespace, host: bool = True) -> None:
    rtt = f"{2 * args.delay_ms:.0f} ms round trip via DelayProxy" if args.delay_ms else "loopback"
    rtt = rtt if host else "no host"
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"== {title}  ({rtt}; {args.reps} reps, {os.cpu_count()} cores, load {load})")
