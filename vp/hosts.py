"""Pick the project's host: a running one > a stopped one (start it) > create one from [host].

The warm path (a host vp already knows and can reach) makes no provider API call; the API is
asked only when ssh fails or no host is known. A create that fails after the provider accepted
it destroys what it made, so a failure never leaves a billed instance behind.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vp.config import Config, check_platform_endpoint
from vp.errors import ConnectionFailed, HostGone, UsageError, VpError
from vp.platforms import clouds, declaration, get_platform
from vp.platforms.base import GONE, PENDING, RUNNING, STOPPED, Host, HostSpec, Platform
from vp.platforms.cloud import CloudPlatform, adopt, owned, unhonoured
from vp.platforms.common import discard_key
from vp.ssh import HostKeyMismatch, SshTarget, SshTransport, forget_pin, is_pinned
from vp.state import State
from vp.transport import LocalTransport, Transport
from vp.ui import UI, Status


def spec_from_config(cfg: Config) -> HostSpec:
    h = cfg.host
    return HostSpec(
        gpu=cfg.gpus_wanted[0],  # a fallback list is walked by vp/capacity.py
        gpus=h.gpus,
        max_price=h.max_price,
        disk_gb=h.disk_gb,
        image=h.image,
        spot=h.spot,
        cpus=h.cpus,
        memory_gb=h.memory_gb,
        region=h.region,
        idle_stop_minutes=h.idle_stop_minutes,
    )


def platform_for(cfg: Config, name: str | None = None) -> Platform:
    name = name or cfg.platform
    check_platform_endpoint(name)  # VAST_URL & co. get the same https rule as a file's url
    return get_platform(name, cfg.section(name))


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
) -> tuple[Host, Transport]:
    """The host this project runs on, connected and ready."""
    if len(cfg.platforms) > 1:
        from vp.capacity import resolve_fallback

        return resolve_fallback(cfg, state, ui, host_name=host_name, create=create)
    name = cfg.platform
    if name == "auto":
        return _resolve_auto(cfg, state, ui, host_name=host_name, create=create)
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
        from vp.platforms.ssh import host_for

        host = host_for(spec)
        transport = transport_for(host, cfg)
        transport.ensure()
        state.save_host(host, cfg.project)
        return host, transport
    return resolve_on(cfg, state, ui, name, host_name=host_name, create=create)


def _matches(host: Host, wanted: str | None) -> bool:
    return wanted is None or wanted in (host.id, host.name)


def with_local_facts(host: Host, state: State) -> Host:
    """Providers don't know our key file or pin alias; the state DB does."""
    known = state.host(host.key)
    if known is None:
        return host
    return replace(
        host,
        key_path=host.key_path or known.key_path,
        host_key_alias=host.host_key_alias or known.host_key_alias,
        created_at=host.created_at or known.created_at,
        price=host.price if host.price is not None else known.price,
    )


def warm_host(
    cfg: Config, state: State, ui: UI, name: str, host_name: str | None
) -> tuple[Host, Transport] | None:
    """Warm path: a running host vp knows on `name` and reaches over ssh (no API call)."""
    platform: Platform | None = None
    for host in state.hosts(cfg.project, name):
        if host.status == RUNNING and host.ssh_host and _matches(host, host_name):
            transport = transport_for(host, cfg)
            try:
                transport.ensure()
                return host, transport
            except ConnectionFailed as exc:
                ui.debug(f"known host {host.name} did not answer ({exc}); asking {name}")
            except HostKeyMismatch as exc:
                platform = platform or platform_for(cfg, name)
                _mismatch(cfg, state, ui, platform, host, exc)  # returns only if it is gone
    return None


