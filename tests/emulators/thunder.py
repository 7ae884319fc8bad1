"""Thunder Compute REST emulator, speaking the API as Thunder serves it today.

Sources read (2026): Thunder-Compute/thunder-cli v2.0.59 (dc01ad3: `api/client.go`,
`api/types.go`, `pkg/types/types.go`, `utils/pricing.go`, `utils/spec_store.go`, `cmd/create.go`)
and its later commits 7026095 (`cmd/json_contract_test.go`: GET /v2/specs, /v2/status,
/v2/pricing with mode-free keys; instances still under /v1) and 0b6e8a7 (`utils/pricing.go`:
`{gpu}_x{n}` keys, disk beyond 100 GB per GPU billed); Thunder-Compute/terraform-provider-
thundercompute's `TestDiscoveryDataSourcesUseCanonicalV2Contracts` (/v2 shapes, `ramCapGiB`,
/v2/status `{"gpu_type": {GPU: {"status": ...}}, "specs": {KEY: "available"}}`);
Thunder-Compute/thunder-compute-documentation (bc90270, 2026-06-30: `swagger.json`,
guides/stopping-instances.mdx "no native Stop feature", f14d4ec "Remove prototyping and
production split"). Prices are illustrative; the shapes are the point.

Wire format: `Authorization: Bearer TOKEN`; GET /v1/instances/list -> {ID: {uuid, name (made by
the server), status, ip (null until RUNNING), port, gpuType, numGpus (string), cpuCores,
template, storage, createdAt, ...}}; POST /v1/instances/create {cpu_cores, gpu_type, num_gpus,
template, disk_size_gb, public_key?, mode? (ignored)} -> {uuid, identifier, key (a server-made
private key when no public_key was sent)}; POST /v1/instances/{id}/delete|add_key;
POST /v1/instances/{id}/modify {cpu_cores?, gpu_type?, num_gpus?, disk_size_gb?} ->
{identifier, instance_name, gpu_type, num_gpus} (409 unless RUNNING); POST /v1/snapshots/create
{instanceId (the instance uuid), name} -> {message}; GET /v1/snapshots/list -> [{id, name,
minimumDiskSizeGb, status, createdAt}]; DELETE /v1/snapshots/{id}; a create whose `template`
names a READY snapshot restores it. There is no start or stop endpoint (404).
GET /v2/pricing -> {"pricing": {"h100_x1": $/h, ..., "additional_vcpus", "disk_gb",
"snapshot_gb"}}; GET /v2/specs -> {"specs": {"h100_x1": {displayName, vramGB, gpuCount,
vcpuOptions, ramPerVCPUGiB, ramCapGiB, storageGB: {min, max}}}}; GET /v2/status -> as above.
/v1/pricing|specs|status answer the same mode-free shapes.

`ThunderEmulator(legacy=True)` is the API as thunder-cli v2.0.59 knew it: no /v2; /v1 keys
carry a mode (`h100_x1_prototyping`, `h100_x8_production`), specs have `mode`, create requires
`mode`, instances show it, and STOPPED instances exist (set by a test: no endpoint makes one).
Errors are {"error": CODE, "message": TEXT, "code": STATUS}.

Statuses: PROVISIONING -> RUNNING; MODIFYING -> RUNNING (sshd restarts); SNAPPING -> RUNNING
while a snapshot goes CREATING -> READY; a restored instance is RESTORING -> RUNNING on a new
sshd that also accepts the keys the snapshot's disk carried. The exact wording of Thunder's
"no capacity" answer is not published; this emulator answers 409 with error "gpu_unavailable".
`create_foreign(...)` adds an instance as Thunder's console or a colleague's `tnr` would: not
through vp, so vp's state has no record of it.
"""

from __future__ import annotations

import itertools
import re
import secrets
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from .common import Emulator, Request, Response, wait_for

PRICING = {  # today's catalogue: mode-free keys
    "a6000_x1": 0.35,
    "l40_x1": 0.79,
    "l40_x4": 3.16,
    "a100xl_x1": 1.09,
    "a100xl_x2": 2.18,
    "h100_x1": 2.19,
    "h100_x8": 17.52,
    "additional_vcpus": 0.04,
    "disk_gb": 0.0003,
    "snapshot_gb": 0.00006849,
}

LEGACY_PRICING = {  # thunder-cli v2.0.59's catalogue: keys with a mode
    "t4_x1_prototyping": 0.27,
    "a6000_x1_prototyping": 0.57,
    "a100xl_x1_prototyping": 0.78,
    "a100xl_x2_prototyping": 1.56,
    "h100_x1_prototyping": 1.38,
    "a100xl_x1_production": 1.79,
    "h100_x1_production": 2.19,
    "h100_x8_production": 17.52,
    "additional_vcpus": 0.02,
    "disk_gb": 0.0002,
    "ephemeral_disk_gb": 0.0001,
}

