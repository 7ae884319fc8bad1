"""The Build-Sync-Run-Sync pipeline behind `vp CMD`. Knows nothing of the CLI."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vp import remote
from vp.config import Config
from vp.errors import EXIT_INTERRUPTED, HostGone, UsageError, VpError
from vp.follow import follow
from vp.lifecycle import host_gone, resolve
from vp.mask import LogView
from vp.platforms import kind
from vp.platforms.base import Host
from vp.state import RunRecord, State
from vp.sync.guard import check_root, confirm_first_upload
from vp.sync.ignore import IgnoreRules
from vp.sync.transfer import (
    DownloadIncomplete,
    Manifest,
    RemoteChange,
    UploadResult,
    download,
    new_stamp,
    parse_changes,
    plan_download,
    upload,
)
from vp.transport import EarlySession, LocalTransport, Transport
from vp.ui import UI, ByteProgress


@dataclass
class RunOptions:
    argv: list[str]
    sync: bool = True
    sync_only: bool = False
    download: bool | None = None  # None: [sync] download
    detach: bool = False
    docker: bool | None = None  # None: [docker] enabled
    host_name: str | None = None
    tunnels: list[str] = field(default_factory=list)  # REMOTE[:LOCAL] forwards for the run
    yes: bool = False  # upload a big unconfigured folder without asking (vp --yes)
    setup_only: bool = False  # `vp setup`: run the project's setup (if needed) and nothing else
    force_setup: bool = False  # `vp setup --force`: even when the host's record is current
    recover: bool | None = None  # None: [run] recover (vp --recover)
    nodes: int | None = None  # `vp --nodes N`; None: [host] nodes (vp/nodes.py)
    all_logs: bool = False  # multi-node: show every rank's output, prefixed [nodeR]


def command_text(argv: list[str]) -> str:
    """One argument is shell text (`vp "cd sub && make"`); several keep their exact quoting."""
    if len(argv) == 1:
        return argv[0]
    return shlex.join(argv)


@dataclass
class Workspace:
    """Where a project lives on one host, and the manifest both sides agree on."""

    cfg: Config
    state: State
    host: Host
    transport: Transport
    workdir: str
    # False once this call has read a manifest with no results left to fetch: a run that
    # changed nothing then needs no second manifest read or write.
    maybe_pending: bool = field(default=True, init=False, repr=False)

    @property
    def root(self) -> Path:
        return self.cfg.project_root

    def rules(self) -> IgnoreRules:
        return ignore_rules(self.cfg)

    def results(self) -> IgnoreRules | None:
        """`[sync] results`: when set, only paths matching these patterns come back."""
        patterns = self.cfg.sync.results
        return IgnoreRules(patterns, "[sync] results") if patterns else None

    def protected(self) -> set[str]:
        """vp's control files: never replaced from the host (vp/sync/transfer.py)."""
        return control_files(self.cfg)

    def manifest(self) -> Manifest:
        """The manifest; its file tables are read only when used (a warm call that the walk
        cache vouches for never does)."""
        key = (self.host.key, str(self.root), self.workdir)
        head = self.state.manifest_head(*key)
        if head is None:
            return Manifest.from_json(self.state.manifest(*key))
        return Manifest.from_head(head, lambda: self.state.manifest(*key))

    def save_manifest(self, manifest: Manifest, *, stamped: bool = False) -> None:
        """Save under a new stamp, or with `stamped` under the one it carries (an upload's,
        which the walk cache may already vouch for: vp/sync/transfer.py `upload`)."""
        if not stamped or not manifest.stamp:
            manifest.stamp = new_stamp()
        self.state.save_manifest(
            self.host.key, str(self.root), self.workdir, manifest.to_json(), manifest.head()
        )


def ignore_rules(cfg: Config) -> IgnoreRules:
    """What the project never uploads: .vpignore, [sync] extra_ignore, .gitignore if asked,
    and with `[sync] download_from = "all"` the other ranks' results (vp/nodes.py)."""
    extra = list(cfg.sync.extra_ignore or [])
    if cfg.sync.download_from == "all":
        extra.append("/nodes/")
    return IgnoreRules.for_project(
        cfg.project_root,
        extra=extra,
        use_gitignore=bool(cfg.sync.use_gitignore),
    )


