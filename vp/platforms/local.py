"""The embedded default: this machine, a workspace folder under $XDG_DATA_HOME/vp/local/.

It runs the same pipeline as a remote host (sync, detached run with log and exit code,
download with the conflict rule), so `vp` works on first install and behaves the same later.
"""

from __future__ import annotations

from vp.errors import UsageError
from vp.platforms.base import RUNNING, Host, HostSpec, Offer
from vp.platforms.declare import Declaration

DECLARATION = Declaration(
    name="local",
    kind="local",
    ownership=None,  # this machine: nothing to own
    honours=frozenset({"image"}),  # the docker image, when [docker] is enabled
)

LOCAL_HOST = Host(id="local", name="local", platform="local", status=RUNNING, price=0.0)


class LocalPlatform:
    name = "local"

    def list(self, project: str | None = None) -> list[Host]:
        return [LOCAL_HOST]

    def offers(self, spec: HostSpec) -> list[Offer]:
        return [Offer(platform="local", id="local", gpu="local", gpus=0, price=0.0)]

    def create(self, spec: HostSpec, name: str) -> Host:
        return LOCAL_HOST

    def start(self, host_id: str) -> Host:
        return LOCAL_HOST

    def stop(self, host_id: str) -> None:
        raise UsageError("the local platform cannot be stopped")

    def destroy(self, host_id: str) -> None:
        raise UsageError("the local platform cannot be destroyed")

    def wait_ready(self, host_id: str, timeout: float) -> Host:
        return LOCAL_HOST


def create_platform(settings: object) -> LocalPlatform:
    return LocalPlatform()
