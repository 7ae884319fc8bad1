"""Multi-node runs (`vp --nodes N CMD`, `[host] nodes = N`): one command on N hosts at once, for
an engine that already does the distributed work (torchrun, Ray). vp only provisions, syncs,
launches and collects; it invents no protocol of its own.

- Hosts: N of the project's spec on one platform, acquired in parallel and all-or-nothing:
  when one cannot be had, the ones this call created are destroyed (the platform's destroy,
  and vp's state forgets them). On `ssh`, `[ssh] hosts` lists the machines, rank 0 first.
  A node of rank R >= 1 is labelled as the project's with its rank on every provider
  (vp/platforms/cloud.py node_rank), so later runs take each rank's host again, and `vp ls`,
  `vp stop` / `vp down` (no host named) and the orphan sweep see every rank.
- Recovery: when the provider says a node's host is gone, `Preempted` names the lost hosts;
  the next attempt (vp/run.py, vp/recover.py) makes new ones for those ranks only.
- Each rank is an ordinary detached run (vp/remote.py, the same launch script) with its own
  run id (`RUN` for rank 0, `RUN-1`, `RUN-2`, ...) and the environment below, shipped on stdin
  like any [env] value (never argv). `$NNODES`, `$NODE_RANK`, `$MASTER_ADDR`, `$MASTER_PORT`
  (and the `VP_` names) in a command given as several words are replaced per node by vp; a
  command given as one string reads them from the remote shell's environment.
- Rank 0 streams as a single run does; the others stay in their logs (`vp logs RUN --node R`)
  or, with `--all-logs`, are shown prefixed `[node1] `. The exit status is the first non-zero
  one across ranks (in the order they ended). When a rank fails, the others are stopped after
  `STOP_GRACE` seconds; Ctrl-C interrupts every rank, a second one detaches.
"""

from __future__ import annotations

import contextlib
import queue
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from vp import remote
from vp.config import Config
from vp.errors import EXIT_INTERRUPTED, HostGone, UsageError, VpError
from vp.follow import FollowResult, follow
from vp.mask import LogView
from vp.platforms import declaration
from vp.platforms.base import PENDING, RUNNING, STOPPED, Host
from vp.platforms.cloud import node_rank
from vp.state import RunRecord, State
from vp.transport import Transport
from vp.ui import UI

STOP_GRACE = 10.0  # seconds the other ranks keep running after one failed
INTERRUPT_GRACE = 20.0  # seconds to wait for every rank to end after Ctrl-C, then detach
DEFAULT_MASTER_PORT = 29500
# The names vp replaces in a command given as several words (a shell would not: each word is
# quoted for the remote shell, so `'$NODE_RANK'` typed by the user reaches it literally).
EXPANDED = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
_VAR = re.compile(r"\$(?:\{([A-Z_]+)\}|([A-Z_]+))")

T = TypeVar("T")


@dataclass
class NodeFacts:
    """What a node says about itself: the address it reaches others from, its GPUs, and (rank
    0 only) a free port for the rendezvous."""

    address: str
    gpus: int
    free_port: int | None = None


def node_count(cfg: Config, requested: int | None) -> int:
    n = requested if requested is not None else cfg.host.nodes
    if n < 1:
        raise UsageError(f"--nodes {n}: a run needs at least one node", hint="e.g. vp --nodes 2 …")
    return n


def in_parallel(fns: list[Callable[[], T]]) -> list[T | BaseException]:
    """Run each function in its own thread; every result or exception, in order."""

    def guard(fn: Callable[[], T]) -> T | BaseException:
        try:
            return fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            return exc

    with ThreadPoolExecutor(max_workers=max(1, len(fns))) as pool:
        return list(pool.map(guard, fns))


def _first_error(results: list) -> BaseException | None:
    return next((r for r in results if isinstance(r, BaseException)), None)


# ---------------------------------------------------------------------------- hosts


def acquire(cfg: Config, state: State, ui: UI, n: int) -> list[tuple[Host, Transport]]:
    """N connected hosts, rank order. All or nothing: a failure destroys what this call made."""
    kind = declaration(cfg.platform).kind
    if kind == "local":
        raise UsageError(
            "--nodes needs hosts: the local platform is this one machine",
            hint='set [host] platform (e.g. "aws") or [ssh] hosts = ["gpu1", "gpu2"]',
        )
    if cfg.platform == "auto":
        raise UsageError(
            "--nodes needs one platform, not auto",
            hint="pass -p PLATFORM or set [host] platform",
        )
    if kind == "ssh":
        return _ssh_hosts(cfg, state, n)
    return _cloud_hosts(cfg, state, ui, n)


