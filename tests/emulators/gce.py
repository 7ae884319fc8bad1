"""Compute Engine emulator: the compute v1 REST wire format google-cloud-compute sends, an OAuth2
token endpoint, and real sshd hosts in network namespaces as VMs.

- `POST/GET /compute/v1/projects/P/zones/Z/instances` (insert, list with `filter`),
  `GET/DELETE .../instances/NAME`, `POST .../instances/NAME/start|stop`,
  `GET .../operations/OP`; errors in Google's JSON error shape; operations as
  `compute#operation` resources that go RUNNING -> DONE (with `error.errors[]` on failure).
- `GET .../global/firewalls/NAME` and `POST .../global/firewalls` (firewalls.get / insert:
  the URIs in google-cloud-compute's `services/firewalls/transports/rest_base.py`, the body is
  the `Firewall` message of `types/compute.py`, camelCase on the wire: `allowed[].IPProtocol`,
  `sourceRanges`, `sourceTags`, `targetTags`; REST reference
  cloud.google.com/compute/docs/reference/rest/v1/firewalls). An INGRESS rule that names no
  source (no sourceRanges, sourceTags or sourceServiceAccounts) is stored as applying to every
  address, `sourceRanges: ["0.0.0.0/0"]` (what `gcloud compute firewall-rules create` documents
  for a rule without --source-ranges/--source-tags; the conservative reading, so a rule whose
  tags were forgotten shows up as world-open in the tests). An existing name
  is 409 alreadyExists; `firewalls_denied` makes inserts 403 (no compute.firewalls.create).
- Auth: a service-account JSON (`service_account_file`) whose `token_uri` is this server.
  google-auth either signs its own JWT with that key (what the compute client does) or trades
  a signed assertion for an access token at `/token` (the JWT-bearer flow); every API call's
  `Authorization: Bearer` must be one of those, verified against the account's public key.
- An inserted VM becomes a namespace `SshHost` on port 22 whose veth address is the
  accessConfig's natIP, with the `ssh-keys` metadata keys authorized; stop stops sshd and
  drops the ephemeral natIP; start boots a new namespace (new natIP, same host key, as GCE
  keeps the disk); delete closes it.
- Faults: `exhausted_zones` (ZONE_RESOURCE_POOL_EXHAUSTED on the insert operation),
  `quota_exceeded`, `never_ready` (RUNNING with a natIP where sshd never answers),
  `fail_auth` (401 on every API call), `boot_delay`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import shutil
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
UNIVERSE = "emulated.vp.test"
IMPLICIT_GPU_FAMILIES = ("a2-", "a3-", "g2-")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _last(url: str | None) -> str:
    return (url or "").rstrip("/").rsplit("/", 1)[-1]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, status: str = ""):
        super().__init__(message)
        self.code, self.reason, self.message, self.status = code, reason, message, status

    def body(self) -> dict:
        err = {
            "code": self.code,
            "message": self.message,
            "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
        }
        if self.status:
            err["status"] = self.status
        return {"error": err}


class GceEmulator:
    def __init__(self, root: Path, *, project: str = "vp-emulated"):
        self.root = Path(root)
        self.project = project
        self.client_email = f"vp-tests@{project}.iam.gserviceaccount.com"
        self.instances: dict[tuple[str, str], dict] = {}  # (zone, name) -> Instance JSON
        self.operations: dict[str, dict] = {}
        self.hosts: dict[tuple[str, str], Any] = {}  # (zone, name) -> SshHost
        self.firewalls: dict[str, dict] = {}
        self.inserts: list[dict] = []  # request bodies of accepted inserts
        self.requests: list[str] = []  # "METHOD path" of every API call
        self.auth_kinds: list[str] = []  # "self-signed-jwt" / "access-token" per API call
        self.tokens: set[str] = set()
        self.errors: list[str] = []
        # faults
        self.exhausted_zones: set[str] = set()
        self.quota_exceeded = False
        self.never_ready = False
        self.fail_auth = False
        self.boot_delay = 0.0
        self.insert_delay = 0.0  # seconds an insert operation stays RUNNING
        self.firewalls_denied = False
        self._lock = threading.RLock()
        self._workers: list[threading.Thread] = []
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._boots: dict[tuple[str, str], int] = {}
        self._vm_locks: dict[tuple[str, str], threading.Lock] = {}
        self.service_account_file = self.root / "service-account.json"

    # ---------------------------------------------------------------- public surface

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        return {
            "VP_GCE_API_URL": self.url,
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.service_account_file),
            "CLOUDSDK_CONFIG": str(self.root / "gcloud"),
            "NO_GCE_CHECK": "True",
            # A universe of its own: google-auth then makes no Regional Access Boundary lookup
            # at iamcredentials.googleapis.com, so no test traffic leaves this machine.
            "GOOGLE_CLOUD_UNIVERSE_DOMAIN": UNIVERSE,
        }

    def clear_faults(self) -> None:
        self.exhausted_zones.clear()
        self.quota_exceeded = self.never_ready = self.fail_auth = False
        self.firewalls_denied = False
        self.boot_delay = self.insert_delay = 0.0

    def instance(self, name: str, zone: str = "us-central1-a") -> dict | None:
        return self.instances.get((zone, name))

    def host(self, name: str, zone: str = "us-central1-a"):
        return self.hosts.get((zone, name))

    def start(self) -> GceEmulator:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "gcloud").mkdir(exist_ok=True)
        self._make_service_account()
        emu = self

        class Handler(_Handler):
            emulator = emu

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._write_service_account()
        return self

    def close(self) -> None:
        self._closing.set()
        for t in list(self._workers):
            t.join(timeout=15)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for host in list(self.hosts.values()):
            try:
                host.close()
            except Exception:  # noqa: BLE001 - best effort teardown
                traceback.print_exc()
        self.hosts.clear()

    def __enter__(self) -> GceEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- credentials

    def _make_service_account(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self.public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        self.key_id = secrets.token_hex(20)

    def _write_service_account(self) -> None:
        info = {
            "type": "service_account",
            "project_id": self.project,
            "private_key_id": self.key_id,
            "private_key": self._private_pem,
            "client_email": self.client_email,
            "client_id": "104242424242424242424",
            "auth_uri": f"{self.url}/auth",
            "token_uri": f"{self.url}/token",
            "universe_domain": UNIVERSE,
        }
        self.service_account_file.write_text(json.dumps(info))
        self.service_account_file.chmod(0o600)

    def verify_jwt(self, token: str) -> dict:
        from google.auth import jwt

        claims = jwt.decode(token, certs=self.public_pem, verify=True)
        if claims.get("iss") != self.client_email:
            raise ValueError(f"unexpected issuer {claims.get('iss')}")
        return claims

    def check_auth(self, header: str | None) -> None:
        if self.fail_auth:
            raise ApiError(
                401,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
                "UNAUTHENTICATED",
            )
        token = (header or "").removeprefix("Bearer ").strip()
        if token and token in self.tokens:
            self.auth_kinds.append("access-token")
            return
        try:
            self.verify_jwt(token)
        except Exception as exc:  # noqa: BLE001 - any bad token is a 401
            raise ApiError(
                401, "authError", f"Invalid Credentials ({exc})", "UNAUTHENTICATED"
            ) from None
        self.auth_kinds.append("self-signed-jwt")

    def token_grant(self, form: dict[str, list[str]]) -> dict:
        grant = form.get("grant_type", [""])[0]
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            raise ApiError(400, "unsupported_grant_type", f"bad grant_type {grant!r}")
        claims = self.verify_jwt(form.get("assertion", [""])[0])
        if claims.get("aud") not in (f"{self.url}/token", "https://oauth2.googleapis.com/token"):
            raise ApiError(400, "invalid_grant", "Invalid JWT: bad audience")
        token = "ya29.emulated-" + secrets.token_urlsafe(24)
        self.tokens.add(token)
        return {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    # ---------------------------------------------------------------- compute API

    def _base(self, project: str, zone: str) -> str:
        return f"{self.url}/compute/v1/projects/{project}/zones/{zone}"

    def _check_scope(self, project: str, zone: str) -> None:
        if project != self.project:
            raise ApiError(
                404, "notFound", f"The resource 'projects/{project}' was not found", "NOT_FOUND"
            )
        if not re.fullmatch(r"[a-z]+-[a-z]+\d+-[a-z]", zone):
            raise ApiError(
                400, "invalid", f"Invalid value for field 'zone': '{zone}'.", "INVALID_ARGUMENT"
            )

    def _get_instance(self, project: str, zone: str, name: str) -> dict:
        inst = self.instances.get((zone, name))
        if inst is None:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found",
                "NOT_FOUND",
            )
        return inst

    def _new_operation(self, project: str, zone: str, kind: str, inst: dict) -> dict:
        name = f"operation-{int(time.time() * 1000)}-{secrets.token_hex(8)}"
        op = {
            "kind": "compute#operation",
            "id": str(secrets.randbits(63)),
            "name": name,
            "zone": self._base(project, zone).rsplit("/zones/", 1)[0] + f"/zones/{zone}",
            "operationType": kind,
            "targetLink": inst["selfLink"],
            "targetId": inst["id"],
            "status": "RUNNING",
            "user": self.client_email,
            "progress": 0,
            "insertTime": _now(),
            "startTime": _now(),
            "selfLink": f"{self._base(project, zone)}/operations/{name}",
        }
        self.operations[name] = op
        return op

    def _finish(self, op: dict, error: tuple[str, str] | None = None) -> None:
        with self._lock:
            if error:
                op["error"] = {"errors": [{"code": error[0], "message": error[1]}]}
                op["httpErrorStatusCode"] = 503 if "EXHAUSTED" in error[0] else 403
                op["httpErrorMessage"] = (
                    "SERVICE UNAVAILABLE" if "EXHAUSTED" in error[0] else "FORBIDDEN"
                )
            op["status"], op["progress"], op["endTime"] = "DONE", 100, _now()

    def _spawn(self, fn, *args) -> None:
        def run():
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - surfaced to the tests via .errors
                self.errors.append(traceback.format_exc())

        t = threading.Thread(target=run, daemon=True)
        self._workers = [w for w in self._workers if w.is_alive()] + [t]
        t.start()

    def insert(self, project: str, zone: str, body: dict) -> dict:
        self._check_scope(project, zone)
        name = body.get("name", "")
        if not NAME_RE.match(name):
            raise ApiError(
                400,
                "invalid",
                f"Invalid value for field 'resource.name': '{name}'.",
                "INVALID_ARGUMENT",
            )
        machine = _last(body.get("machineType"))
        if not machine:
            raise ApiError(400, "required", "Required field 'resource.machineType' not specified")
        if not any(d.get("boot") for d in body.get("disks", [])):
            raise ApiError(400, "required", "Required field 'resource.disks' not specified")
        has_gpu = bool(body.get("guestAccelerators")) or machine.startswith(IMPLICIT_GPU_FAMILIES)
        if has_gpu and body.get("scheduling", {}).get("onHostMaintenance") != "TERMINATE":
            raise ApiError(
                400,
                "badRequest",
                "Instances with guest accelerators do not support live migration.",
                "INVALID_ARGUMENT",
            )
        with self._lock:
            if (zone, name) in self.instances:
                raise ApiError(
                    409,
                    "alreadyExists",
                    f"The resource 'projects/{project}/zones/{zone}/instances/{name}' "
                    "already exists",
                    "ALREADY_EXISTS",
                )
            nics = []
            for i, nic in enumerate(body.get("networkInterfaces") or [{}]):
                nics.append(
                    {
                        "kind": "compute#networkInterface",
                        "name": f"nic{i}",
                        "network": nic.get("network", "global/networks/default"),
                        "networkIP": f"10.128.0.{secrets.randbelow(250) + 2}",
                        "accessConfigs": [
                            {
                                "kind": "compute#accessConfig",
                                "type": ac.get("type", "ONE_TO_ONE_NAT"),
                                "name": ac.get("name", "External NAT"),
                                "networkTier": "PREMIUM",
                            }
                            for ac in nic.get("accessConfigs", [])
                        ],
                    }
                )
            inst = {
                "kind": "compute#instance",
                "id": str(secrets.randbits(63)),
                "creationTimestamp": _now(),
                "name": name,
                "machineType": f"{self._base(project, zone)}/machineTypes/{machine}",
                "status": "PROVISIONING",
                "zone": self._base(project, zone).rsplit("/zones/", 1)[0] + f"/zones/{zone}",
                "networkInterfaces": nics,
                "disks": [
                    {
                        "kind": "compute#attachedDisk",
                        "type": "PERSISTENT",
                        "mode": "READ_WRITE",
                        "source": f"{self._base(project, zone)}/disks/{name}",
                        "deviceName": "persistent-disk-0",
                        "index": 0,
                        "boot": True,
                        "autoDelete": bool(d.get("autoDelete")),
                        "diskSizeGb": str(d.get("initializeParams", {}).get("diskSizeGb", "10")),
                    }
                    for d in body.get("disks", [])
                    if d.get("boot")
                ],
                "metadata": {
                    "kind": "compute#metadata",
                    "fingerprint": secrets.token_urlsafe(8),
                    "items": body.get("metadata", {}).get("items", []),
                },
                "scheduling": body.get("scheduling", {}),
                "labels": body.get("labels", {}),
                "guestAccelerators": body.get("guestAccelerators", []),
                "selfLink": f"{self._base(project, zone)}/instances/{name}",
            }
            self.instances[(zone, name)] = inst
            self.inserts.append(body)
            op = self._new_operation(project, zone, "insert", inst)
        self._spawn(self._provision, zone, name, op)
        return op

    def _ssh_keys(self, inst: dict) -> list[str]:
        items = {i.get("key"): i.get("value", "") for i in inst["metadata"].get("items", [])}
        if str(items.get("enable-oslogin", "")).upper() == "TRUE":
            return []
        out = []
        for line in items.get("ssh-keys", "").splitlines():
            _user, _, key = line.partition(":")
            if key.strip():
                out.append(" ".join(key.split()[:2]))
        return out

    def _provision(self, zone: str, name: str, op: dict) -> None:
        if self._closing.wait(max(self.insert_delay, 0.05)):
            return
        if zone in self.exhausted_zones or self.quota_exceeded:
            with self._lock:
                self.instances.pop((zone, name), None)
            if zone in self.exhausted_zones:
                err = (
                    "ZONE_RESOURCE_POOL_EXHAUSTED",
                    f"The zone 'projects/{self.project}/zones/{zone}' does not have enough "
                    "resources available to fulfill the request.  Try a different zone, or try "
                    "again later.",
                )
            else:
                err = (
                    "QUOTA_EXCEEDED",
                    f"Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 0.0 in region {zone[:-2]}.",
                )
            self._finish(op, err)
            return
        with self._lock:
            if (zone, name) in self.instances:
                self.instances[(zone, name)]["status"] = "STAGING"
        self._finish(op)  # GCE finishes an insert once the VM is staged
        self._boot(zone, name)

    def _boot(self, zone: str, name: str) -> None:
        try:
            from tests.sshhost import SshHost
        except ImportError:  # tests/ itself is on sys.path (rootdir-less import mode)
            from sshhost import SshHost  # type: ignore[no-redef]

        if self._closing.wait(self.boot_delay):
            return
        with self._vm_lock(zone, name):  # one boot/halt of a VM at a time
            self._boot_locked(zone, name, SshHost)

    def _vm_lock(self, zone: str, name: str) -> threading.Lock:
        with self._lock:
            return self._vm_locks.setdefault((zone, name), threading.Lock())

    def _boot_locked(self, zone: str, name: str, SshHost) -> None:  # noqa: N803
        with self._lock:
            inst = self.instances.get((zone, name))
            if inst is None or inst["status"] != "STAGING":
                return
            previous = self.hosts.get((zone, name))
            self._boots[(zone, name)] = n = self._boots.get((zone, name), 0) + 1
        host = SshHost(
            self.root / f"{name}-{n}",
            netns=True,
            user="root",
            authorized_keys=self._ssh_keys(inst),
        )
        if previous is not None:  # same disk, same host key; new namespace, new address
            for suffix in ("", ".pub"):
                shutil.copyfile(
                    str(previous.host_key_path) + suffix, str(host.host_key_path) + suffix
                )
            host.host_public_key = previous.host_public_key
            previous.close()
        self.hosts[(zone, name)] = host
        if not self.never_ready:
            host.start()
        with self._lock:
            if self.instances.get((zone, name)) is not inst or inst["status"] != "STAGING":
                stale = True  # stopped or deleted meanwhile
            else:
                stale = False
                inst["status"] = "RUNNING"
                for nic in inst["networkInterfaces"][:1]:
                    for ac in nic["accessConfigs"][:1]:
                        ac["natIP"] = host.address
        if stale:
            host.stop()

    def _drop_ip(self, inst: dict) -> None:
        for nic in inst["networkInterfaces"]:
            for ac in nic["accessConfigs"]:
                ac.pop("natIP", None)

    def start_instance(self, project: str, zone: str, name: str) -> dict:
        self._check_scope(project, zone)
        with self._lock:
            inst = self._get_instance(project, zone, name)
            op = self._new_operation(project, zone, "start", inst)
            if inst["status"] != "TERMINATED":
                self._finish(op)
                return op
            inst["status"] = "STAGING"
        self._finish(op)
        self._spawn(self._boot, zone, name)
        return op

    def stop_instance(self, project: str, zone: str, name: str) -> dict:
        self._check_scope(project, zone)
        with self._lock:
            inst = self._get_instance(project, zone, name)
            op = self._new_operation(project, zone, "stop", inst)
            if inst["status"] == "TERMINATED":
                self._finish(op)
                return op
            inst["status"] = "STOPPING"
        self._spawn(self._halt, zone, name, op, False)
        return op

    def delete_instance(self, project: str, zone: str, name: str) -> dict:
        self._check_scope(project, zone)
        with self._lock:
            inst = self._get_instance(project, zone, name)
            op = self._new_operation(project, zone, "delete", inst)
            inst["status"] = "STOPPING"
        self._spawn(self._halt, zone, name, op, True)
        return op

    def _halt(self, zone: str, name: str, op: dict, delete: bool) -> None:
        with self._vm_lock(zone, name):
            self._halt_locked(zone, name, op, delete)

    def _halt_locked(self, zone: str, name: str, op: dict, delete: bool) -> None:
        host = self.hosts.get((zone, name))
        if host is not None:
            if delete:
                self.hosts.pop((zone, name), None)
                host.close()
            else:
                host.stop()
        with self._lock:
            inst = self.instances.get((zone, name))
            if inst is not None:
                self._drop_ip(inst)
                if delete:
                    del self.instances[(zone, name)]
                else:
                    inst["status"] = "TERMINATED"
        self._finish(op)

    def get_firewall(self, project: str, name: str) -> dict:
        self._check_scope(project, "us-central1-a")
        rule = self.firewalls.get(name)
        if rule is None:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{project}/global/firewalls/{name}' was not found",
            )
        return rule

    def insert_firewall(self, project: str, body: dict) -> dict:
        self._check_scope(project, "us-central1-a")
        name = body.get("name", "")
        if self.firewalls_denied:
            raise ApiError(
                403,
                "forbidden",
                f"Required 'compute.firewalls.create' permission for "
                f"'projects/{project}/global/firewalls/{name}'",
            )
        sources = ("sourceRanges", "sourceTags", "sourceServiceAccounts")
        if body.get("direction", "INGRESS") == "INGRESS" and not any(body.get(k) for k in sources):
            body = {**body, "sourceRanges": ["0.0.0.0/0"]}
        with self._lock:
            if name in self.firewalls:
                raise ApiError(
                    409,
                    "alreadyExists",
                    f"The resource 'projects/{project}/global/firewalls/{name}' already exists",
                )
            link = f"{self.url}/compute/v1/projects/{project}/global/firewalls/{name}"
            self.firewalls[name] = {
                **body,
                "kind": "compute#firewall",
                "id": str(secrets.randbits(63)),
                "selfLink": link,
            }
            op_name = f"operation-{int(time.time() * 1000)}-{secrets.token_hex(8)}"
            return {
                "kind": "compute#operation",
                "id": str(secrets.randbits(63)),
                "name": op_name,
                "operationType": "insert",
                "targetLink": link,
                "status": "DONE",
                "progress": 100,
                "selfLink": f"{self.url}/compute/v1/projects/{project}/global/operations/{op_name}",
            }

    def list_instances(self, project: str, zone: str, query: dict) -> dict:
        self._check_scope(project, zone)
        wanted = _parse_filter(query.get("filter", [""])[0])
        with self._lock:
            items = [
                json.loads(json.dumps(inst))
                for (z, _), inst in sorted(self.instances.items())
                if z == zone and all(inst.get("labels", {}).get(k) == v for k, v in wanted)
            ]
        out = {
            "kind": "compute#instanceList",
            "id": f"projects/{project}/zones/{zone}/instances",
            "selfLink": f"{self._base(project, zone)}/instances",
        }
        if items:
            out["items"] = items
        return out

    def get_operation(self, project: str, zone: str, name: str) -> dict:
        self._check_scope(project, zone)
        op = self.operations.get(name)
        if op is None:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{project}/zones/{zone}/operations/{name}' was not found",
            )
        return op


def _parse_filter(text: str) -> list[tuple[str, str]]:
    """`labels.KEY = "VALUE"` terms joined by AND/spaces (all vp sends); anything else is a 400."""
    terms = []
    rest = text
    for m in re.finditer(r'\(?\s*labels\.([a-z0-9_-]+)\s*=\s*"?([a-z0-9_-]*)"?\s*\)?', text):
        terms.append((m.group(1), m.group(2)))
        rest = rest.replace(m.group(0), " ", 1)
    if rest.replace("AND", " ").strip():
        raise ApiError(400, "invalid", f"Invalid list filter expression '{text}'.")
    return terms


ROUTES = [
    ("POST", r"/compute/v1/projects/([^/]+)/zones/([^/]+)/instances", "insert"),
    ("GET", r"/compute/v1/projects/([^/]+)/zones/([^/]+)/instances", "list"),
    ("GET", r"/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)", "get"),
    ("DELETE", r"/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)", "delete"),
    ("POST", r"/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)/start", "start"),
    ("POST", r"/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)/stop", "stop"),
    ("GET", r"/compute/v1/projects/([^/]+)/zones/([^/]+)/operations/([^/]+)", "operation"),
    ("GET", r"/compute/v1/projects/([^/]+)/global/firewalls/([^/]+)", "get_firewall"),
    ("POST", r"/compute/v1/projects/([^/]+)/global/firewalls", "insert_firewall"),
]


def _route(method: str, path: str) -> tuple[str, tuple[str, ...]]:
    for m, pattern, action in ROUTES:
        match = re.fullmatch(pattern, path)
        if m == method and match:
            return action, match.groups()
    raise ApiError(404, "notFound", f"no route for {method} {path}")


class _Handler(BaseHTTPRequestHandler):
    emulator: GceEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        emu = self.emulator
        url = urlsplit(self.path)
        body = self._body()
        try:
            if method == "POST" and url.path == "/token":
                form = parse_qs(body.decode())
                self._send(200, emu.token_grant(form))
                return
            action, args = _route(method, url.path)
            emu.requests.append(f"{method} {url.path}")
            emu.check_auth(self.headers.get("Authorization"))
            if action == "insert":
                result = emu.insert(*args, json.loads(body or b"{}"))
            elif action == "list":
                result = emu.list_instances(*args, parse_qs(url.query))
            elif action == "get":
                emu._check_scope(args[0], args[1])
                with emu._lock:
                    result = json.loads(json.dumps(emu._get_instance(*args)))
            elif action == "get_firewall":
                result = emu.get_firewall(*args)
            elif action == "insert_firewall":
                result = emu.insert_firewall(*args, json.loads(body or b"{}"))
            elif action == "delete":
                result = emu.delete_instance(*args)
            elif action == "start":
                result = emu.start_instance(*args)
            elif action == "stop":
                result = emu.stop_instance(*args)
            else:
                result = emu.get_operation(*args)
            self._send(200, result)
        except ApiError as exc:
            self._send(exc.code, exc.body())
        except (BrokenPipeError, ConnectionResetError):
            return  # the client hung up (a Ctrl-C'd vp): not an emulator fault
        except Exception as exc:  # noqa: BLE001 - a 500 with the traceback for the tests
            emu.errors.append(traceback.format_exc())
            self._send(500, ApiError(500, "backendError", str(exc)).body())

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")
