"""Every vp host on every configured provider, whatever this machine remembers.

`vp ls --all` and `vp cleanup --orphans` ask each provider with credentials here for the hosts
that are vp's under its ownership rule (vp/platforms/cloud.py): LABEL providers by their label
or tag alone, so a new laptop with no state sees everything vp made on the account; STATE
providers (Thunder keeps no label) only for the hosts this machine recorded creating, which
is said in a note, since hosts made elsewhere cannot be told from the account's others.
A host the provider lists but this machine does not know is an orphan. Nothing that is not
vp's under the rule is ever listed, let alone destroyed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vp import clock
from vp.errors import VpError
from vp.platforms.base import Host
from vp.state import State
from vp.ui import UI


@dataclass
class Found:
    host: Host
    project: str | None
    known: bool
    per_hour: float | None

    def row(self, now: float) -> dict:
        h = self.host
        age = None if h.created_at is None else max(0.0, now - h.created_at)
        return {
            "platform": h.platform,
            "name": h.name,
            "id": h.id,
            "project": self.project or "-",
            "status": h.status,
            "per_hour": self.per_hour,
            "age": clock.format_duration(age) if age is not None else None,
            "age_s": round(age) if age is not None else None,
            "known": "yes" if self.known else "no",
            "key": h.key,
        }


@dataclass
class Sweep:
    found: list[Found] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)  # providers that answered
    unchecked: list[str] = field(default_factory=list)  # providers that could not be listed
    notes: list[str] = field(default_factory=list)

    @property
    def orphans(self) -> list[Found]:
        return [f for f in self.found if not f.known]


def configured_clouds(cfg) -> list[str]:
    """The providers that rent hosts and have credentials on this machine."""
    from vp.platforms import clouds, declaration
    from vp.platforms.cloud import configured

    return [n for n in clouds() if configured(declaration(n), cfg.section(n))]


def sweep(cfg, state: State, ui: UI, names: list[str] | None = None) -> Sweep:
    """Ask every configured provider (or `names`) for vp's hosts; never raises for one
    provider that cannot be listed (it is named in `unchecked`)."""
    from vp.lifecycle import with_local_facts
    from vp.offers import platform_for
    from vp.platforms import declaration
    from vp.platforms.cloud import Ownership
    from vp.spend import host_costs

    out = Sweep()
    known = {h.key: h for h in state.hosts()}
    projects = state.host_projects()
    costs = host_costs(state)
    for name in names if names is not None else configured_clouds(cfg):
        decl = declaration(name)
        try:
            listed = platform_for(cfg, name).list(None)
        except VpError as exc:
            ui.warn(f"could not list hosts on {name} ({exc.message}); skipped")
            out.unchecked.append(name)
            continue
        out.asked.append(name)
        if decl.ownership is Ownership.STATE:
            listed = [h for h in listed if h.key in known]
            out.notes.append(
                f"{name}: {decl.provider or name} keeps no label on vp's hosts, so only the ones "
                "this machine recorded creating are listed"
            )
        elif decl.ownership is not Ownership.LABEL:
            continue
        for host in listed:
            host = with_local_facts(host, state)
            project = host.labels.get("project") or projects.get(host.key)
            rate = costs.get(host.key, {}).get("per_hour")
            if rate is None and host.status == "running":
                rate = host.price
            out.found.append(Found(host, project or None, host.key in known, rate))
    return out
