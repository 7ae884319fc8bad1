"""The host-lifecycle service: resolve, start, stop, down, modify, clone, and the waiting
each of them needs. Commands (and the web page) call these functions and render what comes
back; nothing here prints except through the `UI` object passed in, and nothing here parses
arguments.

Picking the project's host: a running one > a stopped one (start it) > create one from [host].
The warm path (a host vp already knows and can reach) makes no provider API call; the API is
asked only when ssh fails or no host is known. A create that fails after the provider accepted
it destroys what it made, so a failure never leaves a billed instance behind.

Every view of a host that combines what the provider lists with what vp's state recorded
(its key, pin alias, creation time, when vp stopped it) goes through `with_local_facts`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from vp import secretstore
from vp.config import Config
from vp.errors import ConnectionFailed, HostGone, UsageError, VpError
from vp.platforms import clouds, declaration
from vp.platforms import kind as kind_of
from vp.platforms.base import (
    GONE,
    PENDING,
    RUNNING,
    STOPPED,
    Host,
    HostSpec,
    Platform,
    SupportsClone,
    SupportsModify,
)
from vp.poll import PollTimeout, poll
from vp.ssh import HostKeyMismatch, SshTarget, SshTransport, forget_pin, is_pinned
from vp.state import State
from vp.transport import LocalTransport, Transport
from vp.ui import UI, Status

STOP_TIMEOUT = 300.0


def ready_timeout(cfg: Config) -> float:
    return float(cfg.host.ready_timeout)


def transport_for(host: Host, cfg: Config) -> Transport:
    kind = declaration(host.platform).kind
    if kind == "local":
        return LocalTransport()
    connect_timeout = cfg.ssh.connect_timeout
    if kind == "ssh":
        from vp.ssh import parse_target

        target = parse_target(host.id)
        target.identity_file = cfg.ssh.identity_file
        return SshTransport(target, connect_timeout)
    if not host.ssh_host:
        raise VpError(f"host {host.name} ({host.platform}) has no ssh address yet")
    alias = host.host_key_alias or f"vp-{host.platform}-{host.id}"
    target = SshTarget(
        host=host.ssh_host,
        user=host.ssh_user,
        port=host.ssh_port,
        identity_file=host.key_path,
        host_key_alias=alias,
        accept_new=not is_pinned(alias),
    )
    return SshTransport(target, connect_timeout)


def resolve(
    cfg: Config,
    state: State,
    ui: UI,
    *,
    host_name: str | None = None,
    create: bool = True,
    image: str | None = None,
) -> tuple[Host, Transport]:
    """The host this project runs on, connected and ready. `image` overrides [host] image for
    a host created now (a container platform boots the image vp just built and pushed)."""
    if len(cfg.platforms) > 1:
        return _resolve_fallback(cfg, state, ui, host_name=host_name, create=create, image=image)
    name = cfg.platform
    if name == "auto":
        return _resolve_auto(cfg, state, ui, host_name=host_name, create=create, image=image)
    kind = declaration(name).kind
    if kind == "local":
        from vp.platforms.local import LOCAL_HOST

        state.save_host(LOCAL_HOST, cfg.project)
        return LOCAL_HOST, LocalTransport()
    if kind == "ssh":
        spec = host_name or cfg.ssh.host
        if not spec:
            raise UsageError(
                "the ssh platform needs a host",
                hint='set [ssh] host = "user@host:port" (or an ~/.ssh/config alias) or pass --host',
            )
        from vp import trust
        from vp.platforms.ssh import host_for

        if not host_name:  # a --host flag is the user's own choice
            trust.require(cfg, "ssh.host", [spec])
        host = host_for(spec)
        transport = transport_for(host, cfg)
        transport.ensure()
        state.save_host(host, cfg.project)
        return host, transport
    return resolve_on(cfg, state, ui, name, host_name=host_name, create=create, image=image)


def _matches(host: Host, wanted: str | None) -> bool:
    return wanted is None or wanted in (host.id, host.name)


def with_local_facts(host: Host, state: State) -> Host:
    """The one merge of a provider's view of a host with vp's own record of it. Providers
    don't know our key file, pin alias or when vp stopped the host; the state DB does."""
    known = state.host(host.key)
    if known is None:
        return host
    labels = host.labels
    if "node" in known.labels and "node" not in labels:  # a provider that keeps no label
        labels = {**labels, "node": known.labels["node"]}
    return replace(
        host,
        labels=labels,
        key_path=host.key_path or known.key_path,
        host_key_alias=host.host_key_alias or known.host_key_alias,
        created_at=host.created_at or known.created_at,
        price=host.price if host.price is not None else known.price,
        region=host.region or known.region,
        stopped_at=(host.stopped_at or known.stopped_at) if host.status == STOPPED else None,
    )


