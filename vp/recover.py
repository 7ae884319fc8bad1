"""Runs that survive their host: after a preemption, a new host and the same command again.

The trigger is the provider's word, never a dropped connection: `follow` reconnects through
network trouble and raises HostGone only when the provider says the host was destroyed or
stopped (vp/lifecycle.py `host_gone`). Then the lost host is retired (a stopped, preempted host
is destroyed: a resumed run starts from the workspace and the checkpoints vp pulled, not from
its disk), and the next attempt acquires a host through the same fallback lists, uploads the
workspace (checkpoints included) and runs the command with VP_ATTEMPT=N and VP_RESUMED=1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vp.config import Config
from vp.errors import VpError
from vp.lifecycle import forget
from vp.offers import platform_for
from vp.platforms.base import Host
from vp.state import State
from vp.ui import UI

if TYPE_CHECKING:
    from vp.run import Preempted


def next_attempt(
    cfg: Config, state: State, ui: UI, lost: Preempted, attempt: int, attempts: int
) -> str:
    """Retire the lost host and say what happens next; the id of the lost run (the parent of
    the next attempt). Raises when no attempt is left."""
    if attempt >= attempts:
        run_id = lost.run_id
        raise VpError(
            f"{lost.message} (attempt {attempt} of {attempts}; none left)",
            hint=f"raise [run] max_attempts; the output so far: vp logs {run_id}",
        )
    retire(cfg, state, ui, lost)
    ui.warn(
        f"{lost.message}: recovering, attempt {attempt + 1} of {attempts} on a new host "
        f"(VP_ATTEMPT={attempt + 1}, VP_RESUMED=1)"
    )
    return lost.run_id


def retire(cfg: Config, state: State, ui: UI, lost: Preempted) -> None:
    """Destroy each preempted host (a multi-node run's lost nodes) if the provider still
    lists it (stopped), and forget it."""
    for host in lost.hosts:
        _retire(cfg, state, ui, host)


def _retire(cfg: Config, state: State, ui: UI, host: Host) -> None:
    if state.host(host.key) is not None:  # host_gone found it stopped, not gone
        try:
            platform_for(cfg, host.platform).destroy(host.id)
        except VpError as exc:
            ui.warn(
                f"could not destroy the preempted {host.platform} host {host.name} "
                f"({host.id}): {exc.message}; destroy it with: vp down {host.id}"
            )
            return
        ui.info(f"destroyed the preempted {host.platform} host {host.name} ({host.id})")
    forget(state, host)
