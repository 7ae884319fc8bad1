"""Any machine you can already ssh to: an ~/.ssh/config alias or user@host:port. No lifecycle."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vp.errors import UsageError
from vp.platforms.base import RUNNING, Host, HostSpec, Offer
from vp.platforms.declare import Declaration
from vp.ssh import parse_target

if TYPE_CHECKING:
    from vp.config import SshTable

DECLARATION = Declaration(
    name="ssh",
    kind="ssh",
    ownership=None,  # the user's own machine: vp never creates, stops or destroys it
    honours=frozenset({"image"}),
    private_network=True,
    network=("your machines: each reports its own address; their network is yours to open"),
)


def host_for(spec: str) -> Host:
    target = parse_target(spec)
    return Host(
        id=spec,
        name=spec,
        platform="ssh",
        status=RUNNING,
        ssh_user=target.user,
        ssh_host=target.host,
        ssh_port=target.port,
    )


class SshPlatform:
    name = "ssh"

    def __init__(self, host: str | None = None):
        self.host = host

    def list(self, project: str | None = None) -> list[Host]:
        return [host_for(self.host)] if self.host else []

    def offers(self, spec: HostSpec) -> list[Offer]:
        return []

    def _no_lifecycle(self, what: str) -> UsageError:
        return UsageError(
            f"the ssh platform cannot {what} hosts", hint="manage the machine yourself"
        )

    def create(self, spec: HostSpec, name: str) -> Host:
        raise self._no_lifecycle("create")

    def start(self, host_id: str) -> Host:
        raise self._no_lifecycle("start")

    def stop(self, host_id: str) -> None:
        raise self._no_lifecycle("stop")

    def destroy(self, host_id: str) -> None:
        raise self._no_lifecycle("destroy")

    def wait_ready(self, host_id: str, timeout: float) -> Host:
        return host_for(host_id)


def create_platform(settings: SshTable | None) -> SshPlatform:
    """From vp's own [ssh] table (`Config.ssh`): this provider has no table of its own."""
    return SshPlatform(settings.host if settings else None)
