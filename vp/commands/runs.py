"""`vp runs`, `vp logs`, `vp attach`, `vp kill`: runs recorded in the state DB."""

from __future__ import annotations

import sys

import typer

from vp import records, remote, secretstore
from vp.commands.context import command_app, globals_of
from vp.errors import EXIT_INTERRUPTED, HostGone, UsageError, VpError
from vp.follow import follow as follow_run
from vp.lifecycle import host_gone, transport_for
from vp.mask import LogView
from vp.output import render
from vp.state import RunRecord, State

app = command_app()


def list_runs(g, *, all_projects: bool, limit: int) -> None:
    state = State()
    project = None if all_projects else g.load().project
    runs = state.runs(project, limit=limit)
    if g.output in ("json", "yaml"):
        render([records.run_json(r) for r in runs], g.output)
    elif runs:
        render([records.run_cells(r) for r in runs], "table", records.RUN_COLUMNS)
    else:
        g.ui.info("no runs yet")


def latest_run(g, state: State, *, all_projects: bool) -> RunRecord:
    """The newest run of this project; `--host NAME` or `--all` widen the search to that host
    or to every project (what `vp logs` / `vp attach` mean without a run id)."""
    project = None if all_projects or g.host else g.load().project
    for record in state.runs(project, limit=1 if not g.host else 1000):
        key_id = record.host_key.split(":", 1)[-1]
        if not g.host or g.host in (record.host_name, record.host_key, key_id):
            return record
    where = f"on host {g.host}" if g.host else "yet" if all_projects else "in this project yet"
    raise UsageError(
        f"no runs {where}", hint="start one with: vp python train.py (or see `vp runs --all`)"
    )


def _run_and_transport(g, run_id: str | None, all_projects: bool = False, node: int | None = None):
    state = State()
    if run_id is None:
        record = latest_run(g, state, all_projects=all_projects)
        g.ui.info(f"run {record.id} on {record.host_name}: {record.command}")
    else:
        record = state.run(run_id)
    if node:  # a multi-node run: rank R's own run is RUN-R (vp/nodes.py)
        from vp.nodes import rank_run_id

        base = record.id.rsplit("-", 1)[0] if "-" in record.id else record.id
        try:
            record = state.run(rank_run_id(base, node))
        except UsageError:
            raise VpError(f"run {base} has no node {node}", hint="see `vp runs`") from None
    host = state.host(record.host_key)
    if host is None:
        raise VpError(f"the host of run {record.id} ({record.host_name}) is no longer known")
    cfg = g.load()
    return state, record, host, transport_for(host, cfg), cfg


def show_logs(
    g,
    run_id: str | None,
    *,
    follow: bool,
    attach: bool,
    all_projects: bool = False,
    node: int | None = None,
) -> int:
    state, record, host, transport, cfg = _run_and_transport(g, run_id, all_projects, node)
    workdir_sh = transport.workdir_sh(record.workdir)
    # Secrets masked here too, whatever the host's copy holds (vp/mask.py).
    view = LogView(sys.stdout.buffer, sys.stderr.buffer, secretstore.known_values(cfg))
    if not follow:
        proc = transport.run(f"cat {transport.runs_dir_sh}/{record.id}/log\n", timeout=120)
        if proc.returncode != 0:
            raise VpError(f"no log for run {record.id} on {host.name}")
        view.write(proc.stdout)
        view.close()
        return 0
    script = remote.follow_script(transport.runs_dir_sh, record.id, 0, workdir_sh, changes=attach)
    try:
        result = follow_run(
            transport,
            record.id,
            workdir_sh,
            script,
            g.ui,
            reconnect_timeout=float(cfg.ssh.reconnect_timeout),
            changes=attach,
            launched=True,
            interruptible=attach,
            view=view,
            host_gone=lambda: host_gone(cfg, state, host),
        )
    except HostGone as exc:
        return _recover_detached(g, cfg, state, record, host, exc)
    if result.lost and not result.interrupted:
        # As in `vp run`: the last follow session may see the run die before its own
        # connection does, so ask the provider whether the host went with it.
        try:
            why = host_gone(cfg, state, host)
        except VpError:
            why = None
        if why:
            return _recover_detached(
                g, cfg, state, record, host, HostGone(f"{why}; run {record.id} on it is lost")
            )
    if result.detached or (result.interrupted and not attach):
        return EXIT_INTERRUPTED
    if record.status in ("running", "detached"):
        status = "interrupted" if result.interrupted else ("lost" if result.lost else "done")
        state.finish_run(record.id, result.exit_code, status)
    if attach and result.changes is not None:
        from vp.run import Workspace, sync_down

        sync_down(Workspace(cfg, state, host, transport, record.workdir), g.ui, result.changes)
    if result.interrupted:
        return EXIT_INTERRUPTED
    if result.lost:
        raise VpError(f"run {record.id} ended without an exit status (killed, or host rebooted)")
    return result.exit_code if result.exit_code is not None else 1