@dataclass
class NodeResults(Workspace):
    """Where another rank's results land (`[sync] download_from = "all"`): `dest`, not the
    project root."""

    dest: Path = Path()

    @property
    def root(self) -> Path:
        return self.dest


def control_files(cfg: Config) -> set[str]:
    """Paths (relative to the project root) of the files that steer vp itself."""
    names = {"vp.toml", ".vpignore", "pyproject.toml"}
    if cfg.sync.use_gitignore:
        names.add(".gitignore")
    if cfg.project_file is not None:
        with contextlib.suppress(ValueError):
            names.add(cfg.project_file.relative_to(cfg.project_root).as_posix())
    return names


def workdir_for(cfg: Config, transport: Transport | None) -> str:
    """Where the project lives on the host: [sync] workdir, or a per-project folder locally."""
    if isinstance(transport, LocalTransport):
        return transport.workdir_for(cfg.project, cfg.project_root)
    return cfg.sync.workdir


def open_workspace(
    cfg: Config,
    state: State,
    ui: UI,
    host_name: str | None = None,
    *,
    create: bool = True,
    image: str | None = None,
) -> Workspace:
    """The one way to reach the project's host: resolved (and with `create`, created or
    started), connected, with its workdir. `image` is the image a new host boots."""
    host, transport = resolve(cfg, state, ui, host_name=host_name, create=create, image=image)
    return Workspace(cfg, state, host, transport, workdir_for(cfg, transport))


def sync_up(
    ws: Workspace,
    ui: UI,
    yes: bool = False,
    say: Callable[[str], None] | None = None,
    before_send: Callable[[], None] = lambda: None,
) -> UploadResult:
    """Upload what changed since the last upload; `say` (default `ui.info`) hears each step,
    `before_send()` is called before anything is sent."""
    previous = ws.manifest()
    ws.maybe_pending = bool(previous.pending)
    result, manifest = upload(
        ws.transport,
        ws.root,
        ws.workdir,
        ws.rules(),
        previous,
        say=say or ui.info,
        progress=lambda label, total: ByteProgress(ui, label, total),
        confirm=lambda files, nbytes: confirm_first_upload(ws.cfg, files, nbytes, assume_yes=yes),
        walk_cache=walk_cache_file(ws.root),
        before_send=before_send,
    )
    if result.skipped:
        ui.debug("workspace unchanged since the last upload; not syncing")
    else:
        ws.save_manifest(manifest, stamped=True)
        if result.deleted:
            ui.debug(f"removed {result.deleted} file(s) on the host that you deleted locally")
    return result


