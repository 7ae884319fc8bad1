"""Thunder Compute: GPU instances through Thunder's REST API, with a small client of our own.

The `tnr` Python package is deprecated and its pins conflict with `runpod`, so this module
speaks HTTP itself (urllib3, imported on first call; it retries idempotent GETs on 429/5xx and
connection errors with backoff, never a create or delete). Each instance gets the public half
of a key pair vp made for it; if the API answers with a server-made private key instead, that
key is stored 0600 in its place. The ip and port are null until the instance is RUNNING.

Ownership: a Thunder instance carries no label vp could set (the list's `name` is made by the
server; the create request has no name field), so an instance is the project's only if vp's
state DB recorded creating it for that project, with the same `uuid` (the numeric ids are
reused after a delete). `list()` returns only those: an instance made outside vp (a
colleague's, the console's) is never listed, adopted, stopped or destroyed.

What Thunder serves today, and where that comes from:
- Catalogue: `GET /v2/pricing`, `/v2/specs`, `/v2/status` on the API origin, with mode-free
  keys (`h100_x1`, `a100xl_x1`, `a6000_x1`, `l40_x4`, ...) next to `additional_vcpus`, `disk_gb`,
  `snapshot_gb` -- Thunder-Compute/thunder-cli `cmd/json_contract_test.go` (commit 7026095,
  after v2.0.59) and terraform-provider-thundercompute's `TestDiscoveryDataSourcesUseCanonical
  V2Contracts`; the prototyping/production split was removed from Thunder's docs on 2026-06-30
  (Thunder-Compute/thunder-compute-documentation f14d4ec). A 404 on /v2 falls back to the
  `/v1/pricing|specs|status` of thunder-cli v2.0.59 (dc01ad3, `api/client.go`), whose keys carry
  a mode (`h100_x1_prototyping`); both shapes parse.
- Price of a configuration, as the CLI computes it (`utils/pricing.go`, commit 0b6e8a7): the
  `{gpu}_x{n}` rate + vCPUs beyond the first `vcpuOptions` entry x `additional_vcpus` + disk
  beyond 100 GB per GPU x `disk_gb`. Legacy suffixed keys are priced as v2.0.59 did (disk
  beyond 100 GB in all).
- Instances stay on /v1 (`instances/list|create`, `instances/{id}/delete|modify`,
  `snapshots/create|list`, `snapshots/{id}`), as in thunder-cli v2.0.59 `api/client.go` and
  `pkg/types/types.go` and the documentation repo's `swagger.json` (2026-04-22). A create for a
  mode-free offer sends no `mode`.
- No stop or start: thunder-cli has had no start/stop command since Feb 2026 (92559c6 "hid CLI
  commands"; none in v2.0.59) and the docs' guides/stopping-instances.mdx says "Thunder Compute
  does not have a native Stop feature" (snapshot, delete, create from the snapshot instead).
  `stop`/`start` therefore refuse in one line and name what to do (`can_stop=False`).
- No idle stop: the docs' guides/using-docker-on-thundercompute.mdx says instances "are
  themselves containers" and guides/migrating-to-v2.mdx that "systemd [is] not currently
  supported", so a guest `shutdown` stops nothing, and billing.mdx bills "only while your
  instances run" with deletion the only way to stop it. Deleting from the host would need the
  API token, which is account-wide (cli/operations/authentication.mdx: no scopes), so it never
  goes to a rented host. `idle_stop` is None and `vp run` warns on every run.

Beyond the Platform surface, Thunder can modify a running instance in place
(`POST /instances/{id}/modify`) and snapshot one (`POST /snapshots/create`), which `clone`
uses to make a new instance from an old one's disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from vp import __version__, credentials, keys
from vp.credentials import Credential, CredentialFile, Resolved
from vp.errors import HostGone, VpError
from vp.platforms import gpus
from vp.platforms.base import GONE, PENDING, RUNNING, STOPPED, UNKNOWN, Host, HostSpec, Offer
from vp.platforms.cloud import (
    Capacity,
    CloudPlatform,
    CloudSettings,
    Declaration,
    NotFound,
    Ownership,
    settle_failed_create,
)
from vp.platforms.common import discard_key
from vp.poll import poll
from vp.settings import positive, setting

# Thunder's instance statuses -> vp state.
STATUS: dict[str, str] = {
    "PROVISIONING": PENDING,
    "QUEUED": PENDING,
    "PENDING": PENDING,
    "STARTING": PENDING,
    "RUNNING": RUNNING,
    "STOPPING": PENDING,
    "STOPPED": STOPPED,
    "MODIFYING": PENDING,
    "SNAPPING": PENDING,
    "RESTORING": PENDING,
    "MIGRATING": PENDING,
    "DELETING": GONE,
    "UNKNOWN": UNKNOWN,
}

DEFAULT_URL = "https://api.thundercompute.com:8443/v1"
DEFAULT_TEMPLATE = "base"
# `h100_x1` (today) or `h100_x1_prototyping` (before the mode split was removed).
CONFIG_KEY = re.compile(r"^(?P<gpu>[a-z0-9]+)_x(?P<count>\d+)(?:_(?P<mode>[a-z]+))?$")
NO_STOP = "Thunder Compute has no stop or start: an instance runs, and bills, until deleted"
NO_STOP_HINT = (
    "`vp down` deletes it with its disk; to keep the disk, snapshot it first "
    "(`tnr snapshot create --instance-id ID --name NAME`) and set `[thunder] template = NAME` "
    "so the next host starts from it"
)
CAPACITY_ERRORS = ("unavailable", "capacity", "no available", "out of stock")
SNAPSHOT_FAILED = ("FAILED", "ERROR", "DELETING", "DELETED")


@dataclass(frozen=True)
class ThunderSettings(CloudSettings):
    """[thunder]"""

    token: str | None = None
    url: str | None = setting(check="endpoint")  # user file or TNR_API_URL only
    template: str | None = None
    mode: str | None = None
    user: str | None = setting(check="user_name")
    snapshot_timeout: float = positive(1800)  # seconds a `vp clone` waits for its snapshot


DECLARATION = Declaration(
    name="thunder",
    kind="vm",
    # No labels on Thunder (the server names instances; a create has no name field): a host
    # is the project's only if vp's state recorded creating it, with the same uuid.
    ownership=Ownership.STATE,
    settings=ThunderSettings,
    secrets=("token",),
    # Where Thunder's CLIs keep it: `~/.thunder/token`, or the Go CLI's `tnr login` file.
    credential=Credential(
        key="token",
        env="TNR_API_TOKEN",
        what="API token",
        files=(
            CredentialFile("~/.thunder/token"),
            CredentialFile("~/.thunder/cli_config.json", ("token",)),
        ),
    ),
    # No idle stop: Thunder has no stop (module docstring), its instances are containers without
    # systemd, so a guest `shutdown` stops no billing, and its API tokens are account-wide, so
    # none may be sent to the host for it to delete itself. vp warns on every run instead.
    idle_stop=None,
    can_stop=False,
    honours=frozenset({"gpu", "gpus", "max_price", "disk_gb", "cpus"}),
    endpoint_env="TNR_API_URL",
    endpoint_key="url",
    noun="Thunder Compute instance",
    provider="Thunder Compute",
    destroy_words=("delete", "deleted"),
)


def create_platform(settings: ThunderSettings | dict[str, Any] | None) -> ThunderPlatform:
    return ThunderPlatform(settings)


class ThunderPlatform(CloudPlatform):
    """Thunder Compute instances (VMs; user `ubuntu`)."""

    declaration = DECLARATION
    status_label = "thunder_status"
    ready_hint = "raise [host] ready_timeout, or try another gpu"

    def __init__(self, settings: ThunderSettings | dict[str, Any] | None = None):
        super().__init__(settings)
        self.url = _base_url(os.environ.get("TNR_API_URL") or self.settings.url)
        # The catalogue lives under /v2 on the same origin the /v1 instance API hangs from.
        self.origin = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        self._token: Resolved | None = None
        self._pool: Any = None
        self._catalogue_base: str | None = None  # "/v2", or "/v1" for an API without /v2
        # instance id -> (server-made private key or None, $/h) from the create's answer.
        self._created: dict[str, tuple[str | None, float | None]] = {}

    # -- the provider calls ------------------------------------------------------------------

    def list(self, project: str | None = None) -> list[Host]:
        """The instances vp's state recorded creating (for `project`; None: for any project).

        Another instance on the account -- made in Thunder's console, by `tnr`, by a colleague
        sharing the token -- is never returned, so it is never adopted, stopped or destroyed.
        """
        owned = _owned(project)
        return [
            self._host(iid, item)
            for iid, item in sorted(self._listing().items(), key=_by_id)
            if iid in owned and owned[iid] in (None, str(item.get("uuid") or ""))
        ]

    def _launch(self, offer: Offer, spec: HostSpec, name: str, key: keys.KeyPair) -> str:
        mode = offer.extra.get("mode")
        body = {
            "cpu_cores": offer.extra["cpu_cores"],
            "gpu_type": offer.extra["gpu_type"],
            "num_gpus": offer.gpus,
            **({"mode": mode} if mode else {}),  # a mode-free catalogue takes no mode
            "template": self.settings.template or DEFAULT_TEMPLATE,
            "disk_size_gb": max(int(spec.disk_gb), offer.extra.get("min_disk_gb") or 0),
        }
        return self._post_create(body, key, offer.price)

    def _accepted(self, host_id: str, spec: HostSpec, name: str, key: keys.KeyPair) -> Host:
        server_key, price = self._created.pop(host_id, (None, None))
        if server_key:  # the API made its own pair: keep its private half, 0600
            _write_private(key.private_path, server_key)
        host = self._get(host_id)
        host.price = host.price or price  # the instance list carries no price
        return host

    def start(self, host_id: str) -> Host:
        raise VpError(NO_STOP, hint=NO_STOP_HINT)

    def stop(self, host_id: str) -> None:
        raise VpError(NO_STOP, hint=NO_STOP_HINT)

    def destroy(self, host_id: str) -> None:
        with contextlib.suppress(NotFound):  # already gone: that is what we wanted
            self._request(
                "POST",
                f"/instances/{quote(host_id, safe='')}/delete",
                {},
                what="delete the instance",
            )

    # -- capabilities (vp.platforms.base.SupportsModify / SupportsClone) ---------------------------

    def modify(
        self,
        host_id: str,
        *,
        cpus: int | None = None,
        gpu: str | None = None,
        gpus: int | None = None,
        disk_gb: int | None = None,
    ) -> Host:
        """Change a RUNNING instance's GPU type or count, vCPUs or disk (which only grows).

        Thunder answers at once and the instance passes through MODIFYING (no ip) back to
        RUNNING, possibly on another port: follow with `wait_ready`. A new GPU configuration
        whose vCPU options exclude the current count gets the first option, as Thunder's CLI
        does.
        """
        if cpus is None and gpu is None and gpus is None and disk_gb is None:
            raise VpError("nothing to modify", hint="pass --gpu, --gpus, --cpus or --disk-gb")
        item = self._item(host_id)
        _require_running(item, host_id, "modify")
        pricing, specs, _ = self._catalogue()
        mode = _mode_of(item, pricing)
        in_mode = f" in {mode} mode" if mode else ""
        current_gpu = str(item.get("gpuType") or "").lower()
        current_count = int(item.get("numGpus") or 1)
        body: dict[str, Any] = {}
        target_gpu = current_gpu
        if gpu is not None:
            target_gpu = self._gpu_type(gpu, mode, pricing, specs)
            body["gpu_type"] = target_gpu
        target_count = current_count if gpus is None else int(gpus)
        if gpus is not None:
            body["num_gpus"] = target_count
        key = _config_key(target_gpu, target_count, mode)
        config = specs.get(key)
        if specs and config is None:
            raise VpError(
                f"Thunder Compute offers no {target_count}x {target_gpu}{in_mode}",
                hint="run `vp offers -p thunder` to see what is available",
            )
        options = [int(v) for v in (config or {}).get("vcpuOptions") or []]
        if cpus is not None:
            if options and int(cpus) not in options:
                choices = ", ".join(map(str, options))
                what = f"{target_count}x {target_gpu}" + (f" ({mode})" if mode else "")
                raise VpError(f"{what} takes {choices} vCPUs, not {cpus}")
            body["cpu_cores"] = int(cpus)
        elif options and int(item.get("cpuCores") or 0) not in options:
            body["cpu_cores"] = options[0]
        if disk_gb is not None:
            current_disk = int(item.get("storage") or 0)
            if int(disk_gb) < current_disk:
                raise VpError(
                    f"a Thunder Compute disk cannot shrink ({current_disk} GB now, "
                    f"{disk_gb} GB asked)"
                )
            maximum = ((config or {}).get("storageGB") or {}).get("max")
            if maximum and int(disk_gb) > int(maximum):
                raise VpError(f"{key} allows at most {maximum} GB of disk")
            body["disk_size_gb"] = int(disk_gb)
        self._request(
            "POST",
            f"/instances/{quote(str(host_id), safe='')}/modify",
            body,
            what="modify the instance",
        )
        host = self._get(str(host_id))
        disk = int(body.get("disk_size_gb") or item.get("storage") or 0)
        cores = int(body.get("cpu_cores") or item.get("cpuCores") or 0)
        host.price = self._price(target_gpu, target_count, mode, disk, cores)
        return host

    def clone(self, host_id: str, name: str) -> Host:
        """A new instance, same configuration, from a snapshot of a RUNNING instance's disk.

        The snapshot (`POST /snapshots/create`, polled in `GET /snapshots/list` until READY)
        is made under a fresh name and used as the new instance's template; it is kept, named in
        the new host's `snapshot` label (Thunder bills its storage until it is deleted). The
        new instance gets its own key pair; a failure after Thunder accepted it deletes it.
        """
        item = self._item(host_id)
        _require_running(item, host_id, "clone")
        snapshot = f"{name}-{secrets.token_hex(3)}"
        source = str(item.get("uuid") or host_id)  # Thunder's CLI sends the instance uuid
        self._request(
            "POST",
            "/snapshots/create",
            {"instanceId": source, "name": snapshot},
            what="snapshot the instance",
        )
        pair: keys.KeyPair | None = None
        new_id: str | None = None
        try:
            ready = self._wait_snapshot(snapshot)
            mode = _mode_of(item, self._catalogue()[0])
            count = int(item.get("numGpus") or 1)
            gpu_type = str(item.get("gpuType") or "").lower()
            disk = max(int(item.get("storage") or 0), int(ready.get("minimumDiskSizeGb") or 0))
            cores = int(item.get("cpuCores") or 0)
            body = {
                "cpu_cores": cores,
                "gpu_type": gpu_type,
                "num_gpus": count,
                **({"mode": mode} if mode else {}),
                "template": snapshot,
                "disk_size_gb": disk,
            }
            pair = keys.new_keypair(name)
            price = self._price(gpu_type, count, mode, disk, cores)
            try:
                new_id = self._post_create(body, pair, price)
            except Capacity as exc:
                what = f"{count}x {gpu_type}" + (f" ({mode})" if mode else "")
                raise VpError(
                    f"Thunder Compute has no capacity for {what}: {exc.message}",
                    hint="try again, pick another gpu, or raise max_price",
                ) from None
        except BaseException:
            if pair is not None:
                discard_key(pair.private_path)
            self._delete_snapshot(snapshot)
            raise
        self._key_paths[new_id] = str(pair.private_path)
        placeholder = Host(
            id=new_id,
            name=name,
            platform=self.name,
            status=PENDING,
            key_path=str(pair.private_path),
            host_key_alias=f"vp-thunder-{new_id}",
        )
        try:
            host = self._accepted(new_id, HostSpec(), name, pair)
        except BaseException as exc:
            self._key_paths.pop(new_id, None)
            self._delete_snapshot(snapshot)
            settle_failed_create(self, placeholder, exc, None)
        host.labels["snapshot"] = snapshot
        return replace(host, key_path=host.key_path or placeholder.key_path)

    # -- internals -------------------------------------------------------------------------------

    def _post_create(self, body: dict[str, Any], key: keys.KeyPair, price: float | None) -> str:
        """POST /instances/create with `key`'s public half; the new instance's id. What the
        answer carries for later (a server-made key, the price) waits in `_created`."""
        result = self._request(
            "POST",
            "/instances/create",
            {**body, "public_key": key.public_key},
            what="create an instance",
        )
        identifier = (result or {}).get("identifier")
        if identifier is None:
            raise VpError(
                "Thunder Compute accepted the create but returned no instance id",
                hint="check Thunder's console and delete the instance if one appeared",
            )
        self._created[str(identifier)] = ((result or {}).get("key"), price)
        return str(identifier)

    def _price(
        self, gpu_type: str, count: int, mode: str | None, disk: int, cpus: int
    ) -> float | None:
        """$/h of a configuration, priced as offers are (the instance list has no price)."""
        key = _config_key(gpu_type, count, mode)
        with contextlib.suppress(VpError):
            spec = HostSpec(gpus=count, disk_gb=disk, cpus=cpus)
            return next((o.price for o in self._search(spec) if o.id == key), None)
        return None

    def _listing(self) -> dict[str, dict]:
        """Every instance on the account, by id: vp's and everyone else's (see `list`)."""
        listing = self._request("GET", "/instances/list", what="list instances") or {}
        return {str(k): v for k, v in listing.items() if isinstance(v, dict)}

    def _item(self, host_id: str) -> dict:
        item = self._listing().get(str(host_id))
        if item is None:
            raise HostGone(f"Thunder Compute instance {host_id} no longer exists")
        return item

    def _gpu_type(self, wanted: str, mode: str | None, pricing: dict, specs: dict) -> str:
        """Thunder's gpu_type key (`a100xl`) for a name the user gives (`A100`, `h100`)."""
        found: list[str] = []
        for key in pricing:
            m = CONFIG_KEY.match(key)
            if not m or m["mode"] != mode:
                continue
            if m["gpu"] == wanted.lower():
                return m["gpu"]
            if _gpu_matches(wanted, m["gpu"], specs.get(key) or {}) and m["gpu"] not in found:
                found.append(m["gpu"])
        if len(found) == 1:
            return found[0]
        if not found:
            raise VpError(
                f"Thunder Compute has no {wanted} GPU" + (f" in {mode} mode" if mode else ""),
                hint="run `vp offers -p thunder` to see what is available",
            )
        raise VpError(f"'{wanted}' could mean {', '.join(found)}; name one of them")

    def _snapshots(self) -> list[dict]:
        listing = self._request("GET", "/snapshots/list", what="list snapshots") or []
        return [s for s in listing if isinstance(s, dict)]

    def _wait_snapshot(self, name: str) -> dict:
        timeout = float(self.settings.snapshot_timeout)
        status = ["not listed yet"]

        def ready() -> dict | None:
            snap = next((s for s in self._snapshots() if s.get("name") == name), None)
            if snap is None:
                return None
            status[0] = str(snap.get("status") or "").upper()
            if status[0] in SNAPSHOT_FAILED:
                raise VpError(f"Thunder Compute could not snapshot the instance ({status[0]})")
            return snap if status[0] == "READY" else None

        return poll(
            ready,
            timeout=timeout,
            interval=self.poll_interval,
            what=f"snapshot {name}",
            timed_out=lambda: VpError(
                f"snapshot {name} was not ready after {timeout:.0f}s (status: {status[0]})",
                hint="raise [thunder] snapshot_timeout",
            ),
        )

    def _delete_snapshot(self, name: str) -> None:
        """Delete the snapshot called `name`, if there is one; never raises."""
        with contextlib.suppress(Exception):
            for snap in self._snapshots():
                if snap.get("name") == name and snap.get("id"):
                    self._request(
                        "DELETE",
                        f"/snapshots/{quote(str(snap['id']), safe='')}",
                        what="delete the snapshot",
                    )

    def _catalogue(self) -> tuple[dict, dict, dict]:
        """(pricing, specs, availability) as Thunder serves them today (`/v2`, mode-free keys),
        or from `/v1` on an API that has no `/v2` (keys with a mode suffix)."""
        bases = [self._catalogue_base] if self._catalogue_base else ["/v2", "/v1"]
        for base in bases:
            try:
                answer = self._request("GET", "/pricing", what="read prices", base=base)
            except NotFound:
                if base == bases[-1]:
                    raise
                continue
            self._catalogue_base = base
            pricing = (answer or {}).get("pricing") or {}
            specs = self._optional("/specs", base).get("specs") or {}
            availability = self._optional("/status", base).get("specs") or {}
            if any((m := CONFIG_KEY.match(k)) and not m["mode"] for k in pricing):
                # Mode-free keys are today's catalogue; suffixed ones beside them are leftovers.
                pricing = {k: v for k, v in pricing.items() if not _suffixed(k)}
            return pricing, specs, availability
        return {}, {}, {}

    def _search(self, spec: HostSpec) -> list[Offer]:
        pricing, specs, availability = self._catalogue()
        wanted_mode = self.settings.mode
        found = []
        for key, rate in pricing.items():
            m = CONFIG_KEY.match(key)
            if not m or int(m["count"]) != spec.gpus:
                continue
            if wanted_mode and m["mode"] and m["mode"] != wanted_mode:
                continue  # `mode` only means something to a catalogue that still has modes
            if availability and availability.get(key, "available") != "available":
                continue
            config = specs.get(key) or {}
            display = str(config.get("displayName") or m["gpu"].upper())
            if not _gpu_matches(spec.gpu, m["gpu"], config):
                continue
            storage = config.get("storageGB") or {}
            if storage.get("max") and spec.disk_gb > storage["max"]:
                continue
            vcpus = config.get("vcpuOptions") or [4 * spec.gpus]
            cpus = next((v for v in vcpus if spec.cpus and v >= spec.cpus), vcpus[0])
            disk = max(int(spec.disk_gb), int(storage.get("min") or 0))
            # As Thunder's CLI prices it: the GPU config, plus disk beyond what is included
            # (100 GB per GPU today; 100 GB in all in the moded catalogue), plus vCPUs beyond
            # the first option.
            included_disk = 100 if m["mode"] else 100 * int(m["count"])
            price = float(rate) + max(0, disk - included_disk) * float(pricing.get("disk_gb") or 0)
            extra_cpus = max(0, cpus - vcpus[0]) * float(pricing.get("additional_vcpus") or 0)
            found.append(
                Offer(
                    platform="thunder",
                    id=key,
                    gpu=display,
                    gpus=int(m["count"]),
                    price=round(price + extra_cpus, 4),
                    extra={
                        "gpu_type": m["gpu"],
                        "mode": m["mode"],
                        "cpu_cores": cpus,
                        "min_disk_gb": storage.get("min"),
                        "gpu_ram_gb": config.get("vramGB"),
                    },
                )
            )
        return sorted(found, key=lambda o: o.price)

    def _optional(self, path: str, base: str | None = None) -> dict:
        """GET something that only refines offers; its absence is not an error."""
        try:
            result = self._request("GET", path, what=f"read {path}", base=base)
        except (NotFound, _ServerError):
            return {}
        return result if isinstance(result, dict) else {}

    def _get(self, host_id: str) -> Host:
        return self._host(str(host_id), self._item(host_id))

    def _host(self, iid: str, item: dict) -> Host:
        raw = str(item.get("status") or "UNKNOWN").upper()
        status = STATUS.get(raw, UNKNOWN)
        ip = item.get("ip")
        port = item.get("port") or 22
        if status == RUNNING and not ip:
            status = PENDING
        return Host(
            id=iid,
            name=str(item.get("name") or f"thunder-{iid}"),
            platform="thunder",
            status=status,
            gpu=item.get("gpuType"),
            gpus=int(item.get("numGpus") or 0),
            ssh_user=self.settings.user or "ubuntu",
            ssh_host=str(ip) if status == RUNNING else None,
            ssh_port=int(port) if status == RUNNING else None,
            labels={
                "thunder_status": raw,
                "mode": str(item.get("mode") or ""),
                "uuid": str(item.get("uuid") or ""),
            },
            key_path=self._key_paths.get(iid),
            host_key_alias=f"vp-thunder-{iid}",
            created_at=_timestamp(item.get("createdAt")),
        )

    def _api_token(self) -> Resolved:
        if self._token is None:
            self._token = credentials.resolve(DECLARATION, self.settings)
        return self._token

    def _http(self) -> Any:
        """One urllib3 pool per platform object, imported on first use (not at vp start-up).

        Retries: idempotent GETs on 429/502/503/504 and read errors, with backoff; connection
        failures (nothing was sent) for any method. A create or delete is never re-sent after
        Thunder may have seen it.
        """
        if self._pool is None:
            import urllib3
            from urllib3.util import Retry

            retry = Retry(
                total=3,
                connect=3,
                read=2,
                status=3,
                backoff_factor=0.5,
                status_forcelist=(429, 502, 503, 504),
                allowed_methods=frozenset({"GET"}),
                raise_on_status=False,
            )
            timeout = urllib3.Timeout(connect=10, read=30)
            self._pool = urllib3.PoolManager(retries=retry, timeout=timeout)
        return self._pool

    def _request(
        self, method: str, path: str, body: Any = None, *, what: str, base: str | None = None
    ) -> Any:
        """One API call; errors become one-line VpErrors that never contain the token.

        `path` is under the /v1 instance API, or under `base` (`/v2`, `/v1`) on the origin.
        """
        import urllib3

        token = self._api_token()
        url = (self.origin + base if base else self.url) + path
        try:
            response = self._http().request(
                method,
                url,
                body=json.dumps(body).encode() if body is not None else None,
                headers={
                    "Authorization": f"Bearer {token.value}",
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    "User-Agent": f"vp/{__version__}",
                },
            )
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise VpError(
                f"cannot reach Thunder Compute at {self.url} to {what}: {reason}",
                hint="check the network, or TNR_API_URL if you set it",
            ) from None
        raw = response.data or b""
        if response.status >= 400:
            raise _http_error(what, response.status, raw, token)
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise VpError(f"Thunder Compute sent a malformed answer to {what}") from None