DISPLAY = {
    "t4": "NVIDIA T4",
    "a6000": "RTX A6000",
    "a100xl": "NVIDIA A100 (80GB)",
    "h100": "NVIDIA H100",
    "l40": "NVIDIA L40",
}

CONFIG_KEY = re.compile(
    r"^(?P<gpu>[a-z0-9]+)_x(?P<count>\d+)(?:_(?P<mode>prototyping|production))?$"
)


def _error(status: int, code: str, message: str) -> Response:
    return Response(status, {"error": code, "message": message, "code": status})


class ThunderEmulator(Emulator):
    provider = "thunder"

    def __init__(
        self,
        workdir: Path,
        *,
        pricing: dict[str, float] | None = None,
        legacy: bool = False,
        **kwargs,
    ):
        super().__init__(workdir, **kwargs)
        self.legacy = legacy
        self.pricing = dict(pricing or (LEGACY_PRICING if legacy else PRICING))
        self.unavailable: set[str] = set()  # config keys /status reports as not available
        # Behave like an API that makes its own key pair and returns the private half.
        self.ignore_public_key = False
        self._ids = itertools.count(0)
        self.snapshots: dict[str, dict] = {}  # snapshot id -> record
        self.snapshot_delay = 0.3  # seconds a snapshot stays CREATING

    def specs(self) -> dict:
        out = {}
        for key in self.pricing:
            m = CONFIG_KEY.match(key)
            if not m:
                continue
            count, production = int(m["count"]), m["mode"] == "production"
            out[key] = {
                "displayName": DISPLAY.get(m["gpu"], m["gpu"].upper()),
                "vramGB": 80 if m["gpu"] in ("h100", "a100xl") else 48,
                "gpuCount": count,
                "vcpuOptions": [18 * count] if production else [4 * count, 8 * count],
                "ramPerVCPUGiB": 5 if production else 8,
                "storageGB": {"min": 100, "max": 1000 if production else 500},
            }
            if m["mode"]:  # the moded catalogue
                out[key]["mode"] = m["mode"]
                out[key]["ephemeralStorageGB"] = {"min": 0, "max": 1000}
            else:
                out[key]["ramCapGiB"] = 8 * 8 * count
        return out

    def config_key(self, gpu: str, count: int, mode: str | None) -> str:
        return f"{gpu}_x{count}_{mode}" if self.legacy else f"{gpu}_x{count}"

    def handle(self, req: Request) -> Response:
        if not self.authorized(req):
            return _error(401, "unauthorized", "Invalid or expired token")
        path = req.path
        catalogue = path in ("/v2/pricing", "/v2/specs", "/v2/status")
        if not path.startswith("/v1/") and not (catalogue and not self.legacy):
            return _error(404, "not_found", "Not Found")
        path = path[3:]
        if path == "/instances/list" and req.method == "GET":
            with self.lock:
                return Response(200, {iid: self._view(i) for iid, i in self.instances.items()})
        if path == "/instances/create" and req.method == "POST":
            return self.create(req.json or {})
        if (m := re.fullmatch(r"/instances/([^/]+)/(delete|add_key|modify)", path)) and (
            req.method == "POST"
        ):
            return getattr(self, f"action_{m[2]}")(m[1], req.json or {})
        if path == "/snapshots/create" and req.method == "POST":
            return self.snapshot_create(req.json or {})
        if path == "/snapshots/list" and req.method == "GET":
            with self.lock:
                return Response(200, [self._view(s) for s in self.snapshots.values()])
        if (m := re.fullmatch(r"/snapshots/([^/]+)", path)) and req.method == "DELETE":
            with self.lock:
                if self.snapshots.pop(m[1], None) is None:
                    return _error(404, "snapshot_not_found", "Snapshot not found")
            return Response(200, {"message": "Snapshot deleted"})
        if path == "/pricing" and req.method == "GET":
            return Response(200, {"pricing": dict(self.pricing)})
        if path == "/specs" and req.method == "GET":
            return Response(200, {"specs": self.specs()})
        if path == "/status" and req.method == "GET":
            avail = {
                k: ("unavailable" if k in self.unavailable else "available") for k in self.specs()
            }
            return Response(200, {"gpu_type": {}, "specs": avail})
        if path == "/auth/validate" and req.method == "GET":
            return Response(200, {"valid": True, "email": "test@example.com"})
        return _error(404, "not_found", f"{req.method} {req.path} not found")

    # -- instances ----------------------------------------------------------------------------

    @staticmethod
    def _view(inst: dict) -> dict:
        return {k: v for k, v in inst.items() if not k.startswith("_")}

    def create(self, body: dict) -> Response:
        required = ("cpu_cores", "disk_size_gb", "gpu_type", "num_gpus", "template")
        required += ("mode",) if self.legacy else ()
        missing = [f for f in required if body.get(f) in (None, "")]
        if missing:
            return _error(400, "invalid_request", f"missing required fields: {', '.join(missing)}")
        key = self.config_key(body["gpu_type"], body["num_gpus"], body.get("mode"))
        spec = self.specs().get(key)
        if spec is None:
            return _error(400, "invalid_config", f"GPU configuration {key} is not offered")
        if body["cpu_cores"] not in spec["vcpuOptions"]:
            return _error(
                400, "invalid_vcpus", f"cpu_cores must be one of {spec['vcpuOptions']} for {key}"
            )
        snapshot = self._ready_snapshot(body["template"])
        low, high = spec["storageGB"]["min"], spec["storageGB"]["max"]
        if snapshot is not None:  # a snapshot restores at its own size or more
            low = max(low, snapshot["minimumDiskSizeGb"])
            high = max(high, snapshot["minimumDiskSizeGb"])
        if not low <= body["disk_size_gb"] <= high:
            return _error(400, "invalid_disk", "disk_size_gb out of range")
        if self.capacity_error or key in self.unavailable:
            return _error(
                409,
                "gpu_unavailable",
                f"No {body['gpu_type']} x{body['num_gpus']} capacity is available right now. "
                "Try another GPU type or try again later.",
            )
        iid = str(next(self._ids))
        public_key = "" if self.ignore_public_key else (body.get("public_key") or "").strip()
        private_key = None
        if not public_key:
            public_key, private_key = self._server_keypair(iid)
        phase = "PROVISIONING" if snapshot is None else "RESTORING"
        with self.lock:
            self.instances[iid] = {
                "uuid": uuid.uuid4().hex[:8],
                "name": f"instance-{iid}",
                "status": phase,
                "ip": None,
                "port": 22,
                "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "storage": body["disk_size_gb"],
                "ephemeralDiskGB": body.get("ephemeral_disk_gb") or 0,
                "cpuCores": str(body["cpu_cores"]),
                "memory": str(body["cpu_cores"] * spec["ramPerVCPUGiB"]),
                "template": body["template"],
                "gpuType": body["gpu_type"],
                "numGpus": str(body["num_gpus"]),
                **({"mode": body["mode"]} if self.legacy else {}),
                "promoted": False,
                "k8s": True,
                "httpPorts": [],
                "sshPublicKeys": [public_key],
            }
        carried = list(snapshot["_keys"]) if snapshot is not None else []
        self.new_host(iid, [public_key, *carried])
        self._boot(iid, phase)
        return Response(
            200, {"uuid": self.instances[iid]["uuid"], "identifier": int(iid), "key": private_key}
        )

    def _ready_snapshot(self, template: str) -> dict | None:
        with self.lock:
            return next(
                (
                    snap
                    for snap in self.snapshots.values()
                    if snap["name"] == template and snap["status"] == "READY"
                ),
                None,
            )

    def _server_keypair(self, iid: str) -> tuple[str, str]:
        path = self.workdir / f"server-key-{iid}-{secrets.token_hex(3)}"
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"thunder-{iid}",
                "-f",
                str(path),
            ],
            check=True,
            capture_output=True,
        )
        return path.with_suffix(".pub").read_text().strip(), path.read_text()

    def _boot(self, iid: str, phase: str) -> None:
        if self.never_ready:
            return  # stays PROVISIONING / STARTING

        def up() -> None:
            with self.lock:
                inst = self.instances.get(iid)
                if not inst or inst["status"] != phase:
                    return
            host = self.sshd_up(iid)
            with self.lock:
                inst = self.instances.get(iid)
                if inst and host is not None and inst["status"] == phase:
                    inst.update(status="RUNNING", ip=host.address, port=host.port)

        self.after(self.boot_delay, up)

    def _instance(self, iid: str) -> dict | None:
        return self.instances.get(iid)

    def action_delete(self, iid: str, body: dict) -> Response:
        with self.lock:
            if self.instances.pop(iid, None) is None:
                return _error(
                    404, "instance_not_found", "Instance not found or not supported for deletion"
                )
        self.sshd_gone(iid)
        return Response(200, {"message": f"Instance {iid} deleted"})

    def action_add_key(self, iid: str, body: dict) -> Response:
        with self.lock:
            inst = self._instance(iid)
            if inst is None:
                return _error(404, "instance_not_found", "Instance not found")
        public_key = (body.get("public_key") or "").strip()
        private_key = None
        if not public_key:
            public_key, private_key = self._server_keypair(iid)
        with self.lock:
            inst["sshPublicKeys"].append(public_key)
            host = self.hosts.get(iid)
        if host is not None:
            host.add_authorized_key(public_key)
        return Response(200, {"uuid": inst["uuid"], "key": private_key, "success": True})

    def action_modify(self, iid: str, body: dict) -> Response:
        with self.lock:
            inst = self._instance(iid)
            if inst is None:
                return _error(404, "instance_not_found", "Instance not found")
            if inst["status"] != "RUNNING":
                return _error(
                    409, "invalid_state", f"Instance is {inst['status']}; it must be RUNNING"
                )
            mode = body.get("mode") or inst.get("mode")
            gpu = body.get("gpu_type") or inst["gpuType"]
            count = int(body.get("num_gpus") or inst["numGpus"])
            key = self.config_key(gpu, count, mode)
            spec = self.specs().get(key)
            if spec is None:
                return _error(400, "invalid_config", f"GPU configuration {key} is not offered")
            cpus = int(body.get("cpu_cores") or inst["cpuCores"])
            if cpus not in spec["vcpuOptions"]:
                return _error(
                    400,
                    "invalid_vcpus",
                    f"cpu_cores must be one of {spec['vcpuOptions']} for {key}",
                )
            disk = int(body.get("disk_size_gb") or inst["storage"])
            if not inst["storage"] <= disk <= spec["storageGB"]["max"]:
                return _error(400, "invalid_disk", "disk_size_gb cannot shrink or exceed the max")
            if self.legacy:
                inst["mode"] = mode
            inst.update(
                status="MODIFYING",
                ip=None,
                gpuType=gpu,
                numGpus=str(count),
                cpuCores=str(cpus),
                memory=str(cpus * spec["ramPerVCPUGiB"]),
                storage=disk,
            )
        self.sshd_down(iid)  # the VM restarts on its new hardware
        self._boot(iid, "MODIFYING")
        return Response(
            200,
            {
                "identifier": iid,
                "instance_name": inst["name"],
                **({"mode": mode} if self.legacy else {}),
                "gpu_type": gpu,
                "num_gpus": count,
            },
        )

    def create_foreign(self, gpu: str = "a6000", count: int = 1, *, running: bool = True) -> str:
        """An instance made outside vp (console, `tnr`, a colleague sharing the account);
        it gets an sshd so that adopting it would work, which is what a test must rule out."""
        spec = self.specs()[self.config_key(gpu, count, "prototyping")]
        body = {
            "cpu_cores": spec["vcpuOptions"][0],
            "gpu_type": gpu,
            "num_gpus": count,
            "template": "base",
            "disk_size_gb": 100,
            **({"mode": "prototyping"} if self.legacy else {}),
        }
        answer = self.create(body)
        assert answer.status == 200, answer.body
        iid = str(answer.body["identifier"])
        if running:
            wait_for(lambda: self.instances[iid]["status"] == "RUNNING", timeout=30)
        return iid

    def snapshot_create(self, body: dict) -> Response:
        source, name = str(body.get("instanceId") or ""), str(body.get("name") or "")
        if not source or not name:
            return _error(400, "invalid_request", "instanceId and name are required")
        with self.lock:
            found = [(iid, i) for iid, i in self.instances.items() if source in (iid, i["uuid"])]
            if not found:
                return _error(404, "instance_not_found", "Instance not found")
            iid, inst = found[0]
            if inst["status"] != "RUNNING":
                return _error(
                    409, "invalid_state", f"Instance is {inst['status']}; it must be RUNNING"
                )
            if any(s["name"] == name for s in self.snapshots.values()):
                return _error(409, "snapshot_exists", f"A snapshot named {name} already exists")
            sid = uuid.uuid4().hex[:12]
            self.snapshots[sid] = {
                "id": sid,
                "name": name,
                "minimumDiskSizeGb": inst["storage"],
                "status": "CREATING",
                "createdAt": int(time.time()),
                "_source": iid,
                "_keys": list(inst["sshPublicKeys"]),
            }
            inst["status"] = "SNAPPING"

        def done() -> None:
            with self.lock:
                snap = self.snapshots.get(sid)
                if snap is not None:
                    snap["status"] = "READY"
                inst = self.instances.get(iid)
                if inst is not None and inst["status"] == "SNAPPING":
                    inst["status"] = "RUNNING"

        self.after(self.snapshot_delay, done)
        return Response(200, {"message": f"Snapshot {name} is being created"})


@pytest.fixture
def thunder_emulator(tmp_path):
    emulator = ThunderEmulator(tmp_path / "thunder-emulator")
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.close()