def _ssh_hosts(cfg: Config, state: State, n: int) -> list[tuple[Host, Transport]]:
    from vp.lifecycle import transport_for
    from vp.platforms.ssh import host_for

    listed = list(cfg.ssh.hosts)
    if len(listed) < n:
        raise UsageError(
            f"--nodes {n} on the ssh platform needs {n} machines; [ssh] hosts lists {len(listed)}",
            hint='list them, rank 0 first: [ssh] hosts = ["gpu1", "gpu2"]',
        )

    def connect(spec: str) -> tuple[Host, Transport]:
        host = host_for(spec)
        transport = transport_for(host, cfg)
        transport.ensure()
        return host, transport

    from vp import trust

    trust.require(cfg, "ssh.hosts", listed[:n])  # before any of them is connected to
    results = in_parallel([lambda s=s: connect(s) for s in listed[:n]])
    error = _first_error(results)
    if error is not None:
        raise error
    for host, _t in results:  # type: ignore[misc]
        state.save_host(host, cfg.project)
    return results  # type: ignore[return-value]


def node_name(cfg: Config, rank: int) -> str:
    """Rank 0 is the project's usual host; rank R is `NAME-R` next to it."""
    base = cfg.host.name or f"vp-{cfg.project}"
    return base if rank == 0 else f"{base}-{rank}"


def reusable(hosts: list[Host]) -> dict[int, Host]:
    """The project's hosts a run of several nodes takes again, by rank (each provider labels a
    node with its rank; vp/platforms/cloud.py node_rank): a running one before a stopped one."""
    out: dict[int, Host] = {}
    usable = [h for h in hosts if h.status in (RUNNING, PENDING, STOPPED)]
    for host in sorted(usable, key=lambda h: h.status == STOPPED):  # stable: rank 0 first
        out.setdefault(node_rank(host), host)
    return out


def _cloud_hosts(cfg: Config, state: State, ui: UI, n: int) -> list[tuple[Host, Transport]]:
    from vp.lifecycle import create_host, forget, project_hosts, resolve_on
    from vp.offers import platform_for

    platform = platform_for(cfg)
    known = reusable(project_hosts(platform, state, cfg.project))
    created: list[Host] = []
    lock = threading.Lock()

    def one(rank: int) -> tuple[Host, Transport]:
        name = node_name(cfg, rank)
        if rank in known:  # started if stopped; by id, as GCE names its VMs NAME-SUFFIX
            return resolve_on(cfg, state, ui, platform.name, host_name=known[rank].id, create=False)
        host, transport = create_host(
            cfg, state, ui, platform, name=name, nodes_of=node_name(cfg, 0)
        )
        with lock:
            created.append(host)
        return host, transport

    results = in_parallel([lambda r=r: one(r) for r in range(n)])
    error = _first_error(results)
    if error is None:
        return results  # type: ignore[return-value]
    if created:
        ui.warn(
            f"could not get all {n} nodes; destroying the {len(created)} this run created "
            f"({', '.join(h.name for h in created)})"
        )
    for host in created:
        try:
            platform.destroy(host.id)
            forget(state, host)
        except VpError as exc:
            ui.error(
                f"could not destroy {host.name} ({host.id}) on {platform.name}: {exc.message}",
                hint=f"it stays recorded: vp down {host.id}",
            )
    raise error


# ---------------------------------------------------------------------------- facts

_FACTS = """vp_ip() { sed -n "1s/.* $1 \\([0-9.]*\\).*/\\1/p"; }
vp_a=$(ip -4 route get 192.0.2.1 2>/dev/null | vp_ip src)
[ -n "$vp_a" ] || vp_a=$(hostname -I 2>/dev/null | cut -d' ' -f1)
[ -n "$vp_a" ] || vp_a=$(ip -4 -o addr show scope global 2>/dev/null | vp_ip inet)
echo "addr $vp_a"
echo "gpus $(nvidia-smi -L 2>/dev/null | grep -c '^GPU')"
"""

# Listening sockets are in /proc/net/tcp{,6} with state 0A; the port is the hex after ':'.
_FREE_PORT = """for vp_p in $(seq {first} {last}); do
  vp_h=$(printf '%04X' "$vp_p")
  vp_l="^ *[0-9]*: [0-9A-F]*:$vp_h [0-9A-F]*:[0-9A-F]* 0A"
  if ! cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -q "$vp_l"; then
    echo "port $vp_p"; break
  fi
done
"""