def _recover_detached(g, cfg, state: State, record: RunRecord, host, exc: HostGone) -> int:
    """A followed detached run whose host the provider preempted: with recovery on, the next
    attempt runs in the foreground here (vp/recover.py); without, the error as before."""
    from vp.run import Preempted, RunOptions, execute

    state.finish_run(record.id, None, "preempted")
    recover = g.recover or cfg.run.recover
    if not recover or record.command == "vp setup":
        raise exc
    if _of_several_nodes(state, record):  # its next attempt needs every rank, not this one
        g.ui.note(
            "a multi-node run started with --detach is not recovered when followed; "
            "run it in the foreground (without --detach) to recover it"
        )
        raise exc
    from vp.recover import next_attempt

    attempts = max(1, int(cfg.run.max_attempts or 1))
    lost = Preempted(exc, record.id, host)
    parent = next_attempt(cfg, state, g.ui, lost, record.attempt, attempts)
    opts = RunOptions(argv=[record.command], recover=True)
    return execute(cfg, opts, g.ui, state, attempt=record.attempt + 1, parent=parent)


def kill_run(g, run_id: str) -> None:
    state, record, host, transport, _cfg = _run_and_transport(g, run_id)
    proc = transport.run(remote.kill_script(transport.runs_dir_sh, record.id), timeout=60)
    code = proc.stdout.decode().strip()
    exit_code = int(code) if code.lstrip("-").isdigit() else None
    if proc.returncode == 4:
        g.ui.info(f"run {record.id} had already finished (exit {code})")
    elif proc.returncode in (0, 5):
        how = "SIGTERM" if proc.returncode == 0 else "SIGKILL (it ignored SIGTERM for 10 s)"
        g.ui.info(f"stopped run {record.id} on {host.name} with {how}")
    else:
        raise VpError(f"could not signal run {record.id} on {host.name}")
    if record.status in ("running", "detached"):
        state.finish_run(record.id, exit_code, "killed" if proc.returncode != 4 else "done")


@app.command("runs", help="Run history: id, command, host, start, duration, exit code, cost.")
def runs_cmd(
    ctx: typer.Context,
    all_projects: bool = typer.Option(False, "--all", help="Every project, not just this one"),
    limit: int = typer.Option(20, "-n", "--limit", help="How many"),
) -> None:
    g = globals_of(ctx)
    list_runs(g, all_projects=all_projects, limit=limit)


LATEST_HELP = "Run id or a unique prefix (default: the project's latest run; --host/--all widen)"


@app.command("logs", help="Print a run's output; -f follows it until it ends.")
def logs_cmd(
    ctx: typer.Context,
    run_id: str = typer.Argument(None, help=LATEST_HELP),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep streaming until it ends"),
    all_projects: bool = typer.Option(False, "--all", help="Latest run of any project"),
    node: int = typer.Option(None, "--node", metavar="R", help="A multi-node run's rank R"),
) -> None:
    g = globals_of(ctx)
    raise typer.Exit(
        show_logs(g, run_id, follow=follow, attach=False, all_projects=all_projects, node=node)
    )


@app.command("attach", help="Follow a detached run (Ctrl-C interrupts it), then fetch results.")
def attach_cmd(
    ctx: typer.Context,
    run_id: str = typer.Argument(None, help=LATEST_HELP),
    all_projects: bool = typer.Option(False, "--all", help="Latest run of any project"),
) -> None:
    g = globals_of(ctx)
    raise typer.Exit(show_logs(g, run_id, follow=True, attach=True, all_projects=all_projects))


@app.command("kill", help="Stop a run (SIGTERM to its process group, then SIGKILL).")
def kill_cmd(ctx: typer.Context, run_id: str = typer.Argument(..., help="Run id")) -> None:
    kill_run(globals_of(ctx), run_id)


def _of_several_nodes(state: State, record: RunRecord) -> bool:
    """Whether `record` is one rank of a `vp --nodes` run (rank R >= 1 is `RUN-R`)."""
    if "  [node " in record.command:
        return True
    try:
        state.run(f"{record.id}-1")
    except UsageError:
        return False
    return True
