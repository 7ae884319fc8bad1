"""RunPod: GPU pods through the `runpod` SDK (GraphQL underneath).

Hosts are vp's when the pod is named `vp-PROJECT` (`vp-PROJECT.R`: node R of a multi-node run,
shown as `vp-PROJECT-R`; vp/platforms/cloud.py split_node_label). The key pair made for each pod
reaches it as the `PUBLIC_KEY` env var (RunPod images append it to authorized_keys); the pod is
created with `ports="22/tcp"` and a public IP so sshd gets a public port. The SDK never reads
RUNPOD_API_KEY, so vp sets `runpod.api_key`; it reads RUNPOD_API_BASE_URL itself on every call.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Any

from vp import credentials, keys
from vp.credentials import Credential, CredentialFile, Resolved
from vp.errors import HostGone, UsageError, VpError
from vp.idle import from_pid1
from vp.platforms import gpus
from vp.platforms.base import GONE, PENDING, RUNNING, STOPPED, UNKNOWN, Host, HostSpec, Offer
from vp.platforms.cloud import (
    Capacity,
    CloudPlatform,
    CloudSettings,
    Declaration,
    NotFound,
    Ownership,
    labelled,
    node_host_name,
    split_node_label,
)
from vp.platforms.common import describe, no_offer, quiet_stdout
from vp.settings import positive, setting

# desiredStatus -> vp state (refined by `runtime`: null while the container is not up).
STATUS: dict[str, str] = {
    "CREATED": PENDING,
    "RESTARTING": PENDING,
    "RUNNING": RUNNING,
    "EXITED": STOPPED,
    "PAUSED": STOPPED,
    "DEAD": GONE,
    "TERMINATED": GONE,
}

DEFAULT_IMAGE = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
EXTRA_HINT = "pip install 'vp-runner[runpod]'"
CAPACITY_ERRORS = ("no longer any instances", "not enough free gpus", "no instances available")
NOT_FOUND_ERRORS = ("not found", "could not find", "does not exist")

GPU_QUERY = """
query GpuTypes {
  gpuTypes {
    id
    displayName
    memoryInGb
    maxGpuCount
    lowestPrice(input: {gpuCount: %d}) {
      minimumBidPrice
      uninterruptablePrice
      stockStatus
    }
  }
}
"""


@dataclass(frozen=True)
class RunPodSettings(CloudSettings):
    """[runpod]"""

    api_key: str | None = None
    image: str | None = None
    cloud_type: str = "ALL"  # ALL, SECURE or COMMUNITY
    container_disk_gb: int = positive(20)
    user: str | None = setting(check="user_name")


DECLARATION = Declaration(
    name="runpod",
    kind="container",
    ownership=Ownership.LABEL,  # pod name `vp-PROJECT`
    # A stopped pod's volume disk: $0.20/GB/month (runpod.io/pricing, "idle volume", 2026-12).
    storage_price=0.20,
    settings=RunPodSettings,
    secrets=("api_key",),
    # `runpod config` (the SDK's CLI) keeps it in ~/.runpod/config.toml.
    credential=Credential(
        key="api_key",
        env="RUNPOD_API_KEY",
        files=(CredentialFile("~/.runpod/config.toml", ("default", "api_key")),),
    ),
    # The scoped key RunPod injects into the pod may stop it.
    idle_stop=from_pid1("RUNPOD_POD_ID", "RUNPOD_API_KEY") + 'runpodctl stop pod "$RUNPOD_POD_ID"',
    # Spot: interruptible pods (podRentInterruptable). No region or memory choice.
    honours=frozenset({"gpu", "gpus", "max_price", "disk_gb", "image", "spot"}),
    endpoint_env="RUNPOD_API_BASE_URL",
    noun="RunPod pod",
    provider="RunPod",
)


def create_platform(settings: RunPodSettings | dict[str, Any] | None) -> RunPodPlatform:
    return RunPodPlatform(settings)


class RunPodPlatform(CloudPlatform):
    """RunPod GPU pods, named `vp-PROJECT`."""

    declaration = DECLARATION
    status_label = "runpod_status"
    ready_hint = "raise [host] ready_timeout, or try another gpu"

    def __init__(self, settings: RunPodSettings | dict[str, Any] | None = None):
        super().__init__(settings)
        self._sdk_module: Any = None
        self._key: Resolved | None = None

    # -- the provider calls ------------------------------------------------------------------

    def list(self, project: str | None = None) -> list[Host]:
        pods = self._call("list pods", lambda rp: rp.get_pods())
        return [self._host(p) for p in labelled(pods, project, lambda p: str(p.get("name") or ""))]

    def _no_offer(self, spec: HostSpec, found: list[Offer]) -> VpError:
        return no_offer(
            spec,
            found,
            what="RunPod GPU",
            platform="runpod",
            unmatched=f"no RunPod GPU type matches {describe(spec)}",
        )

    def _launch(self, offer: Offer, spec: HostSpec, name: str, key: keys.KeyPair) -> str:
        image = spec.image or self.settings.image or DEFAULT_IMAGE
        name = self.label_of(name)
        _check_literal("pod name", name)
        _check_literal("image", image)
        _check_literal("public key", key.public_key)
        if spec.spot:
            return self._rent_interruptible(offer, spec, name, image, key)
        result = self._call(
            "create a pod",
            lambda rp: rp.create_pod(
                name=name,
                image_name=image,
                gpu_type_id=offer.id,
                cloud_type=self.settings.cloud_type,
                support_public_ip=True,
                start_ssh=True,
                gpu_count=int(spec.gpus),
                container_disk_in_gb=self.settings.container_disk_gb,
                volume_in_gb=int(spec.disk_gb),
                volume_mount_path="/workspace",
                ports="22/tcp",
                env={"PUBLIC_KEY": key.public_key},
            ),
        )
        return str(result["id"])

    def _rent_interruptible(
        self, offer: Offer, spec: HostSpec, name: str, image: str, key: keys.KeyPair
    ) -> str:
        """A spot pod at the offer's bid: the SDK has no call for it, so vp sends the
        podRentInterruptable mutation itself (fields of PodRentInterruptableInput)."""
        bid = round(offer.price / max(1, spec.gpus), 4)
        fields = ", ".join(
            [
                f'name: "{name}"',
                f'imageName: "{image}"',
                f'gpuTypeId: "{offer.id}"',
                f"bidPerGpu: {bid}",
                f"cloudType: {self.settings.cloud_type}",
                f"gpuCount: {int(spec.gpus)}",
                f"volumeInGb: {int(spec.disk_gb)}",
                f"containerDiskInGb: {self.settings.container_disk_gb}",
                'volumeMountPath: "/workspace"',
                'ports: "22/tcp"',
                "startSsh: true",
                "supportPublicIp: true",
                f'env: [{{ key: "PUBLIC_KEY", value: "{key.public_key}" }}]',
            ]
        )
        query = f"mutation {{ podRentInterruptable(input: {{ {fields} }}) {{ id desiredStatus }} }}"
        result = self._call("rent a spot pod", lambda rp: _graphql(rp, query))
        return str(result["data"]["podRentInterruptable"]["id"])

    def _launched(self, name: str, key: keys.KeyPair) -> list[str]:
        # The pod's PUBLIC_KEY is the key made for this create alone.
        wanted = f"PUBLIC_KEY={key.public_key}"
        pods = self._call("list pods", lambda rp: rp.get_pods())
        return [
            str(p["id"])
            for p in pods or []
            if p.get("name") == self.label_of(name) and wanted in (p.get("env") or [])
        ]

    def _accepted(self, host_id: str, spec: HostSpec, name: str, key: keys.KeyPair) -> Host:
        host = self._get(host_id)
        if spec.max_price is not None and host.price and host.price > spec.max_price:
            raise VpError(
                f"RunPod placed the pod at ${host.price:.2f}/h, above max_price "
                f"${spec.max_price:.2f}/h"
            )
        return host

    def start(self, host_id: str) -> Host:
        pod = self._pod(host_id)
        count = int(pod.get("gpuCount") or 1)
        self._call("resume the pod", lambda rp: rp.resume_pod(_pod_id(host_id), count))
        return self._get(host_id)

    def stop(self, host_id: str) -> None:
        self._call("stop the pod", lambda rp: rp.stop_pod(_pod_id(host_id)))

    def destroy(self, host_id: str) -> None:
        with contextlib.suppress(NotFound):  # already gone: that is what we wanted
            self._call("terminate the pod", lambda rp: rp.terminate_pod(_pod_id(host_id)))

    # -- internals -------------------------------------------------------------------------------

    def _search(self, spec: HostSpec) -> list[Offer]:
        from_sdk = self._call(
            "list GPU types",
            lambda rp: _graphql(rp, GPU_QUERY % int(spec.gpus))["data"]["gpuTypes"],
        )
        found = []
        for gpu in from_sdk or []:
            memory = gpu.get("memoryInGb")
            names = (str(gpu.get("id") or ""), str(gpu.get("displayName") or ""))
            if not any(gpus.matches(spec.gpu, n, memory) for n in names):
                continue
            if gpu.get("maxGpuCount") and spec.gpus > gpu["maxGpuCount"]:
                continue
            lowest = gpu.get("lowestPrice") or {}
            per_gpu = lowest.get("minimumBidPrice" if spec.spot else "uninterruptablePrice")
            if not per_gpu:
                continue  # not in stock for this count
            found.append(
                Offer(
                    platform="runpod",
                    id=str(gpu["id"]),
                    gpu=str(gpu.get("displayName") or gpu["id"]),
                    gpus=int(spec.gpus),
                    price=round(float(per_gpu) * spec.gpus, 4),
                    spot=bool(spec.spot),
                    extra={
                        "gpu_ram_gb": gpu.get("memoryInGb"),
                        "stock": lowest.get("stockStatus"),
                    },
                )
            )
        return sorted(found, key=lambda o: o.price)

    def _pod(self, host_id: str) -> dict:
        pod = self._call("look up the pod", lambda rp: rp.get_pod(_pod_id(host_id)))
        if not pod:
            raise HostGone(f"RunPod pod {host_id} no longer exists")
        return pod

    def _get(self, host_id: str) -> Host:
        return self._host(self._pod(host_id))

    def _host(self, pod: dict) -> Host:
        pod_id = str(pod["id"])
        desired = str(pod.get("desiredStatus") or "")
        runtime = pod.get("runtime")
        status = STATUS.get(desired, UNKNOWN)
        if status == RUNNING and not runtime:
            status = PENDING  # the container is not up yet
        elif status == STOPPED and runtime:
            status = PENDING  # stopping
        ssh_host = ssh_port = None
        if status == RUNNING:
            for port in (runtime or {}).get("ports") or []:
                if port.get("privatePort") == 22 and port.get("isIpPublic"):
                    ssh_host, ssh_port = str(port["ip"]), int(port["publicPort"])
                    break
            if ssh_host is None:
                status = PENDING  # no public ssh port (yet)
        name = str(pod.get("name") or f"runpod-{pod_id}")
        labels = {
            "runpod_status": desired or "unknown",
            "market": "spot" if pod.get("podType") == "INTERRUPTABLE" else "on-demand",
        }
        if pod.get("imageName"):
            labels["image"] = str(pod["imageName"])
        group, rank = split_node_label(name)
        if group.startswith("vp-"):
            labels["project"] = group[3:]
            if rank:
                labels["node"] = str(rank)
        name = node_host_name(name)
        return Host(
            id=pod_id,
            name=name,
            platform="runpod",
            status=status,
            gpu=(pod.get("machine") or {}).get("gpuDisplayName"),
            gpus=int(pod.get("gpuCount") or 0),
            price=pod.get("costPerHr"),
            ssh_user=self.settings.user or "root",
            ssh_host=ssh_host,
            ssh_port=ssh_port,
            labels=labels,
            key_path=self._key_paths.get(pod_id),
            host_key_alias=f"vp-runpod-{pod_id}",
        )

    def _sdk(self) -> Any:
        if self._sdk_module is None:
            key = credentials.resolve(DECLARATION, self.settings)
            try:
                with quiet_stdout():
                    import runpod
            except ImportError:
                raise VpError(
                    "the runpod platform needs the runpod package", hint=EXTRA_HINT
                ) from None
            self._sdk_module = runpod
            self._key = key
        assert self._key is not None
        # Module-global in the SDK: set before every call.
        self._sdk_module.api_key = self._key.value
        return self._sdk_module

    def _call(self, what: str, fn: Any) -> Any:
        """Run one SDK call with its stdout captured; turn its errors into one-line VpErrors."""
        import requests

        rp = self._sdk()
        from runpod import error as rp_error

        try:
            with quiet_stdout():
                return fn(rp)
        except rp_error.AuthenticationError:
            assert self._key is not None
            raise credentials.rejected(DECLARATION, self._key) from None
        except rp_error.QueryError as exc:
            message = _one_line(str(exc.message or exc))
            lowered = message.lower()
            if any(marker in lowered for marker in CAPACITY_ERRORS):
                raise Capacity(message) from None
            if any(marker in lowered for marker in NOT_FOUND_ERRORS):
                raise NotFound(f"RunPod: {message}") from None
            raise VpError(f"RunPod could not {what}: {message}") from None
        except requests.RequestException as exc:
            base = os.environ.get("RUNPOD_API_BASE_URL", "https://api.runpod.io")
            raise VpError(
                f"cannot reach RunPod at {base} to {what}: {type(exc).__name__}",
                hint="check the network, or RUNPOD_API_BASE_URL if you set it",
            ) from None
        except (ValueError, KeyError, TypeError) as exc:  # SDK-side validation, odd answers
            raise VpError(f"RunPod could not {what}: {_one_line(str(exc))}") from None


def _graphql(rp: Any, query: str) -> dict:
    from runpod.api.graphql import run_graphql_query

    return run_graphql_query(query, api_key=rp.api_key)


def _pod_id(host_id: str) -> str:
    """Pod ids go into the SDK's GraphQL text as they are: only accept what an id looks like."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(host_id)):
        raise UsageError(f"'{host_id}' is not a RunPod pod id")
    return str(host_id)


def _check_literal(what: str, value: str) -> None:
    """The SDK pastes values into its GraphQL text unescaped: refuse what would break out."""
    if any(c in value for c in '"\\\n\r'):
        raise VpError(f"the {what} {value!r} cannot contain quotes, backslashes or newlines")


def _one_line(text: str) -> str:
    return " ".join(text.split())