class _ServerError(VpError):
    """A 5xx from the API."""


def _http_error(what: str, status: int, raw: bytes, token: Resolved) -> VpError:
    message = ""
    code = ""
    with contextlib.suppress(ValueError, AttributeError):
        body = json.loads(raw)
        message = str(body.get("message") or body.get("error") or "")
        code = str(body.get("error") or "")
    if not message:
        message = raw.decode(errors="replace")[:200]
    message = " ".join(message.split())
    if status == 401:
        return credentials.rejected(DECLARATION, token)
    if status == 403:  # the token is good but may not do this (Thunder: "forbidden")
        refused = credentials.rejected(DECLARATION, token)
        return VpError(
            f"Thunder Compute refused to {what} with {token.source}: {message}",
            hint=refused.hint,
        )
    if any(marker in f"{code} {message}".lower() for marker in CAPACITY_ERRORS):
        return Capacity(message)
    if status == 404:
        return NotFound(f"Thunder Compute: {message or 'not found'}")
    if status >= 500:
        return _ServerError(f"Thunder Compute could not {what}: {message} (HTTP {status})")
    return VpError(f"Thunder Compute could not {what}: {message} (HTTP {status})")


def _require_running(item: dict, host_id: str, verb: str) -> None:
    status = str(item.get("status") or "UNKNOWN").upper()
    if status != "RUNNING":
        raise VpError(
            f"Thunder Compute can only {verb} a RUNNING instance; {host_id} is {status}",
            hint="wait until it is running",
        )