def warm_host(
    cfg: Config, state: State, ui: UI, name: str, host_name: str | None
) -> tuple[Host, Transport] | None:
    """Warm path: a running host vp knows on `name` and reaches over ssh (no API call)."""
    from vp.platforms.cloud import node_rank

    platform: Platform | None = None
    for host in sorted(state.hosts(cfg.project, name), key=node_rank):  # rank 0 first
        if host.status == RUNNING and host.ssh_host and _matches(host, host_name):
            transport = transport_for(host, cfg)
            try:
                transport.ensure()
                return host, transport
            except ConnectionFailed as exc:
                ui.debug(f"known host {host.name} did not answer ({exc}); asking {name}")
            except HostKeyMismatch as exc:
                from vp.offers import platform_for

                platform = platform or platform_for(cfg, name)
                _mismatch(cfg, state, ui, platform, host, exc)  # returns only if it is gone
    return None


def resolve_on(
    cfg: Config,
    state: State,
    ui: UI,
    name: str,
    *,
    host_name: str | None,
    create: bool,
    image: str | None = None,
) -> tuple[Host, Transport]:
    """The project's host on platform `name`: running > stopped (started) > created."""
    from vp.offers import platform_for

    project = cfg.project
    found = warm_host(cfg, state, ui, name, host_name)
    if found is not None:
        return found
    platform = platform_for(cfg, name)
    hosts = project_hosts(platform, state, project)
    hosts = [h for h in hosts if _matches(h, host_name)]
    running = [h for h in hosts if h.status in (RUNNING, PENDING)]
    stopped = [h for h in hosts if h.status == STOPPED]
    if running:
        host = running[0]
        if host.status != RUNNING or not host.ssh_host:
            with Status(ui, f"waiting for {host.name} on {name} to be ready"):
                host = with_local_facts(platform.wait_ready(host.id, ready_timeout(cfg)), state)
    elif stopped:
        return _start(cfg, state, ui, platform, stopped[0])
    elif host_name:
        raise VpError(f"no host '{host_name}' on {name}", hint="see `vp ls`")
    elif create:
        return create_host(cfg, state, ui, platform, image=image)
    else:
        raise VpError(f"project {project} has no host on {name}", hint="create one with `vp up`")
    return host, _connect(cfg, state, platform, host)


def _connect(cfg: Config, state: State, platform: Platform, host: Host) -> Transport:
    """Record a host the provider just listed as ready, and connect to it."""
    state.save_host(host, cfg.project)
    transport = transport_for(host, cfg)
    try:
        transport.ensure()
    except HostKeyMismatch as exc:  # the provider just listed it: it is there
        raise _refusal(platform, host, exc) from None
    return transport


def _start(
    cfg: Config, state: State, ui: UI, platform: Platform, host: Host
) -> tuple[Host, Transport]:
    """Start a stopped host and wait until ssh answers, saying so with the create's spinner:
    a restart takes seconds to minutes and must not look like a hang."""
    from vp import records, spend

    require_secrets(cfg)
    spend.check(cfg, state, what=f"start {host.name}", host_key=host.key, price=host.price)
    since = f"stopped {records.age(host.stopped_at)}" if host.stopped_at else "stopped"
    with Status(ui, f"starting {host.name} ({since}) on {platform.name}"):
        platform.start(host.id)
        ready = with_local_facts(platform.wait_ready(host.id, ready_timeout(cfg)), state)
        transport = _connect(cfg, state, platform, ready)
    return ready, transport


