"""Google Compute Engine GPU VMs through google-cloud-compute (its REST transport).

`VP_GCE_API_URL` overrides the endpoint (client_options api_endpoint); credentials come from
`google.auth.default()` (a service-account file makes the client sign its own JWTs). Facts GCE
imposes:

- a VM has a public natIP only if the insert asks for an `accessConfigs` entry, and the natIP
  changes on every start;
- GPUs cannot live-migrate: `scheduling.onHostMaintenance=TERMINATE`;
- logins come from `ssh-keys` metadata lines `USER:KEY` (never root; `enable-oslogin=TRUE`
  would disable them, so vp sets it FALSE on its own VMs);
- `operation.result()` polls the public endpoint whatever `api_endpoint` says, so vp polls
  `zoneOperations.get` / `instances.get` on the configured endpoint itself;
- a full zone (`ZONE_RESOURCE_POOL_EXHAUSTED`) or a GPU quota shows up as the insert
  operation's error, after the API accepted the request.
"""

from __future__ import annotations

import os
import re
import secrets
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from vp import keys
from vp.errors import HostGone, VpError
from vp.idle import VM_SHUTDOWN
from vp.platforms import gpus
from vp.platforms.base import PENDING, RUNNING, STOPPED, UNKNOWN, Host, HostSpec, Offer
from vp.platforms.cloud import (
    CloudPlatform,
    CloudSettings,
    Declaration,
    Ownership,
    Unavailable,
    reraise_after_cleanup,
)
from vp.platforms.common import discard_key
from vp.platforms.gpus import catalog
from vp.poll import poll
from vp.settings import non_negative, setting

NAME = "gce"

# GCE instance statuses -> vp states. A stopped VM is TERMINATED in GCE's words.
STATUS = {
    "PROVISIONING": PENDING,
    "STAGING": PENDING,
    "RUNNING": RUNNING,
    "STOPPING": PENDING,
    "SUSPENDING": PENDING,
    "SUSPENDED": STOPPED,
    "TERMINATED": STOPPED,
    "REPAIRING": PENDING,
    "PENDING_STOP": PENDING,
}


# The GPU machines vp offers, with on-demand prices: a dated data file (data/gce.toml), read
# on first use (config loading imports this module for its DECLARATION only).
def _machine_rows() -> list[dict]:
    return catalog("gce")["machines"]


def machines() -> list[tuple[str, str | None, str, int, float]]:
    """(machine type, accelerator type or None when the machine type has its GPUs built in,
    GPU model, GPU count, on-demand $/h in us-central1 for VM + GPUs)"""
    return [
        (m["machine_type"], m.get("accelerator"), m["gpu"], m["gpus"], m["price"])
        for m in _machine_rows()
    ]


DEFAULT_ZONE = "us-central1-a"
DEFAULT_USER = "vp"
# Google's Deep Learning VM images (NVIDIA driver installed on first boot); [gce] image overrides.
DEFAULT_IMAGE = (
    "projects/deeplearning-platform-release/global/images/family/"
    "common-cu128-ubuntu-2204-nvidia-570"
)
FIREWALL = "vp-ssh"  # ingress tcp/22 to VMs with this network tag
NODES_FIREWALL = "vp-nodes"  # ingress on every port from VMs with that tag to them
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
# Insert-operation error codes that mean "not in this zone right now".
CAPACITY_ERRORS = {
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "RESOURCE_POOL_EXHAUSTED",
    "QUOTA_EXCEEDED",
    "RESOURCE_NOT_AVAILABLE",
    "UNSUPPORTED_OPERATION",
}
# A host still stopped this long after wait_ready began (no start in flight) never comes up.
STOPPED_GRACE = 30.0
HINT_INSTALL = "pip install 'vp-runner[gce]'"


def create_platform(settings: GceSettings | dict | None) -> GcePlatform:
    return GcePlatform(settings)


def _offer_id(machine: str, accel: str | None) -> str:
    return f"{machine}+{accel}" if accel else machine