def facts(transport: Transport, *, want_port: int | None = None) -> NodeFacts:
    script = _FACTS
    if want_port is not None:
        script += _FREE_PORT.format(first=want_port, last=want_port + 100)
    proc = transport.run(script, timeout=60)
    text = proc.stdout.decode(errors="replace")
    lines = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    address = lines.get("addr", "").strip()
    gpus = lines.get("gpus", "0").strip()
    port = lines.get("port", "").strip()
    return NodeFacts(
        address=address,
        gpus=int(gpus) if gpus.isdigit() else 0,
        free_port=int(port) if port.isdigit() else None,
    )


def node_addresses(platform: str, hosts: list[Host], found: list[NodeFacts]) -> list[str]:
    """The address each node is reached at by the others: its own (private) one on a provider
    whose nodes share a network, else the public one vp reaches it by."""
    private = declaration(platform).private_network
    out = []
    for host, f in zip(hosts, found, strict=True):
        out.append(f.address if private and f.address else (host.ssh_host or f.address))
    return out


def node_env(rank: int, addresses: list[str], gpus: int, port: int) -> dict[str, str]:
    n = len(addresses)
    return {
        "VP_NODE_RANK": str(rank),
        "VP_NUM_NODES": str(n),
        "VP_NODE_IPS": "\n".join(addresses),
        "VP_GPUS_PER_NODE": str(gpus),
        "MASTER_ADDR": addresses[0],
        "MASTER_PORT": str(port),
        "NODE_RANK": str(rank),
        "NNODES": str(n),
    }


def expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """`$NAME` / `${NAME}` of the node variables in each word, replaced by this node's value."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name in EXPANDED or (name.startswith("VP_") and name in env):
            return env[name]
        return m.group(0)

    return [_VAR.sub(sub, word) for word in argv]


def node_command(argv: list[str], env: dict[str, str]) -> str:
    if len(argv) == 1:  # shell text: the remote shell expands the exported variables itself
        return argv[0]
    return shlex.join(expand(argv, env))


# ---------------------------------------------------------------------------- output


class _Prefixed:
    """A binary stream that writes each line to `out` as `[nodeR] line`, whole lines only, under
    one lock, so lines of different nodes never interleave."""

    lock = threading.Lock()

    def __init__(self, out, prefix: str) -> None:
        self.out, self.prefix, self.held = out, prefix.encode(), b""

    def write(self, data: bytes) -> int:
        self.held += data
        *lines, self.held = self.held.split(b"\n")
        if lines:
            with self.lock:
                self.out.write(b"".join(self.prefix + line + b"\n" for line in lines))
                self.out.flush()
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.held:
            self.write(b"\n")


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


# ---------------------------------------------------------------------------- the run


@dataclass
class Rank:
    rank: int
    run_id: str
    host: Host
    transport: Transport
    workdir: str
    script: str = ""

    @property
    def workdir_sh(self) -> str:
        return self.transport.workdir_sh(self.workdir)


def rank_run_id(run_id: str, rank: int) -> str:
    return run_id if rank == 0 else f"{run_id}-{rank}"


def launch(ranks: list[Rank]) -> None:
    """Start every rank's run; if one cannot start, stop the ones that did."""

    def start(r: Rank) -> None:
        proc = r.transport.run(r.script, timeout=60)
        if remote.STARTED not in proc.stdout:
            detail = proc.stderr.decode(errors="replace").strip().splitlines()
            raise VpError(
                f"could not start node {r.rank}'s run on {r.transport.label}"
                + (f": {detail[-1]}" if detail else "")
            )

    results = in_parallel([lambda r=r: start(r) for r in ranks])
    error = _first_error(results)
    if error is not None:
        stop(ranks, grace=2)
        raise error


def stop(ranks: list[Rank], grace: float = 10.0) -> None:
    """SIGTERM each rank's process group, SIGKILL after `grace` (vp/remote.py kill_script)."""

    def kill(r: Rank) -> None:
        script = remote.kill_script(r.transport.runs_dir_sh, r.run_id, grace=grace)
        r.transport.run(script, timeout=grace + 60)

    in_parallel([lambda r=r: kill(r) for r in ranks])


def interrupt(ranks: list[Rank]) -> None:
    def send(r: Rank) -> None:
        r.transport.run(remote.signal_script(r.transport.runs_dir_sh, r.run_id, "INT"), timeout=20)

    in_parallel([lambda r=r: send(r) for r in ranks])