def project_hosts(platform: Platform, state: State, project: str | None) -> list[Host]:
    """The hosts on `platform` that are the project's under the provider's ownership rule
    (its label, or vp's state having recorded creating them). Nothing else is ever adopted,
    stopped or destroyed."""
    from vp.platforms.cloud import node_rank, owned

    listed = [with_local_facts(h, state) for h in platform.list(project)]
    mine = owned(declaration(platform.name), listed, lambda h: state.host(h.key) is not None)
    return sorted(mine, key=node_rank)  # rank 0 (the project's usual host) before its nodes


def _refusal(platform: Platform, host: Host, exc: HostKeyMismatch) -> VpError:
    return VpError(
        f"{platform.name} host {host.name} ({host.id}) at {host.ssh_host}:{host.ssh_port or 22} "
        "answered with a host key that does not match the one vp pinned when it created it, "
        f"while {platform.name} says the host is still there: refusing to connect (another "
        "machine may hold its address)",
        hint=f"check the host in {platform.name}'s console; if you no longer trust it, "
        f"destroy it with `vp down {host.id}` and vp will create a new one",
    )


def _mismatch(
    cfg: Config, state: State, ui: UI, platform: Platform, host: Host, exc: HostKeyMismatch
) -> None:
    """A cloud host answered with another key: ask the provider. Gone: forget it (state, pin,
    key) and return so selection carries on. Still there: refuse (raise)."""
    try:
        now = _lookup(platform, host, cfg.project)
    except HostGone:
        now = None
    if now is not None and now.status != GONE:
        raise _refusal(platform, with_local_facts(now, state), exc) from None
    ui.warn(
        f"{platform.name} host {host.name} ({host.id}) no longer exists and another machine "
        f"now answers at {host.ssh_host}:{host.ssh_port or 22}; forgetting it"
    )
    forget(state, host)


def _lookup(platform: Platform, host: Host, project: str | None) -> Host | None:
    return next((h for h in platform.list(project) if h.id == host.id), None)


def forget(state: State, host: Host) -> None:
    """Drop every trace of a host that no longer exists: its state row, pin and key."""
    from vp.platforms.common import discard_key

    state.forget_host(host.key)
    if host.host_key_alias:
        forget_pin(host.host_key_alias)
    if host.key_path:  # the key of a host that no longer exists opens nothing
        discard_key(Path(host.key_path))


class _StateRecorder:
    """Writes a new host into vp's state the moment the provider accepted it."""

    def __init__(self, state: State, project: str | None, disk_gb: float | None = None):
        self.state, self.project, self.disk_gb = state, project, disk_gb

    def save(self, host: Host) -> None:
        self.state.save_host(host, self.project, disk_gb=self.disk_gb)

    def forget(self, host: Host) -> None:
        self.state.forget_host(host.key)


def create_host(
    cfg: Config,
    state: State,
    ui: UI,
    platform: Platform,
    name: str | None = None,
    nodes_of: str | None = None,
    *,
    image: str | None = None,
) -> tuple[Host, Transport]:
    """Create, wait for ssh, pin the host key, through the GPU fallback list (and, with
    `wait_for_capacity`, waiting for one). Any failure destroys what was made (or, if that
    fails too, leaves it recorded with its key) and says which. `name`: a node's own name;
    `nodes_of`: rank 0's name when it is a node (CloudPlatform.expect_nodes); `image`: the
    image a container host boots."""
    return _create_through(cfg, state, ui, (platform.name,), name, nodes_of, image)


def _create_through(
    cfg: Config,
    state: State,
    ui: UI,
    names: tuple[str, ...],
    name: str | None = None,
    nodes_of: str | None = None,
    image: str | None = None,
) -> tuple[Host, Transport]:
    """One create through every (platform, GPU) pair of `names` × [host] gpu (vp/capacity.py
    decides the order, when to move on and when to wait)."""
    from vp.capacity import create_with_fallback
    from vp.offers import platform_for, spec_from_config
    from vp.platforms.cloud import CloudPlatform

    require_secrets(cfg)

    def attempt(platform_name: str, gpu: str | None) -> tuple[Host, Transport]:
        spec = replace(spec_from_config(cfg), gpu=gpu)
        if image:
            spec = replace(spec, image=image)
        platform = platform_for(cfg, platform_name)
        if nodes_of and isinstance(platform, CloudPlatform):
            platform.expect_nodes(nodes_of)  # together, their ports open to each other
        made = create_request(cfg, state, ui, platform, spec, name)
        host, transport = adopt_new_host(cfg, state, ui, platform, made)
        ui.info(rented(host))
        return host, transport

    return create_with_fallback(cfg, ui, names, attempt)