def _label(value: str) -> str:
    """GCE label values: lowercase letters, digits, '-' and '_', at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]


def _last(url: str | None) -> str:
    return (url or "").rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class GceSettings(CloudSettings):
    """[gce]"""

    project: str | None = setting(check="cloud_id")
    zone: str | None = setting(check="cloud_zone")
    user: str | None = setting(check="user_name")
    image: str | None = None
    create_timeout: float | None = non_negative()


DECLARATION = Declaration(
    name=NAME,
    kind="vm",
    ownership=Ownership.LABEL,  # labels vp-managed=true and vp-project=PROJECT
    # A stopped VM's balanced persistent disk: $0.10/GB/month in us-central1
    # (cloud.google.com/compute/disks-image-pricing, 2026-12).
    storage_price=0.10,
    credentials=(
        "GOOGLE_APPLICATION_CREDENTIALS",
        "~/.config/gcloud/application_default_credentials.json",
    ),
    settings=GceSettings,
    idle_stop=VM_SHUTDOWN,  # GCE turns a guest shutdown into a stop
    honours=frozenset({"gpu", "gpus", "max_price", "disk_gb", "spot"}),
    endpoint_env="VP_GCE_API_URL",
    noun="gce instance",
    provider="GCE",
    destroy_words=("delete", "deleted"),
    private_network=True,
    network=(
        "one VPC (the default network): private addresses; firewall rule vp-nodes, from tag "
        "vp-ssh to tag vp-ssh, opens every tcp/udp port between the nodes, to them only"
    ),
)


class GcePlatform(CloudPlatform):
    declaration = DECLARATION
    max_offers = 1  # a zone without capacity says so only after accepting: no second try
    ready_hint = "raise [host] ready_timeout, or vp down the host and try again"
    stopped_grace = STOPPED_GRACE

    def __init__(self, settings: GceSettings | dict | None = None):
        super().__init__(settings)
        self.zone = self.settings.zone or DEFAULT_ZONE
        self.user = self.settings.user or DEFAULT_USER
        self.poll_interval = float(self.settings.poll_interval or 2.0)
        self.create_timeout = float(self.settings.create_timeout or 600)
        self._instances = None
        self._operations = None
        self._firewalls = None
        self._project: str | None = None
        self._operations_of: dict[str, str] = {}  # instance name -> its insert operation

    # ---------------------------------------------------------------- SDK plumbing

    def _connect(self) -> None:
        if self._instances is not None:
            return
        try:
            import google.auth
            import google.auth.exceptions
            from google.cloud import compute_v1
        except ImportError as exc:
            raise VpError("the gce platform needs google-cloud-compute", hint=HINT_INSTALL) from exc
        try:
            credentials, cred_project = google.auth.default(scopes=SCOPES)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise VpError(
                "no Google Cloud credentials found",
                hint="set GOOGLE_APPLICATION_CREDENTIALS to a service-account JSON file, "
                "or run: gcloud auth application-default login",
            ) from exc
        self._project = (
            self.settings.project
            or os.environ.get("GOOGLE_CLOUD_PROJECT")
            or os.environ.get("CLOUDSDK_CORE_PROJECT")
            or cred_project
        )
        if not self._project:
            raise VpError(
                "no Google Cloud project configured",
                hint="set [gce] project in vp's config or GOOGLE_CLOUD_PROJECT",
            )
        endpoint = os.environ.get("VP_GCE_API_URL")
        options = {"api_endpoint": endpoint} if endpoint else None
        self._instances = compute_v1.InstancesClient(
            credentials=credentials, client_options=options
        )
        self._operations = compute_v1.ZoneOperationsClient(
            credentials=credentials, client_options=options
        )
        self._firewalls = compute_v1.FirewallsClient(
            credentials=credentials, client_options=options
        )

    @property
    def project(self) -> str:
        self._connect()
        return self._project  # type: ignore[return-value]

    def _api(self, what: str, fn, *args, **kwargs):
        """One API call; failures become a one-line VpError (NotFound passes through)."""
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as aexc

        try:
            return fn(*args, **kwargs)
        except gexc.NotFound:
            raise
        except (gexc.Unauthorized, aexc.RefreshError) as exc:
            raise VpError(
                f"gce: {what} failed: not authenticated ({_message(exc)})",
                hint="check GOOGLE_APPLICATION_CREDENTIALS / gcloud auth application-default login",
            ) from exc
        except gexc.Forbidden as exc:
            raise VpError(
                f"gce: {what} failed: permission denied ({_message(exc)})",
                hint=f"the credentials need Compute Admin on project {self._project}",
            ) from exc
        except gexc.GoogleAPICallError as exc:
            raise VpError(f"gce: {what} failed: {_message(exc)}") from exc
        except aexc.TransportError as exc:
            raise VpError(
                f"gce: cannot reach the Compute API: {exc}",
                hint="check the network or VP_GCE_API_URL",
            ) from exc

    def _not_found(self):
        from google.api_core import exceptions as gexc

        return gexc.NotFound

    # ---------------------------------------------------------------- read side

    def _search(self, spec: HostSpec) -> list[Offer]:
        out = []
        for row in _machine_rows():
            machine, accel, gpu, count, price = (
                row["machine_type"], row.get("accelerator"), row["gpu"], row["gpus"], row["price"]
            )  # fmt: skip
            if not gpus.matches(spec.gpu, gpu, row["memory_gb"]):
                continue
            if count < max(spec.gpus, 1):
                continue
            if spec.max_price is not None and price > spec.max_price:
                continue
            extra = {"machine_type": machine}
            if accel:
                extra["accelerator"] = accel
            out.append(
                Offer(
                    platform=NAME,
                    id=_offer_id(machine, accel),
                    gpu=gpu,
                    gpus=count,
                    price=price,
                    region=self.zone,
                    spot=bool(spec.spot),
                    extra=extra,
                )
            )
        fewest = min((o.gpus for o in out), default=0)
        return sorted((o for o in out if o.gpus == fewest), key=lambda o: (o.price, o.id))

    def _host(self, inst: Any) -> Host:
        machine = _last(inst.machine_type)
        accel = (
            _last(inst.guest_accelerators[0].accelerator_type) if inst.guest_accelerators else None
        )
        gpu, count, price = None, 0, None
        for m, a, g, c, p in machines():
            if m == machine and (a == accel or (a is None and accel is None)):
                gpu, count, price = g, c, p
                break
        labels = dict(inst.labels)
        user = self.user
        for item in inst.metadata.items if inst.metadata else []:
            if item.key == "ssh-keys" and ":" in (item.value or ""):
                user = item.value.split(":", 1)[0].strip()
        nat_ip = None
        for nic in inst.network_interfaces:
            for ac in nic.access_configs:
                if ac.nat_i_p:
                    nat_ip = ac.nat_i_p
        key_file = labels.get("vp-key")
        return Host(
            id=inst.name,
            name=inst.name,
            platform=NAME,
            status=STATUS.get(inst.status, UNKNOWN),
            gpu=gpu,
            gpus=count,
            price=price,
            ssh_user=user,
            ssh_host=nat_ip,
            ssh_port=22,
            labels={
                "project": labels.get("vp-project", ""),
                **({"node": labels["vp-node"]} if labels.get("vp-node", "").isdigit() else {}),
                "zone": self.zone,
                "machine_type": machine,
                "market": "spot"
                if inst.scheduling and inst.scheduling.provisioning_model == "SPOT"
                else "on-demand",
            },
            key_path=str(keys.keys_dir() / key_file) if key_file else None,
            region=self.zone,
            host_key_alias=f"vp-{NAME}-{inst.name}",
            created_at=_timestamp(inst.creation_timestamp),
        )

    def _get_raw(self, host_id: str):
        self._connect()
        return self._api(
            "instances.get",
            self._instances.get,
            project=self._project,
            zone=self.zone,
            instance=host_id,
        )

    def _get(self, host_id: str) -> Host:
        try:
            return self._host(self._get_raw(host_id))
        except self._not_found() as exc:
            raise HostGone(f"gce instance {host_id} does not exist in {self.zone}") from exc

    def list(self, project: str | None = None) -> list[Host]:
        self._connect()
        # One parenthesized expression per term, joined by AND (compute's list filter syntax).
        filt = '(labels.vp-managed = "true")'
        if project:
            filt += f' AND (labels.vp-project = "{_label(project)}")'
        pager = self._api(
            "instances.list",
            self._instances.list,
            request={"project": self._project, "zone": self.zone, "filter": filt},
        )
        return self._api("instances.list", lambda: [self._host(i) for i in pager])

    # ---------------------------------------------------------------- create

    def _instance_body(
        self,
        offer: Offer,
        spec: HostSpec,
        name: str,
        project: str,
        public_key: str,
        key_file: str,
        rank: int = 0,
    ):
        from google.cloud import compute_v1

        machine = offer.extra["machine_type"]
        accel = offer.extra.get("accelerator")
        scheduling = compute_v1.Scheduling(
            on_host_maintenance="TERMINATE", automatic_restart=not spec.spot
        )
        if spec.spot:
            scheduling.provisioning_model = "SPOT"
            scheduling.instance_termination_action = "STOP"  # so it can be started again
        key_line = f"{self.user}:{public_key.split()[0]} {public_key.split()[1]} {self.user}"
        body = compute_v1.Instance(
            name=name,
            machine_type=f"zones/{self.zone}/machineTypes/{machine}",
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=self.settings.image or DEFAULT_IMAGE,
                        disk_size_gb=max(int(spec.disk_gb or 0), 50),
                    ),
                )
            ],
            network_interfaces=[
                compute_v1.NetworkInterface(
                    network="global/networks/default",
                    access_configs=[
                        compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")
                    ],
                )
            ],
            scheduling=scheduling,
            metadata=compute_v1.Metadata(
                items=[
                    compute_v1.Items(key="ssh-keys", value=key_line),
                    compute_v1.Items(key="enable-oslogin", value="FALSE"),
                    compute_v1.Items(key="install-nvidia-driver", value="True"),
                ]
            ),
            tags=compute_v1.Tags(items=[FIREWALL]),
            labels={
                "vp-project": _label(project),
                "vp-managed": "true",
                "vp-key": _label(key_file),
                **({"vp-node": str(rank)} if rank else {}),  # node R of a multi-node run
            },
        )
        if accel:
            body.guest_accelerators = [
                compute_v1.AcceleratorConfig(
                    accelerator_type=f"zones/{self.zone}/acceleratorTypes/{accel}",
                    accelerator_count=offer.gpus,
                )
            ]
        return body

    def _ensure_firewall(self) -> None:
        """Two rules on the default network, the counterpart of the AWS security group:
        `vp-ssh` opens tcp/22 to VMs tagged `vp-ssh`; `vp-nodes` opens every tcp/udp port (and
        ping) between VMs tagged `vp-ssh` and to no one else, so the nodes of a multi-node run
        reach rank 0 at its private address. Without the right to create them, a single host
        carries on (the auto-mode default network's default-allow-ssh may let ssh in); a
        node's create fails, as its run could not rendezvous."""
        from google.cloud import compute_v1

        self._ensure_rule(
            compute_v1.Firewall(
                name=FIREWALL,
                network="global/networks/default",
                direction="INGRESS",
                allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["22"])],
                source_ranges=["0.0.0.0/0"],
                target_tags=[FIREWALL],
                description="vp: ssh access to GPU hosts",
            ),
            required=False,
        )
        self._ensure_rule(
            compute_v1.Firewall(
                name=NODES_FIREWALL,
                network="global/networks/default",
                direction="INGRESS",
                allowed=[compute_v1.Allowed(I_p_protocol=p) for p in ("tcp", "udp", "icmp")],
                source_tags=[FIREWALL],  # the VMs' own (internal) addresses, never the internet
                target_tags=[FIREWALL],
                description="vp: the nodes of a multi-node run to each other",
            ),
            required=self.nodes_of is not None,
        )

    def _ensure_rule(self, rule: Any, required: bool) -> None:
        from google.api_core import exceptions as gexc

        try:
            self._api(
                "firewalls.get", self._firewalls.get, project=self._project, firewall=rule.name
            )
            return
        except gexc.NotFound:
            pass
        try:
            self._firewalls.insert_unary(project=self._project, firewall_resource=rule)
        except gexc.Conflict:
            pass  # made concurrently
        except gexc.Forbidden as exc:
            if required:
                raise VpError(
                    f"gce: creating firewall rule {rule.name} failed: permission denied "
                    f"({_message(exc)})",
                    hint="the credentials need compute.firewalls.create, or create it: gcloud "
                    f"compute firewall-rules create {rule.name} --network=default "
                    f"--allow=tcp,udp,icmp --source-tags={FIREWALL} --target-tags={FIREWALL}",
                ) from exc
        except gexc.NotFound as exc:
            raise VpError(
                f"gce: project {self._project} not found ({_message(exc)})",
                hint="check [gce] project (or GOOGLE_CLOUD_PROJECT)",
            ) from exc
        except gexc.GoogleAPICallError as exc:
            raise VpError(
                f"gce: creating firewall rule {rule.name} failed: {_message(exc)}"
            ) from exc

    def _no_offer(self, spec: HostSpec, found: list[Offer]) -> VpError:
        within = f" within ${spec.max_price}/h" if spec.max_price is not None else ""
        return VpError(
            f"gce offers no {spec.gpus}x {spec.gpu or 'GPU'} machine{within}",
            hint="vp offers -p gce lists what there is; raise max_price or pick another GPU",
        )

    def _attempts(self, spec: HostSpec, fitting: list[Offer]) -> list[Offer]:
        self._connect()
        self._ensure_firewall()
        return fitting[: self.max_offers]

    def _key_name(self, name: str) -> str:
        return f"gce-{_label(name)}-{secrets.token_hex(3)}"

    def _launch(self, offer: Offer, spec: HostSpec, name: str, key: keys.KeyPair) -> str:
        project = self.project_of(name)
        instance_name = f"{_label(name).strip('-_') or 'vp'}"[:55].rstrip("-_")
        instance_name = f"{instance_name}-{secrets.token_hex(3)}"
        if not instance_name[0].isalpha():
            instance_name = "vp-" + instance_name
        body = self._instance_body(
            offer,
            spec,
            instance_name,
            project,
            key.public_key,
            key.private_path.name,
            rank=self.node_rank_of(name),
        )
        try:
            op = self._instances.insert_unary(
                project=self._project, zone=self.zone, instance_resource=body
            )
        except BaseException as exc:
            self._insert_failed(exc, instance_name, key.private_path)
            raise  # unreachable
        self._operations_of[instance_name] = op.name
        return instance_name

    def _accepted(self, host_id: str, spec: HostSpec, name: str, key: keys.KeyPair) -> Host:
        self._wait_operation(self._operations_of.pop(host_id), host_id, spec)
        return self._get(host_id)

    def _insert_failed(self, exc: BaseException, instance_name: str, key: Path) -> None:
        """The insert call itself failed. A 4xx means nothing was made; anything else (Ctrl-C,
        a dropped connection, a 5xx) may have created the VM: delete it by name to be sure."""
        from google.api_core import exceptions as gexc

        if isinstance(exc, gexc.NotFound):
            discard_key(key)
            raise VpError(
                f"gce: project {self._project} or zone {self.zone} not found ({_message(exc)})",
                hint="check [gce] project and [gce] zone",
            ) from None
        if isinstance(exc, gexc.ClientError):
            discard_key(key)
            self._api("instances.insert", _raise, exc)
        done = self._delete_quietly(instance_name, key)
        self._reraise_after_cleanup(exc, done)

    def _wait_operation(self, op_name: str, instance_name: str, spec: HostSpec) -> None:
        """Poll the insert operation (on our endpoint, not the SDK's result()) until DONE."""

        def done():
            op = self._api(
                "zoneOperations.get",
                self._operations.get,
                project=self._project,
                zone=self.zone,
                operation=op_name,
            )
            return op if op.status.name == "DONE" else None

        op = poll(
            done,
            timeout=self.create_timeout,
            interval=self.poll_interval,
            what=f"gce to finish creating {instance_name}",
            timed_out=lambda: VpError(
                f"gce did not finish creating {instance_name} in {self.create_timeout:.0f}s"
            ),
        )
        errors = list(op.error.errors) if op.error else []
        if not errors:
            return
        codes = [e.code for e in errors]
        if any(c in CAPACITY_ERRORS for c in codes):
            code = next(c for c in codes if c in CAPACITY_ERRORS)
            what = f"{spec.gpus}x {spec.gpu or 'GPU'}"
            reason = "GPU quota exceeded" if code == "QUOTA_EXCEEDED" else "no capacity"
            raise Unavailable(
                f"gce zone {self.zone} cannot create {what} now: {reason} ({code})",
                hint=f"try another zone: set [gce] zone (e.g. {_other_zone(self.zone)})"
                + (" or request more GPU quota" if code == "QUOTA_EXCEEDED" else ""),
            )
        message = " ".join((errors[0].message or "").split())
        raise VpError(f"gce: creating {instance_name} failed: {codes[0]}: {message}")

    def _delete_quietly(self, instance_name: str, key: Path | None) -> str:
        """Delete a VM this create made; say what happened ("" if GCE had already dropped it)."""
        try:
            existed = self._lifecycle_quiet_delete(instance_name)
        except BaseException:  # noqa: BLE001 - report the original failure, not this one
            return f"could not delete the new gce instance {instance_name}; run: vp cleanup"
        finally:
            if key is not None:
                discard_key(key)
        return f"deleted the new gce instance {instance_name}" if existed else ""

    def _lifecycle_quiet_delete(self, instance_name: str) -> bool:
        try:
            self._lifecycle("delete", "delete_unary", instance_name)
        except HostGone:
            return False
        return True

    def _reraise_after_cleanup(self, exc: BaseException, done: str) -> NoReturn:
        reraise_after_cleanup(exc, done, "GCE", _message)

    # ---------------------------------------------------------------- lifecycle

    def _lifecycle(self, what: str, method: str, host_id: str):
        self._connect()
        try:
            return self._api(
                f"instances.{what}",
                getattr(self._instances, method),
                project=self._project,
                zone=self.zone,
                instance=host_id,
            )
        except self._not_found() as exc:
            raise HostGone(f"gce instance {host_id} does not exist in {self.zone}") from exc

    def start(self, host_id: str) -> Host:
        self._lifecycle("start", "start_unary", host_id)
        return self._get(host_id)

    def stop(self, host_id: str) -> None:
        self._lifecycle("stop", "stop_unary", host_id)

    def destroy(self, host_id: str) -> None:
        key = None
        with suppress(HostGone):
            key = self._get(host_id).key_path
        try:
            self._lifecycle("delete", "delete_unary", host_id)
        except HostGone:
            pass
        if key:
            discard_key(Path(key))


def _timestamp(text: str | None) -> float | None:
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None
    except ValueError:
        return None


def _raise(exc: BaseException):
    raise exc


def _message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc)
    return " ".join(str(msg).split())[:300]


def _other_zone(zone: str) -> str:
    region, _, letter = zone.rpartition("-")
    for other in "abcf":
        if other != letter:
            return f"{region}-{other}"
    return zone