@dataclass
class Outcome:
    results: dict[int, FollowResult]
    exit_code: int
    interrupted: bool = False
    detached: bool = False
    # Ranks whose host the provider says is gone or stopped (preempted), and its words.
    gone: dict[int, str] = field(default_factory=dict)


class _CtrlC:
    """Count Ctrl-Cs in the main thread; the waiting loop reads the count (no I/O in here)."""

    def __init__(self) -> None:
        self.count = 0
        self._old = None

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, _signum, _frame) -> None:
        self.count += 1

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def watch(
    ranks: list[Rank],
    ui: UI,
    views: dict[int, LogView],
    *,
    reconnect_timeout: float,
    host_gone: Callable[[Host], str | None],
    stop_grace: float = STOP_GRACE,
    ctrl_c: _CtrlC | None = None,
) -> Outcome:
    """Follow every rank until all have ended, stopping the rest when one fails."""
    done: queue.Queue = queue.Queue()

    def follow_one(r: Rank) -> None:
        try:
            script = remote.follow_script(r.transport.runs_dir_sh, r.run_id, 0, r.workdir_sh)
            result = follow(
                r.transport,
                r.run_id,
                r.workdir_sh,
                script,
                ui,
                reconnect_timeout=reconnect_timeout,
                launched=True,
                interruptible=False,
                host_gone=lambda: host_gone(r.host),
                view=views[r.rank],
            )
            done.put((r.rank, result, None))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            done.put((r.rank, None, exc))

    for r in ranks:
        threading.Thread(target=follow_one, args=(r,), daemon=True, name=f"node{r.rank}").start()
    results: dict[int, FollowResult] = {}
    gone: dict[int, str] = {}
    first_bad: int | None = None
    stop_at: float | None = None
    stopping = False
    handled = 0
    interrupt_deadline: float | None = None
    with contextlib.nullcontext(ctrl_c) if ctrl_c is not None else _CtrlC() as ctrl_c:
        while len(results) < len(ranks):
            if ctrl_c.count > handled:
                handled = ctrl_c.count
                if interrupt_deadline is not None:
                    return _detached(ranks, results, ui)
                ui.note(
                    f"Ctrl-C: interrupting the command on all {len(ranks)} nodes "
                    "(press Ctrl-C again to detach and leave them running)"
                )
                left = [r for r in ranks if r.rank not in results]
                threading.Thread(target=interrupt, args=(left,), daemon=True).start()
                interrupt_deadline = time.monotonic() + INTERRUPT_GRACE
            now = time.monotonic()
            if interrupt_deadline is not None and now > interrupt_deadline:
                ui.warn(f"the nodes did not all stop within {INTERRUPT_GRACE:.0f}s")
                return _detached(ranks, results, ui)
            if stop_at is not None and now >= stop_at and not stopping:
                stopping = True
                left = [r for r in ranks if r.rank not in results]
                ui.info(f"stopping node(s) {', '.join(str(r.rank) for r in left)}")
                threading.Thread(target=stop, args=(left,), daemon=True).start()
            try:
                rank, result, error = done.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(error, HostGone):  # the provider's word: preempted or destroyed
                gone[rank] = error.message
                ui.warn(f"node {rank}: {error.message}")
                result = FollowResult(lost=True)
            elif error is not None:
                message = error.message if isinstance(error, VpError) else str(error)
                ui.error(f"node {rank}: {message}")
                result = FollowResult(lost=True)
            results[rank] = result
            code = _code(result)
            if code != 0 and first_bad is None:
                first_bad = code
                left = len(ranks) - len(results)
                if left and interrupt_deadline is None:
                    why = f"exited {code}" if result.exit_code is not None else "was lost"
                    ui.warn(
                        f"node {rank} {why}; stopping the other {left} node(s) in {stop_grace:.0f}s"
                    )
                    stop_at = time.monotonic() + stop_grace
    interrupted = interrupt_deadline is not None
    code = EXIT_INTERRUPTED if interrupted else (first_bad if first_bad is not None else 0)
    return Outcome(results, code, interrupted=interrupted, gone=gone)