def walk_cache_file(root: Path) -> Path:
    """Where the project's walk is remembered between calls (vp/sync/walkcache.py)."""
    import hashlib

    from vp import paths

    digest = hashlib.sha1(str(root).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return paths.state_dir() / "walks" / digest


def sync_down(ws: Workspace, ui: UI, changes: bytes, dest: Path | None = None) -> None:
    """Fetch what the run changed into the project (or into `dest`: another rank's results,
    with a manifest of their own so the project's upload manifest stays the project's)."""
    remote_changes = parse_changes(changes)
    if not remote_changes and not ws.maybe_pending and dest is None:
        return  # the run changed nothing and nothing is owed: the manifest stands as is
    rules = ws.rules()
    if dest is not None:
        dest.mkdir(parents=True, exist_ok=True)
        ws = NodeResults(ws.cfg, ws.state, ws.host, ws.transport, ws.workdir, dest)
    manifest = ws.manifest()
    # What an earlier download could not fetch (local disk full) comes first, unless this
    # run changed it again.
    seen = {c.path for c in remote_changes}
    remote_changes += [
        RemoteChange(str(k), int(size), float(mtime), str(path))
        for k, size, mtime, path in manifest.pending
        if path not in seen
    ]
    names, dirs_changed = plan_download(
        ws.root, remote_changes, rules, manifest, results=ws.results()
    )
    wanted = set(names)
    try:
        result = download(
            ws.transport,
            ws.root,
            ws.workdir,
            names,
            manifest,
            say=ui.info,
            warn=ui.warn,
            progress=lambda label, total: ByteProgress(ui, label, total),
            total_bytes=sum(c.size for c in remote_changes if c.path in wanted),
            sizes={c.path: c.size for c in remote_changes if c.path in wanted},
            links={c.path for c in remote_changes if c.kind == "l"},
            protected=ws.protected(),
        )
    except DownloadIncomplete as exc:
        result = exc.result
        error: DownloadIncomplete | None = exc
    else:
        error = None
    pending = set(result.pending)
    manifest.pending = [
        [c.kind, c.size, c.mtime, c.path] for c in remote_changes if c.path in pending
    ]
    # The host may now hold files we don't (a deletion we can't see, a conflict we kept
    # local, a result not fetched): mark the manifest so the next upload does not skip.
    manifest.clean = not dirs_changed and not result.conflicts and not pending
    ws.save_manifest(manifest)
    if error is not None:
        raise error


def execute(
    cfg: Config,
    opts: RunOptions,
    ui: UI,
    state: State | None = None,
    *,
    attempt: int = 1,
    parent: str | None = None,
) -> int:
    """Run one command through the pipeline; return the exit status vp should exit with.

    With recovery on (`--recover`, `[run] recover`), a run whose host the provider preempted
    or destroyed runs again on a new host (vp/recover.py), up to `[run] max_attempts`."""
    state = state or State()
    recover = cfg.run.recover if opts.recover is None else opts.recover
    attempts = max(1, int(cfg.run.max_attempts or 1)) if recover else 1
    while True:
        try:
            return _execute_once(cfg, opts, ui, state, attempt=attempt, parent=parent)
        except Preempted as exc:
            if not recover:
                raise
            from vp.recover import next_attempt

            parent = next_attempt(cfg, state, ui, exc, attempt, attempts)
            attempt += 1


class Preempted(HostGone):
    """The provider says the run's host is gone or stopped: the run on it is lost."""

    def __init__(self, error: HostGone, run_id: str, host: Host, hosts: list[Host] | None = None):
        super().__init__(error.message, hint=error.hint)
        self.run_id, self.host = run_id, host
        self.hosts = hosts or [host]  # a multi-node run's lost nodes (vp/nodes.py)


def _execute_once(
    cfg: Config, opts: RunOptions, ui: UI, state: State, *, attempt: int, parent: str | None
) -> int:
    """One attempt: resolve a host, sync up, run, follow, sync back."""
    from vp import secretstore

    state = state or State()
    n = opts.nodes if opts.nodes is not None else cfg.host.nodes
    if n != 1:  # vp.nodes (threads, queues) is imported only when it has work
        from vp import nodes

        n = nodes.node_count(cfg, opts.nodes)
        if n > 1:
            from vp import prespawn

            prespawn.discard()  # each rank opens its own session
            return nodes.execute(cfg, opts, ui, state, n, attempt=attempt, parent=parent)
    # Before any host is created, started or asked: a missing secret fails here, for free.
    secret_values = secretstore.for_project(cfg)
    setup_cmd = cfg.setup.run or None
    if opts.setup_only and not setup_cmd:
        raise UsageError(
            "this project has no setup to run",
            hint='add [setup] run = "pip install -r requirements.txt" to vp.toml',
        )
    if opts.sync:
        check_root(cfg)  # before a host is created or an image built for nothing
    use_docker = cfg.docker.enabled if opts.docker is None else opts.docker
    container_host = use_docker and kind(cfg.platform) == "container"
    boot_image = None
    if container_host:
        # Container platforms boot from the image itself: build and push before the host.
        from vp.docker.dispatch import build_and_push

        boot_image, _auth = build_and_push(cfg, ui)
    ws = open_workspace(cfg, state, ui, opts.host_name, image=boot_image)
    budget_seconds = _budget(cfg, state, ui, ws.host)
    running_image = ws.host.labels.get("image")
    if container_host and running_image and running_image != boot_image:
        # A container host is its image: a new image needs a new host.
        ui.warn(
            f"{ws.host.name} runs {running_image}, not the project's new image "
            f"{boot_image}: recreate it with `vp down --yes` and run again"
        )
    command = ":" if opts.setup_only else command_text(opts.argv)
    run_id = remote.new_run_id()
    env = dict(cfg.env)
    env.update(secret_values)
    env.setdefault("VP_RUN_ID", run_id)
    env["VP_ATTEMPT"] = str(attempt)  # 1, then 2, 3 on a new host after a preemption
    if attempt > 1:
        env["VP_RESUMED"] = "1"
    setup_text, image = setup_cmd, ""
    if use_docker and not container_host:
        from vp.docker.dispatch import prepare

        prepared = prepare(cfg, ws.transport, ws.workdir, command, env, run_id, ui, setup=setup_cmd)
        if not opts.setup_only:
            command = prepared.command
        setup_text, image = prepared.setup, prepared.image
        env.update(prepared.env)
    early = None
    if opts.sync and not opts.sync_only and not opts.detach and not ws.transport.is_local:
        # The run's session opens while the workspace is checked (vp.transport.EarlySession).
        early = EarlySession(ws.transport)
    if opts.sync:
        try:
            sync_up(ws, ui, yes=opts.yes, before_send=early.make_room if early else lambda: None)
        finally:
            ws.transport.release_extra_slot()
    if opts.sync_only:
        return 0
    # --no-sync skips both directions; --no-download only the way back.
    want_download = opts.sync and bool(
        cfg.sync.download if opts.download is None else opts.download
    )

    record = RunRecord(
        id=run_id,
        project=cfg.project,
        host_key=ws.host.key,
        platform=ws.host.platform,
        host_name=ws.host.name,
        command="vp setup" if opts.setup_only else command_text(opts.argv),
        workdir=ws.workdir,
        started=time.time(),
        price=ws.host.price,
        attempt=attempt,
        parent=parent,
    )
    state.add_run(record)
    timeout = _timeout(cfg)
    t = ws.transport
    workdir_sh = _workdir_sh(ws)
    script = remote.launch_script(
        t.runs_dir_sh,
        run_id,
        workdir_sh,
        command,
        env,
        follow=not opts.detach,
        changes=not opts.setup_only,
        pre_start=_idle_watchdog(cfg, ws, ui, budget_seconds),
        setup=_setup_step(ws, setup_cmd, setup_text, image, opts.force_setup),
        mask=secretstore.mask_values(secret_values.values()),
        timeout=timeout,
    )
    view = LogView(
        sys.stdout.buffer,
        sys.stderr.buffer,
        secret_values.values(),
        on_setup=lambda: ui.info(f"setup on {ws.host.name}: {setup_cmd}"),
    )
    if opts.detach:
        if opts.tunnels:
            ui.warn("--tunnel ends with vp: with --detach, forward with `vp tunnel PORT`")
        proc = t.run(script, timeout=60)
        if remote.STARTED not in proc.stdout:
            state.finish_run(run_id, None, "failed")
            detail = proc.stderr.decode(errors="replace").strip().splitlines()
            raise VpError(
                f"could not start the run on {t.label}" + (f": {detail[-1]}" if detail else "")
            )
        state.set_run_status(run_id, "detached")
        ui.note(f"run {run_id} started on {ws.host.name}; follow it with: vp logs -f {run_id}")
        print(run_id)
        still_billing(cfg, ws.host, ui, budget_seconds)
        return 0

    ui.debug(f"run {run_id} on {ws.host.name} in {ws.workdir}")
    if sys.stderr.isatty() and not t.is_local:
        # People fear Ctrl-C kills a long job: say up front what it does.
        ui.info(
            f"run {run_id} on {ws.host.name}: Ctrl-C interrupts it, twice detaches "
            f"(re-attach: vp attach {run_id})"
        )
    try:
        with contextlib.ExitStack() as tunnels:
            if opts.tunnels:
                from vp.tunnel import open_tunnels

                forwards = tunnels.enter_context(
                    open_tunnels(ws.host, t, opts.tunnels, say=ui.info)
                )
                for f in forwards:
                    ui.note(f"tunnel: {f.url} -> {ws.host.name}:{f.remote}")
            if not opts.setup_only and cfg.sync.checkpoint_dir:
                from vp import checkpoints

                tunnels.enter_context(checkpoints.puller(ws, ui))
            result = follow(
                t,
                run_id,
                workdir_sh,
                script,
                ui,
                reconnect_timeout=float(cfg.ssh.reconnect_timeout),
                host_gone=lambda: host_gone(cfg, state, ws.host),
                view=view,
                changes=not opts.setup_only,
                session=early.take() if early else None,
            )
    except HostGone as exc:
        state.finish_run(run_id, None, "preempted")
        raise Preempted(exc, run_id, ws.host) from None
    except BaseException:
        state.finish_run(run_id, None, "failed")
        raise
    if result.lost and not result.interrupted:
        # The last follow session may see the run's processes die before its own connection
        # does: ask the provider whether the host went with them.
        try:
            why = host_gone(cfg, state, ws.host)
        except VpError:
            why = None
        if why:
            state.finish_run(run_id, None, "preempted")
            lost = HostGone(f"{why}; run {run_id} on it is lost")
            raise Preempted(lost, run_id, ws.host)
    if result.detached:
        state.set_run_status(run_id, "detached")
        ui.note(
            f"detached: run {run_id} keeps going on {ws.host.name}. "
            f"Re-attach with: vp attach {run_id} (or only watch: vp logs -f {run_id})"
        )
        return EXIT_INTERRUPTED
    status = "interrupted" if result.interrupted else ("lost" if result.lost else "done")
    if timeout and result.exit_code == remote.TIMEOUT_EXIT and not result.interrupted:
        status = "timed out"
        ui.warn(f"run {run_id} timed out after {cfg.run.timeout} (exit 124)")
    state.finish_run(run_id, result.exit_code, status)
    still_billing(cfg, ws.host, ui, budget_seconds)
    if result.interrupted and result.changes is None and not result.lost:
        # Ctrl-C twice, but the run had already ended: say so, not "keeps going".
        ui.note(
            f"run {run_id} on {ws.host.name} already ended (exit {result.exit_code}); "
            f"its results were not fetched: vp attach {run_id} fetches them"
        )
    if want_download and result.changes is not None:
        sync_down(ws, ui, result.changes)
    elif result.changes is not None or result.interrupted:
        manifest = ws.manifest()
        manifest.clean = False
        ws.save_manifest(manifest)
    if result.setup_exit is not None:
        if result.interrupted:
            ui.error("setup interrupted; the command was not run")
            return EXIT_INTERRUPTED
        ui.error(
            f"setup failed (exit {result.setup_exit}); the command was not run",
            hint=f"its output is above (again: vp logs {run_id}); fix it, then run again "
            "(or: vp setup)",
        )
        return result.setup_exit or 1
    if result.interrupted:
        return EXIT_INTERRUPTED
    if opts.setup_only and not result.lost:
        if view.saw_setup:
            ui.info(f"setup done on {ws.host.name}")
        else:
            ui.info(f"setup is up to date on {ws.host.name} (vp setup --force runs it again)")
    if result.lost:
        raise VpError(
            f"run {run_id} on {ws.host.name} ended without an exit status "
            "(killed, or the host rebooted)",
            hint=f"see its output with: vp logs {run_id}",
        )
    return result.exit_code if result.exit_code is not None else 1


def _setup_step(
    ws: Workspace, command: str | None, text: str | None, image: str, force: bool
) -> remote.SetupStep | None:
    """The setup for this run, its digest computed from the synced inputs (vp/setup.py)."""
    if not command or not text:
        return None
    from vp import setup

    files = _setup_inputs(ws, setup.inputs(ws.cfg))
    return remote.SetupStep(
        text=text,
        digest=setup.digest(command, ws.root, files, image),
        key=setup.workdir_key(ws.workdir),
        force=force,
    )


def _setup_inputs(ws: Workspace, patterns: list[str]) -> list[str]:
    """The synced files `[setup] inputs` match. A manifest's stamp names one exact set of
    synced paths, so the match is remembered per stamp: a warm call that the walk cache
    vouched for reads no file table and matches no 100k paths (only the inputs' bytes are read
    again, by the digest)."""
    import hashlib
    import json

    from vp import paths, setup

    manifest = ws.manifest()
    key = json.dumps([ws.host.key, str(ws.root), ws.workdir], ensure_ascii=False)
    memo = paths.state_dir() / "setup-inputs" / hashlib.sha256(key.encode()).hexdigest()[:24]
    if manifest.stamp:
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(memo.read_text())
            if saved["stamp"] == manifest.stamp and saved["patterns"] == patterns:
                return [str(f) for f in saved["files"]]
    files = setup.input_files(patterns, manifest.files or ws.rules().walk(ws.root))
    if manifest.stamp:
        with contextlib.suppress(OSError):
            paths.ensure_private_dir(memo.parent)
            tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
            saved = {"stamp": manifest.stamp, "patterns": patterns, "files": files}
            tmp.write_text(json.dumps(saved))
            os.replace(tmp, memo)
    return files


def _timeout(cfg: Config) -> float | None:
    """`[run] timeout` / `--timeout`, in seconds."""
    from vp.clock import parse_duration

    limit = cfg.run.timeout
    return parse_duration(limit, "[run] timeout") if limit else None


def billed(host: Host) -> bool:
    """Does this host cost money by the hour (a rented host with a price)?"""
    return host.price is not None and kind(host.platform) in ("vm", "container")


def _budget(cfg: Config, state: State, ui: UI, host: Host) -> float | None:
    """Before a run on a billed host: refuse when a cap is (nearly) reached; else say how long
    the budget allows and return that in seconds, for the host's watchdog. None: no cap (or
    --over-budget)."""
    if not billed(host):
        return None
    from vp import spend

    found = spend.check(cfg, state, what=f"run on {host.name}", host_key=host.key, price=host.price)
    if found is None or cfg.over_budget or found.hours == float("inf"):
        return None
    ui.info(
        f"budget allows {found.hours:.1f} h on this host "
        f"(${found.left:.2f} left {found.period} at ${found.burn:.2f}/h)"
    )
    return found.hours * 3600


def still_billing(cfg: Config, host: Host, ui: UI, budget_seconds: float | None) -> None:
    """The line every run on a billed host ends with: it is still running, and costing."""
    if not billed(host):
        return
    minutes = cfg.host.idle_stop_minutes
    idle = f"after {minutes:g} min" if minutes else "off"
    stops = f"idle stop: {idle}"
    if budget_seconds is not None:
        from vp.clock import format_duration

        stops += f", budget stop in {format_duration(budget_seconds)}"
    ui.note(f"{host.name} is still running at ${host.price:.2f}/h ({stops}) — vp stop")


def _idle_watchdog(cfg: Config, ws: Workspace, ui: UI, budget_seconds: float | None = None) -> str:
    """Shell text that (re)arms the host's watchdog (idle stop, budget stop), or "" when
    neither is configured."""
    minutes = cfg.host.idle_stop_minutes
    if not minutes and budget_seconds is None:
        return ""
    from vp import idle

    command = idle.stop_command(ws.host.platform, cfg.host.idle_stop_command)
    if command is None:
        # Said on every run on purpose: a silently ignored autostop costs money.
        why = idle.unavailable(ws.host.platform)
        ui.warn(why if minutes else why.replace("idle_stop_minutes", "the [budget] stop", 1))
        return ""
    return idle.watchdog_snippet(
        ws.transport.runs_dir_sh, float(minutes) if minutes else None, command, budget_seconds
    )


def _workdir_sh(ws: Workspace) -> str:
    return ws.transport.workdir_sh(ws.workdir)