def _owned(project: str | None) -> dict[str, str | None]:
    """Thunder instance id -> uuid, for the instances vp's state recorded creating."""
    from vp.state import State

    return {h.id: h.labels.get("uuid") or None for h in State().hosts(project, "thunder")}


def _gpu_matches(wanted: str | None, gpu_type: str, config: dict) -> bool:
    """The one GPU matcher (`A10` never A100), on Thunder's key (`a100xl`) or its display name
    (`NVIDIA A100 (80GB)`), with the card's memory from the specs."""
    memory = config.get("vramGB")
    names = (gpu_type, str(config.get("displayName") or ""))
    return any(gpus.matches(wanted, n, memory) for n in names if n)


def _suffixed(key: str) -> bool:
    m = CONFIG_KEY.match(key)
    return bool(m and m["mode"])


def _config_key(gpu_type: str, count: int, mode: str | None) -> str:
    return f"{gpu_type}_x{count}" + (f"_{mode}" if mode else "")


def _mode_of(item: dict, pricing: dict) -> str | None:
    """The instance's mode in a catalogue that still has modes; None in today's mode-free one."""
    if not any(_suffixed(k) for k in pricing):
        return None
    return str(item.get("mode") or "prototyping")


def _base_url(value: str | None) -> str:
    """TNR_API_URL includes /v1; Thunder's Go CLI uses the bare origin, so accept both."""
    url = (value or DEFAULT_URL).rstrip("/")
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url


def _timestamp(value: Any) -> float | None:
    if not value:
        return None
    with contextlib.suppress(ValueError, TypeError):
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    return None


def _by_id(entry: tuple[str, Any]) -> tuple[int, str]:
    iid = entry[0]
    return (int(iid), iid) if iid.isdigit() else (1 << 62, iid)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    os.chmod(path, 0o600)
    with contextlib.suppress(OSError):  # its public half no longer matches
        path.with_suffix(".pub").unlink()