def resolve_on(
    cfg: Config, state: State, ui: UI, name: str, *, host_name: str | None, create: bool
) -> tuple[Host, Transport]:
    """The project's host on platform `name`: running > stopped (started) > created."""
    project = cfg.project
    found = warm_host(cfg, state, ui, name, host_name)
    if found is not None:
        return found
    platform = platform_for(cfg, name)
    hosts = project_hosts(platform, state, project)
    hosts = [h for h in hosts if _matches(h, host_name)]
    timeout = float(cfg.host.ready_timeout)
    running = [h for h in hosts if h.status in (RUNNING, PENDING)]
    stopped = [h for h in hosts if h.status == STOPPED]
    if running:
        host = running[0]
        if host.status != RUNNING or not host.ssh_host:
            ui.info(f"waiting for {host.name} on {name} to be ready")
            host = with_local_facts(platform.wait_ready(host.id, timeout), state)
    elif stopped:
        host = stopped[0]
        from vp import spend

        spend.check(cfg, state, what=f"start {host.name}", host_key=host.key, price=host.price)
        ui.info(f"starting stopped host {host.name} on {name}")
        platform.start(host.id)
        host = with_local_facts(platform.wait_ready(host.id, timeout), state)
    elif host_name:
        raise VpError(f"no host '{host_name}' on {name}", hint="see `vp ls`")
    elif create:
        return create_host(cfg, state, ui, platform)
    else:
        raise VpError(f"project {project} has no host on {name}", hint="create one with `vp up`")
    state.save_host(host, project)
    transport = transport_for(host, cfg)
    try:
        transport.ensure()
    except HostKeyMismatch as exc:  # the provider just listed it: it is there
        raise _refusal(platform, host, exc) from None
    return host, transport


def project_hosts(platform: Platform, state: State, project: str | None) -> list[Host]:
    """The hosts on `platform` that are the project's under the provider's ownership rule
    (its label, or vp's state having recorded creating them). Nothing else is ever adopted,
    stopped or destroyed."""
    listed = [with_local_facts(h, state) for h in platform.list(project)]
    return owned(declaration(platform.name), listed, lambda h: state.host(h.key) is not None)


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
) -> tuple[Host, Transport]:
    """Create, wait for ssh, pin the host key, through the GPU fallback list (and, with
    `wait_for_capacity`, waiting for one). Any failure destroys what was made (or, if that
    fails too, leaves it recorded with its key) and says which. `name`: a node's own name;
    `nodes_of`: rank 0's name when it is a node (CloudPlatform.expect_nodes)."""
    from vp.capacity import create_with_fallback

    return create_with_fallback(cfg, state, ui, (platform.name,), name=name, nodes_of=nodes_of)


def create_request(
    cfg: Config, state: State, ui: UI, platform: Platform, spec: HostSpec, name: str | None = None
) -> Host:
    """Ask `platform` for one host matching `spec`; the host it accepted (not yet ready)."""
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


def adopt_new_host(
    cfg: Config, state: State, ui: UI, platform: Platform, host: Host, what: str
) -> tuple[Host, Transport]:
    """Wait for a host the provider just made (by create or clone) to answer ssh, and pin
    its key. Any failure, Ctrl-C included, destroys it and its key before re-raising."""

    def pin(ready: Host) -> Transport:
        transport = transport_for(ready, cfg)
        transport.ensure()
        return transport

    host, transport = adopt(
        platform,
        host,
        timeout=float(cfg.host.ready_timeout),
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
    cfg: Config, state: State, ui: UI, *, host_name: str | None, create: bool
) -> tuple[Host, Transport]:
    """Use a host the project already has anywhere; else create the cheapest matching offer."""
    for host in state.hosts(cfg.project):
        if host.platform in clouds() and host.status == RUNNING and _matches(host, host_name):
            transport = transport_for(host, cfg)
            try:
                transport.ensure()
                return host, transport
            except ConnectionFailed:
                continue
    from vp.offers import cheapest

    offer = cheapest(cfg, ui)
    ui.info(
        f"cheapest offer: {offer.gpus}x {offer.gpu} on {offer.platform} at ${offer.price:.2f}/h"
    )
    cfg = cfg.replace("host", platform=offer.platform)
    return resolve_on(cfg, state, ui, offer.platform, host_name=host_name, create=create)
