"""The money guard around the host lifecycle: never an uncapped create by accident, and no
stopped host left to bill its disk forever.

- `confirm_create`: a create with no `[host] max_price` shows the offer it would rent and asks
  on a terminal; elsewhere it is refused unless `--yes` or a `[budget]` cap bounds the bill.
- `sweep_stopped`: a project host stopped longer than `[host] destroy_after_stopped` is
  destroyed at the next vp call on the project (and by `vp cleanup`), saying what its disk
  cost first. "Stopped since" is the ledger's: when vp recorded or observed the stop.
"""

from __future__ import annotations

import sys

from vp import clock
from vp.errors import UsageError, VpError
from vp.platforms.base import HostSpec, Offer
from vp.spend import Budget
from vp.ui import UI


def confirm_create(cfg, ui: UI, spec: HostSpec, offer: Offer | None, name: str) -> None:
    """Go ahead with a create (max_price set, --yes, a budget cap, or a person said yes), or
    raise."""
    if spec.max_price is not None or cfg.yes or Budget.of(cfg).capped:
        return
    what = (
        f"{offer.gpus}x {offer.gpu} on {offer.platform} at ${offer.price:.2f}/h"
        if offer is not None
        else f"a host on {cfg.platform}"
    )
    hint = (
        "set [host] max_price (or a [budget] daily/monthly cap) in vp.toml, or pass --yes "
        "to accept the cheapest offer"
    )
    if not sys.stdin.isatty():
        raise UsageError(f"no [host] max_price: not renting {what} without asking", hint=hint)
    import typer

    if not typer.confirm(f"No [host] max_price is set. Rent {what} as {name}?", default=False):
        raise VpError("nothing created", hint=hint)


def sweep_stopped(cfg, ui: UI, state=None, *, all_projects: bool = False) -> list[str]:
    """Destroy the project's hosts (`all_projects`: every project's, for `vp cleanup`)
    stopped longer than `[host] destroy_after_stopped`; return their keys. Asks a provider
    only when the ledger says such a host exists."""
    limit = cfg.host.destroy_after_stopped
    if not limit:
        return []
    from vp.state import STORAGE, State

    state = state or State()
    seconds = clock.parse_duration(limit, "[host] destroy_after_stopped")
    now = clock.now()
    due = [
        i
        for i in state.intervals()
        if i.end is None and i.kind == STORAGE and (all_projects or i.project == cfg.project)
        if now - i.start >= seconds
    ]
    done = []
    for interval in due:
        host = state.host(interval.host_key)
        if host is None:
            continue
        from vp.lifecycle import forget
        from vp.offers import platform_for
        from vp.platforms.base import STOPPED

        try:
            platform = platform_for(cfg, host.platform)
            now_host = next((h for h in platform.list(None) if h.id == host.id), None)
        except VpError as exc:
            ui.warn(f"could not check stopped host {host.name} on {host.platform}: {exc.message}")
            continue
        if now_host is not None and now_host.status != STOPPED:
            state.save_host(now_host, interval.project)  # started elsewhere: the ledger follows
            continue
        disk = ""
        if interval.rate:
            disk = f", its disk billing ${interval.rate:.3f}/h (${interval.rate * 730:.2f}/month)"
        ui.warn(
            f"{host.name} ({host.platform} {host.id}) has been stopped for "
            f"{clock.format_duration(now - interval.start)}{disk}: destroying it "
            f"([host] destroy_after_stopped = {limit!r})"
        )
        try:
            if now_host is not None:
                platform.destroy(host.id)
        except VpError as exc:
            ui.warn(f"could not destroy {host.name}: {exc.message}")
            continue
        forget(state, host)
        ui.info(f"destroyed {host.name} ({host.id}) on {host.platform}")
        done.append(host.key)
    return done