def create_request(
    cfg: Config, state: State, ui: UI, platform: Platform, spec: HostSpec, name: str | None = None
) -> Host:
    """Ask `platform` for one host matching `spec`; the host it accepted (not yet ready)."""
    from vp.platforms.cloud import CloudPlatform, unhonoured

    for ignored in unhonoured(declaration(platform.name), spec):
        ui.warn(f"[host] {ignored} is ignored on {platform.name}")
    name = name or cfg.host.name or f"vp-{cfg.project}"
    _money_checks(cfg, state, ui, platform, spec, name)
    what = f"{spec.gpus}x {spec.gpu}" if spec.gpu else "a host"
    price = f" at most ${spec.max_price}/h" if spec.max_price is not None else ""
    ui.info(f"creating {what} on {platform.name}{price} as {name}")
    recorder = _StateRecorder(state, cfg.project, spec.disk_gb)
    if isinstance(platform, CloudPlatform):
        return platform.create(spec, name, recorder)
    return platform.create(spec, name)


def _resolve_fallback(
    cfg: Config,
    state: State,
    ui: UI,
    *,
    host_name: str | None,
    create: bool,
    image: str | None = None,
) -> tuple[Host, Transport]:
    """The project's host on any platform of the fallback list (running > stopped, in list
    order), else a new one through the list."""
    from vp.offers import platform_for

    names = cfg.platforms
    for name in names:  # warm path: a host vp knows and reaches costs no API call
        found = warm_host(cfg, state, ui, name, host_name)
        if found is not None:
            return found
    listed = {name: project_hosts(platform_for(cfg, name), state, cfg.project) for name in names}
    for wanted in ((RUNNING, PENDING), (STOPPED,)):
        for name in names:
            if any(h.status in wanted and _matches(h, host_name) for h in listed[name]):
                return resolve_on(cfg, state, ui, name, host_name=host_name, create=False)
    if host_name:
        raise VpError(f"no host '{host_name}' on {', '.join(names)}", hint="see `vp ls`")
    if not create:
        raise VpError(
            f"project {cfg.project} has no host on {', '.join(names)}",
            hint="create one with `vp up`",
        )
    return _create_through(cfg, state, ui, names, image=image)


def _money_checks(
    cfg: Config, state: State, ui: UI, platform: Platform, spec: HostSpec, name: str
) -> None:
    """Before a create: the budget caps at the price it would rent at, and no uncapped
    create by accident (vp/guard.py). Searching offers rents nothing."""
    from vp import guard, spend

    capped = spend.Budget.of(cfg).capped
    spend.check(cfg, state, what=f"create {name}", price=None)  # a cap already reached
    if not capped and (spec.max_price is not None or cfg.yes):
        return
    offers = platform.offers(spec)
    offer = offers[0] if offers else None
    price = offer.price if offer is not None else spec.max_price
    spend.check(cfg, state, what=f"create {name}", price=price)
    guard.confirm_create(cfg, ui, spec, offer, name)


def rented(host: Host) -> str:
    """What was rented and at what price: `rented 1x RTX 4090 at $0.36/h in Texas, US`."""
    from vp import records

    what = f"{host.gpus}x {host.gpu}" if host.gpu else f"{host.name} ({host.id})"
    price = f" at {records.money(host.price)}/h" if host.price is not None else ""
    where = f" in {host.region}" if host.region else ""
    return f"rented {what}{price}{where} on {host.platform}"


def adopt_new_host(
    cfg: Config, state: State, ui: UI, platform: Platform, host: Host
) -> tuple[Host, Transport]:
    """Wait for a host the provider just made (by create or clone) to answer ssh, and pin
    its key. Any failure, Ctrl-C included, destroys it and its key before re-raising."""
    from vp.offers import spec_from_config
    from vp.platforms.cloud import adopt

    def pin(ready: Host) -> Transport:
        transport = transport_for(ready, cfg)
        transport.ensure()
        return transport

    host, transport = adopt(
        platform,
        host,
        timeout=ready_timeout(cfg),
        recorder=_StateRecorder(state, cfg.project, spec_from_config(cfg).disk_gb),
        pin=pin,
        waiting=lambda h: Status(ui, f"waiting for {h.name} ({h.id}) to boot and answer ssh"),
    )
    ui.info(
        f"{host.name} is ready ({host.ssh_user or 'root'}@{host.ssh_host}:{host.ssh_port or 22})"
    )
    return host, transport


