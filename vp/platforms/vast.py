"""vast.ai: rent a container on the vast.ai marketplace through the `vastai` SDK.

Hosts are vp's when their label is `vp-PROJECT` (`vp-PROJECT.R`: node R of a multi-node run,
shown as `vp-PROJECT-R`; vp/platforms/cloud.py split_node_label). Each host gets its own key
pair, attached to that one instance (account keys would reach every later instance too). The SDK
is imported only when a method needs it; `VAST_URL` is read here and passed as `server_url`,
because the SDK reads it only once, at import.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from vp import credentials, keys
from vp.credentials import Credential, CredentialFile, Resolved
from vp.errors import HostGone, UsageError, VpError
from vp.idle import from_pid1
from vp.platforms import gpus
from vp.platforms.base import PENDING, RUNNING, STOPPED, UNKNOWN, Host, HostSpec, Offer
from vp.platforms.cloud import (
    Capacity,
    CloudPlatform,
    CloudSettings,
    Declaration,
    NotFound,
    Ownership,
    labelled,
    launch_token,
    node_host_name,
    split_node_label,
)
from vp.platforms.common import describe, no_offer, quiet_stdout
from vp.settings import setting

# actual_status -> vp state. `None` is "being provisioned" in vast's own table.
STATUS: dict[str | None, str] = {
    None: PENDING,
    "created": PENDING,
    "loading": PENDING,
    "scheduling": PENDING,
    "rebooting": PENDING,
    "running": RUNNING,
    "stopped": STOPPED,
    "exited": STOPPED,
    "frozen": STOPPED,
    "unknown": UNKNOWN,
    "offline": UNKNOWN,
}

DEFAULT_URL = "https://console.vast.ai"
DEFAULT_IMAGE = "vastai/base-image:@vastai-automatic-tag"
EXTRA_HINT = "pip install 'vp-runner[vast]'"
# Env var carrying the create's own token: a create cut off by Ctrl-C finds what it made.
LAUNCH_ENV = "VP_LAUNCH"
CAPACITY_ERRORS = ("no_such_ask", "not available", "unavailable", "no longer")


@dataclass(frozen=True)
class VastSettings(CloudSettings):
    """[vast]"""

    api_key: str | None = None
    url: str | None = setting(check="endpoint")  # user file or VAST_URL only
    image: str | None = None
    user: str | None = setting(check="user_name")


DECLARATION = Declaration(
    name="vast",
    kind="container",
    ownership=Ownership.LABEL,  # label `vp-PROJECT`
    # vast bills a stopped instance's disk at the machine's own storage_cost; $0.15/GB/month
    # is a typical offer's (console.vast.ai search, 2026-12).
    storage_price=0.15,
    settings=VastSettings,
    secrets=("api_key",),
    # Where the vastai CLI keeps it (`vastai set api-key`), newer and older versions.
    credential=Credential(
        key="api_key",
        env="VAST_API_KEY",
        files=(
            CredentialFile("$XDG_CONFIG_HOME/vastai/vast_api_key"),
            CredentialFile("~/.vast_api_key"),
        ),
    ),
    # The scoped key vast injects into the container may stop its own instance.
    idle_stop=from_pid1("CONTAINER_ID", "CONTAINER_API_KEY")
    + 'curl -fsS -X PUT -H "Authorization: Bearer $CONTAINER_API_KEY"'
    + " -H 'Content-Type: application/json' -d '{\"state\": \"stopped\"}'"
    + ' "https://console.vast.ai/api/v0/instances/$CONTAINER_ID/"',
    honours=frozenset(
        {"gpu", "gpus", "max_price", "disk_gb", "image", "spot", "cpus", "memory_gb", "region"}
    ),
    endpoint_env="VAST_URL",
    endpoint_key="url",
    noun="vast instance",
    provider="vast.ai",
)


def create_platform(settings: VastSettings | dict[str, Any] | None) -> VastPlatform:
    return VastPlatform(settings)


class VastPlatform(CloudPlatform):
    """vast.ai marketplace instances (containers), labelled `vp-PROJECT`."""

    declaration = DECLARATION
    status_label = "vast_status"

    def __init__(self, settings: VastSettings | dict[str, Any] | None = None):
        super().__init__(settings)
        self.url = (os.environ.get("VAST_URL") or self.settings.url or DEFAULT_URL).rstrip("/")
        self._client: Any = None
        self._key: Resolved | None = None

    # -- the provider calls ------------------------------------------------------------------

    def list(self, project: str | None = None) -> list[Host]:
        rows = self._call("list instances", lambda c: c.show_instances())
        return [self._host(r) for r in labelled(rows, project, lambda r: r.get("label"))]

    def _no_offer(self, spec: HostSpec, found: list[Offer]) -> VpError:
        return no_offer(
            spec,
            found,
            what="vast.ai offer",
            platform="vast",
            unmatched=f"no vast.ai offer for {describe(spec)} with {spec.disk_gb} GB disk",
        )

    def _launch(self, offer: Offer, spec: HostSpec, name: str, key: keys.KeyPair) -> str:
        image = spec.image or self.settings.image or DEFAULT_IMAGE
        result = self._call(
            "create an instance",
            lambda c: c.create_instance(
                int(offer.id),
                image=image,
                disk=spec.disk_gb,
                label=self.label_of(name),
                env={LAUNCH_ENV: launch_token(key)},  # finds it if the answer never comes
                ssh=True,
                direct=True,
                price=offer.price if spec.spot else None,
            ),
        )
        if not isinstance(result, dict) or not result.get("new_contract"):
            raise VpError(
                f"vast.ai accepted offer {offer.id} but returned no instance id",
                hint="check `vp ls -p vast` and destroy the instance if one appeared",
            )
        return str(result["new_contract"])

    def _launched(self, name: str, key: keys.KeyPair) -> list[str]:
        token = launch_token(key)
        rows = self._call("list instances", lambda c: c.show_instances())
        return [
            str(r["id"])
            for r in rows or []
            if r.get("label") == self.label_of(name) and _env(r).get(LAUNCH_ENV) == token
        ]

    def _accepted(self, host_id: str, spec: HostSpec, name: str, key: keys.KeyPair) -> Host:
        # A key attached to this one instance (account keys would reach every later one too).
        self._call("attach the ssh key", lambda c: c.attach_ssh(int(host_id), key.public_key))
        row = self._call("show the instance", lambda c: c.show_instance(int(host_id)))
        return self._host(row) if row else self._placeholder(host_id, name)

    def start(self, host_id: str) -> Host:
        self._call("start the instance", lambda c: c.start_instance(_vast_id(host_id)))
        return self._get(host_id)

    def stop(self, host_id: str) -> None:
        self._call("stop the instance", lambda c: c.stop_instance(_vast_id(host_id)))

    def destroy(self, host_id: str) -> None:
        with contextlib.suppress(NotFound):  # already gone: that is what we wanted
            self._call("destroy the instance", lambda c: c.destroy_instance(_vast_id(host_id)))

    # -- internals -------------------------------------------------------------------------------

    def _search(self, spec: HostSpec) -> list[Offer]:
        query: dict[str, Any] = {
            "num_gpus": {"eq": int(spec.gpus)},
            "disk_space": {"gte": float(spec.disk_gb)},
        }
        if spec.cpus:
            query["cpu_cores"] = {"gte": spec.cpus}
        if spec.memory_gb:
            query["cpu_ram"] = {"gte": spec.memory_gb * 1000}
        rows = self._call(
            "search offers",
            lambda c: c.search_offers(
                query=query,
                type="bid" if spec.spot else "on-demand",
                order="dph_total",
                storage=float(spec.disk_gb),
            ),
        )
        found = []
        for row in rows or []:
            memory = (row.get("gpu_ram") or 0) / 1024 or None
            if not gpus.matches(spec.gpu, str(row.get("gpu_name", "")), memory):
                continue
            if spec.region and spec.region.lower() not in str(row.get("geolocation", "")).lower():
                continue
            price = row.get("min_bid") if spec.spot else row.get("dph_total")
            if price is None:
                continue
            found.append(
                Offer(
                    platform="vast",
                    id=str(row["id"]),
                    gpu=str(row.get("gpu_name")),
                    gpus=int(row.get("num_gpus") or 0),
                    price=round(float(price), 4),
                    region=row.get("geolocation"),
                    spot=bool(spec.spot),
                    extra={
                        "disk_gb": row.get("disk_space"),
                        "gpu_ram_gb": round((row.get("gpu_ram") or 0) / 1024, 1),
                        "reliability": row.get("reliability"),
                    },
                )
            )
        return sorted(found, key=lambda o: o.price)

    def _get(self, host_id: str) -> Host:
        row = self._call("show the instance", lambda c: c.show_instance(_vast_id(host_id)))
        if not row:
            raise HostGone(f"vast instance {host_id} no longer exists")
        return self._host(row)

    def _host(self, row: dict) -> Host:
        iid = str(row["id"])
        actual = row.get("actual_status")
        status = STATUS.get(actual, UNKNOWN)
        if status == RUNNING and row.get("intended_status") == "stopped":
            status = PENDING  # stopping
        ssh_host, ssh_port = _endpoint(row) if status == RUNNING else (None, None)
        label = row.get("label") or ""
        labels = {
            "vast_status": str(actual or "provisioning"),
            "market": "spot" if row.get("is_bid") else "on-demand",
        }
        if row.get("image_uuid"):
            labels["image"] = str(row["image_uuid"])
        group, rank = split_node_label(label)
        if group.startswith("vp-"):
            labels["project"] = group[3:]
            if rank:
                labels["node"] = str(rank)
        return Host(
            id=iid,
            name=node_host_name(label) or f"vast-{iid}",
            platform="vast",
            status=status,
            gpu=row.get("gpu_name"),
            gpus=int(row.get("num_gpus") or 0),
            price=row.get("dph_total"),
            ssh_user=self.settings.user or "root",
            ssh_host=ssh_host,
            ssh_port=ssh_port,
            labels=labels,
            key_path=self._key_paths.get(iid),
            host_key_alias=f"vp-vast-{iid}",
            created_at=row.get("start_date"),
            region=row.get("geolocation") or None,
        )

    def _placeholder(self, iid: str, name: str) -> Host:
        return Host(
            id=iid,
            name=name,
            platform="vast",
            status=PENDING,
            ssh_user=self.settings.user or "root",
            key_path=self._key_paths.get(iid),
            host_key_alias=f"vp-vast-{iid}",
        )

    def _sdk(self) -> Any:
        if self._client is None:
            self._key = key = credentials.resolve(DECLARATION, self.settings)
            try:
                from vastai.sdk import VastAI
            except ImportError:
                raise VpError(
                    "the vast platform needs the vastai package", hint=EXTRA_HINT
                ) from None
            with quiet_stdout():
                self._client = VastAI(api_key=key.value, server_url=self.url, retry=3)
        return self._client

    def _call(self, what: str, fn: Any) -> Any:
        """Run one SDK call with its stdout captured; turn its errors into one-line VpErrors."""
        import requests

        client = self._sdk()
        try:
            with quiet_stdout():
                return fn(client)
        except requests.HTTPError as exc:
            raise _http_error(what, exc.response, self._key) from None
        except requests.RequestException as exc:
            raise VpError(
                f"cannot reach vast.ai at {self.url} to {what}: {type(exc).__name__}",
                hint="check the network, or VAST_URL if you set it",
            ) from None


def _http_error(what: str, response: Any, key: Resolved | None) -> VpError:
    status = getattr(response, "status_code", 0)
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    msg = " ".join(
        str(body.get("msg") or body.get("error") or getattr(response, "reason", "") or "").split()
    )
    code = str(body.get("error") or "")
    if status in (401, 403) and key is not None:
        return credentials.rejected(DECLARATION, key, msg if status == 403 else "")
    text = f"{code} {msg}".lower()
    if any(marker in text for marker in CAPACITY_ERRORS):
        return Capacity(msg or code)
    if status == 404:
        return NotFound(f"vast.ai: {msg or 'not found'}")
    return VpError(f"vast.ai could not {what}: {msg or 'error'} (HTTP {status})")


def _endpoint(row: dict) -> tuple[str | None, int | None]:
    """Direct `public_ipaddr` + the host port mapped to 22, else vast's ssh proxy."""
    mapped = (row.get("ports") or {}).get("22/tcp") or []
    ip = row.get("public_ipaddr")
    if ip and mapped and mapped[0].get("HostPort"):
        return str(ip).strip(), int(mapped[0]["HostPort"])
    if row.get("ssh_host") and row.get("ssh_port"):
        return str(row["ssh_host"]), int(row["ssh_port"])
    return None, None


def _env(row: dict) -> dict:
    """An instance's env: the SDK turns vast's [[KEY, value], ...] into a dict."""
    env = row.get("extra_env") or {}
    if isinstance(env, list):
        env = {p[0]: p[1] for p in env if isinstance(p, list | tuple) and len(p) == 2}
    return env if isinstance(env, dict) else {}


def _vast_id(host_id: str) -> int:
    try:
        return int(host_id)
    except ValueError:
        raise UsageError(f"'{host_id}' is not a vast.ai instance id (a number)") from None
