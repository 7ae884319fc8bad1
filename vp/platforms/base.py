"""The small surface every provider implements, and the plain data that flows out of it.

Provider quirks (status names, field layouts, SDK errors) stay inside each provider's module;
the rest of vp only sees `Host`, `HostSpec` and `Offer`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

# The few states the rest of vp knows. Each provider maps its own strings onto these.
RUNNING = "running"
STOPPED = "stopped"
PENDING = "pending"  # being created / starting / stopping: wait
GONE = "gone"  # terminated / destroyed / failed
UNKNOWN = "unknown"


@dataclass
class HostSpec:
    """What the project asks for (`[host]` in vp.toml)."""

    gpu: str | None = None
    gpus: int = 1
    max_price: float | None = None  # $/h, never exceeded
    disk_gb: int = 50
    image: str | None = None
    spot: bool = False
    cpus: int | None = None
    memory_gb: int | None = None
    region: str | None = None
    idle_stop_minutes: float | None = None


@dataclass
class Offer:
    """Something a provider would rent us, with its price per hour."""

    platform: str
    id: str
    gpu: str
    gpus: int
    price: float
    region: str | None = None
    spot: bool = False
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Host:
    """A machine vp can ssh to. Plain data: platforms produce it, ssh/sync/run consume it."""

    id: str
    name: str
    platform: str
    status: str = RUNNING
    gpu: str | None = None
    gpus: int = 0
    price: float | None = None  # $/h
    ssh_user: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # Path of the private key vp made for this host (cloud hosts); None: the user's own ssh setup.
    key_path: str | None = None
    # Name under which the host key is pinned; stable across ip/port changes on restart.
    host_key_alias: str | None = None
    created_at: float | None = None
    region: str | None = None  # where the provider placed it, as it names it ("Texas, US")
    stopped_at: float | None = None  # when vp stopped it (vp's state; providers don't say)

    @property
    def key(self) -> str:
        """Identity in vp's state DB: provider plus provider id."""
        return f"{self.platform}:{self.id}"

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Platform(Protocol):
    """One provider. Every method may raise `vp.errors.VpError` with a one-line message."""

    name: str

    def list(self, project: str | None = None) -> list[Host]: ...

    def offers(self, spec: HostSpec) -> list[Offer]: ...

    def create(self, spec: HostSpec, name: str) -> Host: ...

    def start(self, host_id: str) -> Host: ...

    def stop(self, host_id: str) -> None: ...

    def destroy(self, host_id: str) -> None: ...

    def wait_ready(self, host_id: str, timeout: float) -> Host: ...


# Capabilities only some providers have. A provider that lacks one simply does not implement
# it: callers ask `isinstance(platform, SupportsModify)`, never catch NotImplementedError.


@runtime_checkable
class SupportsModify(Protocol):
    """Change a host's hardware in place (its disk and address stay; it may reboot)."""

    def modify(
        self,
        host_id: str,
        *,
        cpus: int | None = None,
        gpu: str | None = None,
        gpus: int | None = None,
        disk_gb: int | None = None,
    ) -> Host: ...


@runtime_checkable
class SupportsClone(Protocol):
    """Make a new host from an existing host's disk. The new host has its own key pair; a
    clone that fails after the provider accepted it is destroyed, as a failed create is."""

    def clone(self, host_id: str, name: str) -> Host: ...