def host_gone(cfg: Config, state: State, host: Host) -> str | None:
    """Why `host` can never answer again (destroyed or stopped at the provider), or None.

    Asked only while reconnecting fails, so a vanished cloud host ends the wait at once
    instead of after the reconnect timeout.
    """
    from vp.offers import platform_for

    if host.platform not in clouds():
        return None
    listed = platform_for(cfg, host.platform).list(cfg.project)
    now = next((h for h in listed if h.id == host.id), None)
    if now is None or now.status == GONE:
        state.forget_host(host.key)
        return f"{host.platform} host {host.name} ({host.id}) no longer exists"
    if now.status == STOPPED:
        state.save_host(with_local_facts(now, state), cfg.project)
        return f"{host.platform} host {host.name} ({host.id}) was stopped"
    return None


def _resolve_auto(
    cfg: Config,
    state: State,
    ui: UI,
    *,
    host_name: str | None,
    create: bool,
    image: str | None = None,
) -> tuple[Host, Transport]:
    """Use a host the project already has anywhere; else create the cheapest matching offer.
    The host returned names its platform (`host.platform`); the config still says `auto`."""
    from vp.offers import cheapest

    for host in state.hosts(cfg.project):
        if host.platform in clouds() and host.status == RUNNING and _matches(host, host_name):
            transport = transport_for(host, cfg)
            try:
                transport.ensure()
                return host, transport
            except ConnectionFailed:
                continue
    offer = cheapest(cfg, ui)
    ui.info(
        f"cheapest offer: {offer.gpus}x {offer.gpu} on {offer.platform} at ${offer.price:.2f}/h"
    )
    return resolve_on(
        cfg, state, ui, offer.platform, host_name=host_name, create=create, image=image
    )


# ------------------------------------------------------------------ the lifecycle commands


def last_known(cfg: Config, state: State, host_name: str | None = None) -> Host | None:
    """The project's host as vp last knew it, with no connection and no provider call made
    (`vp sync --status`); None when vp knows none."""
    kind = kind_of(cfg.platform)
    if kind == "local":
        from vp.platforms.local import LOCAL_HOST

        return LOCAL_HOST
    if kind == "ssh":
        from vp.platforms.ssh import host_for

        spec = host_name or cfg.ssh.host
        return host_for(spec) if spec else None
    for h in state.hosts(cfg.project, None if cfg.platform == "auto" else cfg.platform):
        if _matches(h, host_name):
            return h
    return None


def find(cfg: Config, state: State, ui: UI, ident: str | None = None) -> tuple[Host, Platform]:
    """The host named `ident` (id or name) on the configured platform, or the project's one,
    as provider and state together know it."""
    from vp.offers import platform_for

    platform = platform_for(cfg)
    if kind_of(cfg.platform) in ("local", "ssh"):
        host, _t = resolve(cfg, state, ui, host_name=ident, create=False)
        return host, platform
    hosts = project_hosts(platform, state, cfg.project)
    matches = [h for h in hosts if ident is None or ident in (h.id, h.name)]
    if not matches:
        target = f"'{ident}'" if ident else f"for project {cfg.project}"
        raise VpError(f"no host {target} on {cfg.platform}", hint="see `vp ls`")
    return matches[0], platform


def find_all(
    cfg: Config, state: State, ui: UI, ident: str | None = None
) -> tuple[list[Host], Platform]:
    """`find`'s host and, with no `ident` on a cloud platform, the project's nodes of rank >= 1
    (vp/nodes.py): what `vp stop` / `vp down` with no host named act on, so the other hosts
    of a multi-node run are never left billing. Rank order."""
    from vp.offers import platform_for
    from vp.platforms.cloud import node_rank

    if ident is not None or kind_of(cfg.platform) in ("local", "ssh"):
        target, platform = find(cfg, state, ui, ident)
        return [target], platform
    platform = platform_for(cfg)
    hosts = project_hosts(platform, state, cfg.project)  # rank 0 first
    if not hosts:
        raise VpError(f"no host for project {cfg.project} on {cfg.platform}", hint="see `vp ls`")
    return [hosts[0]] + [h for h in hosts[1:] if node_rank(h)], platform