def _lost_hosts(
    ranks: list[Rank], outcome: Outcome, host_gone: Callable[[Host], str | None]
) -> dict[int, str]:
    """Rank -> why its host is gone, by the provider's word. A rank whose wrapper vanished
    without the provider having been asked (its processes died before its connection did) is
    asked about now, as a single run's is."""
    gone = dict(outcome.gone)
    if outcome.interrupted:
        return gone
    for r in ranks:
        result = outcome.results.get(r.rank)
        if r.rank in gone or result is None or not result.lost:
            continue
        try:
            why = host_gone(r.host)
        except VpError:
            why = None
        if why:
            gone[r.rank] = why
    return gone


def _code(result: FollowResult) -> int:
    if result.setup_exit is not None:
        return result.setup_exit or 1
    if result.exit_code is None:
        return 1
    return result.exit_code


def _detached(ranks: list[Rank], results: dict, ui: UI) -> Outcome:
    left = [r for r in ranks if r.rank not in results]
    ui.note(
        f"detached: {len(left)} node run(s) keep going "
        f"({', '.join(f'{r.run_id} on {r.host.name}' for r in left)}); "
        "they are listed by vp runs"
    )
    return Outcome(results, EXIT_INTERRUPTED, interrupted=True, detached=True)


def execute(
    cfg: Config,
    opts,
    ui: UI,
    state: State,
    n: int,
    *,
    attempt: int = 1,
    parent: str | None = None,
) -> int:
    """The pipeline of vp/run.py for N nodes: hosts, sync, launch, follow, results.

    Recovery (`--recover`, vp/recover.py): when the provider says a node's host was preempted
    or destroyed, the other ranks are stopped and `Preempted` names the lost hosts; the next
    attempt (`attempt`, after the lost run `parent`) takes the hosts still there again, makes
    new ones for the lost ranks and runs every rank again with VP_ATTEMPT / VP_RESUMED."""
    from vp import checkpoints, secretstore
    from vp.lifecycle import host_gone
    from vp.run import (
        Preempted,
        Workspace,
        _idle_watchdog,
        _setup_step,
        command_text,
        sync_down,
        sync_up,
    )
    from vp.sync.guard import check_root

    use_docker = cfg.docker.enabled if opts.docker is None else opts.docker
    if use_docker:
        raise UsageError(
            "--nodes does not run inside Docker yet",
            hint="run with --no-docker (set the image up in [setup] run)",
        )
    if opts.setup_only or opts.tunnels:
        raise UsageError(
            "--nodes runs a command; `vp setup` and --tunnel work on one host",
            hint="drop --nodes (or set [host] nodes = 1) for them",
        )
    secret_values = secretstore.for_project(cfg)
    setup_cmd = cfg.setup.run or None
    if opts.sync:
        check_root(cfg)
    ui.info(f"{n} nodes on {cfg.platform}")
    pairs = acquire(cfg, state, ui, n)
    workdir = cfg.sync.workdir
    spaces = [Workspace(cfg, state, h, t, workdir) for h, t in pairs]
    if opts.sync:
        uploads = [lambda w=w: sync_up(w, ui, yes=opts.yes) for w in spaces]
        error = _first_error(in_parallel(uploads))
        if error is not None:
            raise error
    if opts.sync_only:
        return 0
    want_download = opts.sync and bool(
        cfg.sync.download if opts.download is None else opts.download
    )

    hosts = [h for h, _t in pairs]
    found = in_parallel(
        [
            lambda t=t, i=i: facts(t, want_port=DEFAULT_MASTER_PORT if i == 0 else None)
            for i, (_h, t) in enumerate(pairs)
        ]
    )
    error = _first_error(found)
    if error is not None:
        raise error
    addresses = node_addresses(cfg.platform, hosts, found)  # type: ignore[arg-type]
    port = found[0].free_port or DEFAULT_MASTER_PORT  # type: ignore[union-attr]
    gpus = min(f.gpus for f in found)  # type: ignore[union-attr]
    ui.debug(f"nodes: {', '.join(addresses)}; MASTER_ADDR={addresses[0]} MASTER_PORT={port}")

    run_id = remote.new_run_id()
    base_env = dict(cfg.env)
    base_env.update(secret_values)
    base_env.setdefault("VP_RUN_ID", run_id)
    base_env["VP_ATTEMPT"] = str(attempt)  # 1, then 2, 3 after a node was preempted
    if attempt > 1:
        base_env["VP_RESUMED"] = "1"
    ranks: list[Rank] = []
    for rank, ws in enumerate(spaces):
        env = {**base_env, **node_env(rank, addresses, gpus, port)}
        command = node_command(opts.argv, env)
        r = Rank(rank, rank_run_id(run_id, rank), ws.host, ws.transport, workdir)
        r.script = remote.launch_script(
            ws.transport.runs_dir_sh,
            r.run_id,
            r.workdir_sh,
            command,
            env,
            follow=False,
            pre_start=_idle_watchdog(cfg, ws, ui),
            setup=_setup_step(ws, setup_cmd, setup_cmd, "", False),
            mask=secretstore.mask_values(secret_values.values()),
        )
        ranks.append(r)
        state.add_run(
            RunRecord(
                id=r.run_id,
                project=cfg.project,
                host_key=ws.host.key,
                platform=ws.host.platform,
                host_name=ws.host.name,
                command=command_text(opts.argv) + (f"  [node {rank}/{n}]" if rank else ""),
                workdir=workdir,
                started=time.time(),
                price=ws.host.price,
                attempt=attempt,
                parent=rank_run_id(parent, rank) if parent else None,
            )
        )
    # Ctrl-C is counted from before the ranks start: one pressed while they start is handled
    # by `watch` like one during the run (every rank interrupted), never a bare exit that
    # leaves started ranks running.
    with _CtrlC() as ctrl_c:
        try:
            launch(ranks)
        except BaseException:
            for r in ranks:
                state.finish_run(r.run_id, None, "failed")
            raise
        if opts.detach:
            for r in ranks:
                state.set_run_status(r.run_id, "detached")
            ui.note(
                f"run {run_id} started on {n} nodes; follow rank 0 with: vp logs -f {run_id} "
                "(another rank's: add --node RANK)"
            )
            print(run_id)
            return 0

        views = {}
        for r in ranks:
            if r.rank == 0:
                out, err = sys.stdout.buffer, sys.stderr.buffer
            elif opts.all_logs:
                out = _Prefixed(sys.stdout.buffer, f"[node{r.rank}] ")
                err = _Prefixed(sys.stderr.buffer, f"[node{r.rank}] ")
            else:
                out = err = _Discard()
            views[r.rank] = LogView(out, err, secret_values.values())
        if sys.stderr.isatty():
            ui.info(
                f"run {run_id} on {n} nodes (rank 0 on {hosts[0].name}): Ctrl-C interrupts all, "
                f"twice detaches; another rank's output: vp logs {run_id} --node 1"
            )
        try:
            with checkpoints.puller(spaces[0], ui):  # rank 0's, as its results
                outcome = watch(
                    ranks,
                    ui,
                    views,
                    reconnect_timeout=float(cfg.ssh.reconnect_timeout),
                    host_gone=lambda h: host_gone(cfg, state, h),
                    ctrl_c=ctrl_c,
                )
        except BaseException:
            for r in ranks:
                state.finish_run(r.run_id, None, "failed")
            raise
        finally:
            for v in views.values():
                for stream in (v.out, v.err):
                    if isinstance(stream, _Prefixed):
                        stream.close()
    gone = _lost_hosts(ranks, outcome, lambda h: host_gone(cfg, state, h))
    if gone and not outcome.interrupted:  # after Ctrl-C: no next attempt
        for r in ranks:
            state.finish_run(r.run_id, None, "preempted")
        lost = [r for r in ranks if r.rank in gone]
        why = "; ".join(f"node {rank}: {gone[rank]}" for rank in sorted(gone))
        raise Preempted(
            HostGone(f"{why}; run {run_id} on {n} nodes is lost"),
            run_id,
            lost[0].host,
            hosts=[r.host for r in lost],
        )
    for r in ranks:
        result = outcome.results.get(r.rank)
        if result is None:
            state.set_run_status(r.run_id, "detached")
            continue
        status = "interrupted" if outcome.interrupted else ("lost" if result.lost else "done")
        state.finish_run(r.run_id, result.exit_code, status)
    if outcome.detached:
        return EXIT_INTERRUPTED
    if want_download:
        everyone = cfg.sync.download_from == "all"
        for r, ws in zip(ranks, spaces, strict=True):
            result = outcome.results.get(r.rank)
            if result is None or result.changes is None or (r.rank and not everyone):
                continue
            dest = None if r.rank == 0 else cfg.project_root / "nodes" / str(r.rank)
            sync_down(ws, ui, result.changes, dest=dest)
    if outcome.exit_code and not outcome.interrupted:
        failed = [r.rank for r in ranks if r.rank and _code(outcome.results[r.rank]) != 0]
        if failed:
            ui.hint(f"node {failed[0]}'s output: vp logs {run_id} --node {failed[0]}")
    return outcome.exit_code