def ranks_marked(hosts: list[Host]) -> list[Host]:
    """For showing: where a project has nodes of rank >= 1 on a platform, its first host of
    rank 0 (the one a run takes as rank 0) is marked node 0 too. Never saved: the mark
    stands only while the nodes exist."""
    from vp.platforms.cloud import node_rank

    groups = {(h.platform, h.labels.get("project")) for h in hosts if node_rank(h)}
    out, marked = [], set()
    for h in hosts:
        group = (h.platform, h.labels.get("project"))
        if group in groups and group not in marked and not node_rank(h):
            marked.add(group)
            h = replace(h, labels={**h.labels, "node": "0"})
        out.append(h)
    return out


def list_hosts(cfg: Config, state: State, *, all_projects: bool = False) -> list[Host]:
    """The project's hosts (or, `all_projects`, every vp host) on the configured platform.
    Listing refreshes what vp knows of its own hosts (address, status) for the warm path."""
    from vp.offers import platform_for

    if kind_of(cfg.platform) not in ("vm", "container"):
        return platform_for(cfg).list(None if all_projects else cfg.project)
    hosts = []
    for name in cfg.platforms:  # every platform of a fallback list
        hosts += project_hosts(
            platform_for(cfg, name), state, None if all_projects else cfg.project
        )
    if not all_projects:
        for host in hosts:
            if state.host(host.key) is not None:
                state.save_host(host, cfg.project)
    return ranks_marked(hosts)  # after saving: the node 0 mark is for showing only


def status(cfg: Config, state: State, ui: UI, ident: str | None = None) -> Host:
    """The project's host as it is now (no connection made to a cloud host)."""
    if kind_of(cfg.platform) in ("local", "ssh"):
        host, _t = resolve(cfg, state, ui, host_name=ident, create=False)
        return host
    host, _p = find(cfg, state, ui, ident)
    return host


def require_secrets(cfg: Config) -> None:
    """The project's `[secrets] required` must all be set before a host is created or started
    for it (a one-line error saying how to set them): a run that cannot have its token would
    otherwise be found out only after a host was rented and booted. Every path that creates or
    starts a host calls this first: `vp up`, `vp start` (the web page's start too), runs and
    `vp setup` (vp/run.py, vp/nodes.py), and, as the last net, the create and start steps."""
    secretstore.for_project(cfg)


def up(cfg: Config, state: State, ui: UI, ident: str | None = None) -> Host:
    """The project's host, running and answering ssh: reused, started or created."""
    require_secrets(cfg)
    host, _t = resolve(cfg, state, ui, host_name=ident)
    return host


def start(cfg: Config, state: State, ui: UI, ident: str | None = None) -> Host:
    """Start a stopped host and wait until ssh answers."""
    require_secrets(cfg)
    target, platform = find(cfg, state, ui, ident)
    host, _t = _start(cfg, state, ui, platform, target)
    return host


@dataclass
class Stopped:
    """What `stop` did: `done` False when the provider still said stopping at the timeout."""

    host: Host
    done: bool


def stop(
    cfg: Config, state: State, ui: UI, ident: str | None = None, *, timeout: float = STOP_TIMEOUT
) -> list[Stopped]:
    """Stop a host (with no `ident`: the project's, and its nodes of a multi-node run) and
    return once billing for compute has stopped (not when the provider accepted the
    request), recording when vp stopped it."""
    targets, platform = find_all(cfg, state, ui, ident)
    names = ", ".join(f"{t.name} ({t.id})" for t in targets)
    with Status(ui, f"stopping {names} on {platform.name}"):
        for target in targets:
            platform.stop(target.id)
        reached = [
            wait_for_status(platform, cfg.project, target, STOPPED, timeout) for target in targets
        ]
    out = []
    for target, now in zip(targets, reached, strict=True):
        stopped = replace(now or target, status=now.status if now else PENDING)
        if stopped.status == STOPPED:
            stopped = replace(stopped, stopped_at=time.time())
        if state.host(target.key) is not None:
            state.save_host(with_local_facts(stopped, state), cfg.project)
        out.append(Stopped(with_local_facts(stopped, state), done=now is not None))
    return out


def wait_for_status(
    platform: Platform, project: str | None, target: Host, status: str, timeout: float
) -> Host | None:
    """Poll the provider until `target` reaches `status`; None at the timeout. A host that
    disappeared altogether counts as stopped: it certainly bills for no compute."""

    def reached() -> Host | None:
        now = next((h for h in platform.list(project) if h.id == target.id), None)
        if now is None:
            return replace(target, status=status)
        return now if now.status == status else None

    try:
        return poll(
            reached,
            timeout=timeout,
            interval=0.2,
            backoff=1.5,
            max_interval=5.0,
            what=f"{target.name} to be {status}",
        )
    except PollTimeout:
        return None


@dataclass
class Destroyed:
    host: Host
    ssh_aliases_removed: list[str] = field(default_factory=list)


def down(
    cfg: Config,
    state: State,
    ui: UI,
    ident: str | None = None,
    *,
    confirm: Callable[[list[Host]], bool] | None = None,
) -> list[Destroyed]:
    """Destroy a host (with no `ident`: the project's, and its nodes of a multi-node run) and
    its disk, and every trace vp kept of it: its shared connection, state row and the
    `vp ssh-config` alias. `confirm(hosts)` False: nothing happens (an empty list)."""
    if kind_of(cfg.platform) in ("local", "ssh"):
        raise UsageError(f"the {cfg.platform} platform has no hosts to destroy")
    targets, platform = find_all(cfg, state, ui, ident)
    if confirm is not None and not confirm(targets):
        return []
    from vp import sshconfig

    out = []
    for target in targets:
        platform.destroy(target.id)
        known = state.host(target.key)
        if known is not None and known.ssh_host:
            transport_for(known, cfg).close()  # its shared connection would linger 10 minutes
        state.forget_host(target.key)
        out.append(Destroyed(target, list(sshconfig.remove_blocks_of_host(target.key))))
    return out


def modify(
    cfg: Config,
    state: State,
    ui: UI,
    ident: str | None = None,
    *,
    gpu: str | None = None,
    gpus: int | None = None,
    cpus: int | None = None,
    disk_gb: int | None = None,
) -> Host:
    """Change a host's hardware in place and wait until it is ready again."""
    from vp.offers import platform_for

    platform = platform_for(cfg)
    if not isinstance(platform, SupportsModify):
        raise UsageError(f"{cfg.platform} cannot modify hosts")
    if gpu is None and gpus is None and cpus is None and disk_gb is None:
        raise UsageError("nothing to modify", hint="pass --gpu, --gpus, --cpus or --disk-gb")
    target, _p = find(cfg, state, ui, ident)
    with Status(ui, f"modifying {target.name} ({target.id}) on {cfg.platform}"):
        changed = platform.modify(target.id, cpus=cpus, gpu=gpu, gpus=gpus, disk_gb=disk_gb)
        ready = platform.wait_ready(target.id, ready_timeout(cfg))
    # The key and pin alias stay; the price vp remembered was the old hardware's.
    price = ready.price if ready.price is not None else changed.price
    ready = replace(with_local_facts(ready, state), price=price)
    state.save_host(ready, cfg.project)
    return ready


def clone(cfg: Config, state: State, ui: UI, ident: str | None, name: str) -> Host:
    """A new host from a host's disk, ready and pinned. Its `labels["snapshot"]` names the
    snapshot a provider kept (billed storage)."""
    from vp.offers import platform_for

    platform = platform_for(cfg)
    if not isinstance(platform, SupportsClone):
        raise UsageError(f"{cfg.platform} cannot clone hosts")
    require_secrets(cfg)
    source, _p = find(cfg, state, ui, ident)
    ui.info(f"cloning {source.name} ({source.id}) on {cfg.platform} as {name}")
    made, _t = adopt_new_host(cfg, state, ui, platform, platform.clone(source.id, name))
    return made
