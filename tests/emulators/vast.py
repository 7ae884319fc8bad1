"""vast.ai REST emulator: the /api/v0 and /api/v1 paths the `vastai` SDK calls.

Wire format taken from vastai 1.9.1 (`vastai/api/{offers,instances,keys}.py`) and the API
reference at docs.vast.ai: offers come from POST /api/v0/bundles/ as {"offers": [...]}, an offer
is rented with PUT /api/v0/asks/{id}/ -> {"success": true, "new_contract": ID}, instances are
listed 25 at a time from GET /api/v1/instances/ (JSON-encoded query args, `next_token` paging),
one instance is GET /api/v0/instances/{id}/?owner=me -> {"instances": row-or-null}, state changes
are PUT /api/v0/instances/{id}/ {"state": "running"|"stopped"}, destroy is DELETE on the same
path, and per-instance keys are POST /api/v0/instances/{id}/ssh/ {"ssh_key": ...}.
Interruptible rentals: `search_offers(type="bid")` sends {"type": "bid"} and reads `min_bid`;
`create_instance(price=BID)` puts the bid in the body's `price`; when outbid the instance moves
to stopped, not destroyed (vastai 1.9.1 SKILL.md, "Interruptible (spot) instances"): `preempt`.
Errors are non-2xx with {"success": false, "error": CODE, "msg": TEXT}; a bad key is 401
"Invalid user key". An instance's `label` is the free text `create_instance(label=...)` puts in
the rent body (vastai/api/instances.py, `json_blob["label"]`) and each listed row carries back.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import time
from pathlib import Path

import pytest

from .common import Emulator, Request, Response

# A small marketplace. dph_base is $/h for the whole offer; storage_cost is $/GB/month.
DEFAULT_OFFERS = [
    {"id": 1001, "gpu_name": "RTX 4090", "num_gpus": 1, "dph_base": 0.35, "disk_space": 200.0},
    {"id": 1002, "gpu_name": "RTX 4090", "num_gpus": 2, "dph_base": 0.70, "disk_space": 400.0},
    {"id": 1003, "gpu_name": "H100 SXM", "num_gpus": 1, "dph_base": 2.40, "disk_space": 500.0},
    {"id": 1004, "gpu_name": "H100 PCIE", "num_gpus": 1, "dph_base": 1.90, "disk_space": 300.0},
    {"id": 1005, "gpu_name": "H100 SXM", "num_gpus": 8, "dph_base": 19.0, "disk_space": 2000.0},
    {"id": 1006, "gpu_name": "RTX 3090", "num_gpus": 1, "dph_base": 0.18, "disk_space": 30.0},
    {"id": 1007, "gpu_name": "A100 SXM4", "num_gpus": 1, "dph_base": 1.10, "disk_space": 250.0},
    # Cheapest of all, but unverified: the SDK's default filters must hide it.
    {"id": 1008, "gpu_name": "RTX 4090", "num_gpus": 1, "dph_base": 0.09, "disk_space": 200.0,
     "verified": False},
]  # fmt: skip

_OPS = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and a > b,
    "gte": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b,
    "lte": lambda a, b: a is not None and a <= b,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
    "nin": lambda a, b: a not in b,
}


def _error(status: int, error: str, msg: str) -> Response:
    return Response(status, {"success": False, "error": error, "msg": msg})


def _matches(row: dict, filters: dict) -> bool:
    for name, cond in filters.items():
        if not isinstance(cond, dict):
            cond = {"eq": cond}
        for op, value in cond.items():
            if op not in _OPS:
                raise ValueError(f"unknown operator {op!r}")
            if not _OPS[op](row.get(name), value):
                return False
    return True


def _sort(rows: list[dict], order: list) -> list[dict]:
    for entry in reversed(order or []):
        if isinstance(entry, dict):
            name, direction = entry.get("col"), entry.get("dir", "asc")
        else:
            name, direction = entry[0], entry[1] if len(entry) > 1 else "asc"
        rows = sorted(
            rows,
            key=lambda r, n=name: (r.get(n) is None, r.get(n) or 0),
            reverse=direction == "desc",
        )
    return rows


class VastEmulator(Emulator):
    provider = "vast"

    def __init__(self, workdir: Path, *, offers: list[dict] | None = None, **kwargs):
        super().__init__(workdir, **kwargs)
        self.offers = {o["id"]: self._offer(o) for o in (offers or DEFAULT_OFFERS)}
        self.account_keys: dict[int, str] = {}
        self._ids = itertools.count(7835610)
        # False: machines without open ports; instances are reachable only through the ssh proxy
        # (ssh_host:ssh_port), with no "22/tcp" in `ports`.
        self.direct_ports = True
        self._key_ids = itertools.count(501)
        # Faults: offers of these GPUs (a word of gpu_name) are rented away the moment they are
        # asked for; the next `refuse_creates` create requests find no capacity at all.
        self.unavailable_gpus: set[str] = set()
        self.refuse_creates = 0
        self.creates = 0  # create requests seen

    @staticmethod
    def _offer(spec: dict) -> dict:
        offer = {
            "ask_contract_id": spec["id"],
            "machine_id": 40000 + spec["id"],
            "host_id": 900 + spec["id"] % 7,
            "gpu_ram": 24564,
            "cpu_cores": 16,
            "cpu_ram": 64000,
            "storage_cost": 0.15,
            "min_bid": round(spec["dph_base"] * 0.6, 4),
            "geolocation": "Texas, US",
            "reliability": 0.995,
            "verification": "verified",
            "verified": True,
            "external": False,
            "rentable": True,
            "rented": False,
            "hosting_type": 0,
            "public_ipaddr": "127.0.0.1",
            "direct_port_count": 10,
        }
        offer.update(spec)
        if not offer["verified"]:
            offer["verification"] = "unverified"
        return offer

    # -- routing ---------------------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        if self.fail_auth or (req.bearer or req.query.get("api_key")) != self.api_key:
            return _error(401, "auth_error", "Invalid user key")
        path = req.path
        if path in ("/api/v0/bundles/", "/api/v0/bundles"):
            return self.search(req)
        if (m := re.fullmatch(r"/api/v0/asks/(\d+)/?", path)) and req.method == "PUT":
            return self.create(int(m[1]), req.json or {})
        if path == "/api/v1/instances/" and req.method == "GET":
            return self.list_v1(req)
        if path == "/api/v0/instances/" and req.method == "GET":
            with self.lock:
                return Response(200, {"instances": [self._row(i) for i in self._sorted()]})
        if (m := re.fullmatch(r"/api/v0/instances/(\d+)/ssh/?", path)) and req.method == "POST":
            return self.attach_ssh(m[1], (req.json or {}).get("ssh_key", ""))
        if m := re.fullmatch(r"/api/v0/instances/(\d+)/?", path):
            if req.method == "GET":
                with self.lock:
                    inst = self.instances.get(m[1])
                    return Response(200, {"instances": self._row(inst) if inst else None})
            if req.method == "PUT":
                return self.update(m[1], req.json or {})
            if req.method == "DELETE":
                return self.destroy(m[1])
        if path == "/api/v0/ssh/":
            if req.method == "GET":
                return Response(200, [self._key_row(k, v) for k, v in self.account_keys.items()])
            if req.method == "POST":
                key_id = next(self._key_ids)
                self.account_keys[key_id] = (req.json or {}).get("ssh_key", "").strip()
                return Response(200, {"success": True, "key": self._key_row(key_id, "")})
        if m := re.fullmatch(r"/api/v0/ssh/(\d+)/?", path):
            if req.method == "DELETE" and self.account_keys.pop(int(m[1]), None) is not None:
                return Response(200, {"success": True})
            return _error(404, "no_such_key", "SSH key not found.")
        return _error(404, "not_found", f"{req.method} {path} is not an API endpoint.")

    @staticmethod
    def _key_row(key_id: int, key: str) -> dict:
        return {"id": key_id, "public_key": key, "created_at": time.time()}

    # -- offers ------------------------------------------------------------------------------------

    def search(self, req: Request) -> Response:
        q = req.json if req.method == "POST" else json.loads(req.query.get("q") or "{}")
        q = dict(q or {})
        order = q.pop("order", [["score", "desc"]])
        offer_type = q.pop("type", "on-demand")
        limit = q.pop("limit", None)
        storage = float(q.pop("allocated_storage", 5.0))
        q.pop("disable_bundling", None)
        rows = []
        with self.lock:
            for offer in self.offers.values():
                row = dict(offer)
                storage_total = row["storage_cost"] * storage / (30 * 24)
                row["storage_total_cost"] = round(storage_total, 6)
                row["dph_total"] = round(row["dph_base"] + storage_total, 6)
                row["is_bid"] = offer_type == "bid"
                row["score"] = 100.0 / (1 + row["dph_total"])
                try:
                    if _matches(row, q):
                        rows.append(row)
                except ValueError as exc:
                    return _error(400, "invalid_args", str(exc))
        rows = _sort(rows, order)
        if limit:
            rows = rows[: int(limit)]
        return Response(200, {"offers": rows})

    # -- instances ----------------------------------------------------------------------------

    def create(self, ask_id: int, body: dict) -> Response:
        with self.lock:
            offer = self.offers.get(ask_id)
            self.creates += 1
            refused = self.refuse_creates > 0
            self.refuse_creates = max(0, self.refuse_creates - 1)
            gone = offer is not None and self.unavailable_gpus & set(offer["gpu_name"].split())
            if self.capacity_error or offer is None or offer["rented"] or refused or gone:
                return _error(400, "no_such_ask", f"Instance type by id {ask_id} is not available.")
            bid = body.get("price")
            if bid is not None and float(bid) < offer["min_bid"]:
                return _error(400, "bid_too_low", f"Bid {bid} is below min_bid {offer['min_bid']}.")
            if not body.get("image") and not body.get("template_hash_id"):
                return _error(400, "invalid_args", "image or template_hash_id is required")
            iid = str(next(self._ids))
            offer["rented"] = True
            offer["rentable"] = False
            storage = float(body.get("disk") or 8)
            env = body.get("env") or {}
            self.instances[iid] = {
                "id": int(iid),
                "ask_id": ask_id,
                "machine_id": offer["machine_id"],
                "host_id": offer["host_id"],
                "actual_status": None,
                "cur_state": "running",
                "next_state": "running",
                "intended_status": "running",
                "label": body.get("label"),
                "image_uuid": body.get("image"),
                "image_args": body.get("args") or [],
                "image_runtype": body.get("runtype") or "ssh",
                "extra_env": [[k, str(v)] for k, v in env.items()],
                "onstart": body.get("onstart"),
                "status_msg": None,
                "num_gpus": offer["num_gpus"],
                "gpu_name": offer["gpu_name"],
                "gpu_ram": offer["gpu_ram"],
                "cpu_cores": offer["cpu_cores"],
                "cpu_ram": offer["cpu_ram"],
                "disk_space": storage,
                "dph_base": offer["dph_base"],
                # An interruptible (spot) rental: `price` is the bid (vastai 1.9.1
                # api/instances.py create_instance puts bid_price there; SKILL.md: without it
                # the rental is on-demand). Refused below the offer's min_bid.
                "is_bid": body.get("price") is not None,
                "bid_price": body.get("price"),
                "dph_total": round(offer["dph_base"] + offer["storage_cost"] * storage / 720, 6),
                "storage_cost": offer["storage_cost"],
                "public_ipaddr": None,
                "ssh_host": None,
                "ssh_port": None,
                "ssh_idx": "5",
                "ports": {},
                "direct_port_start": -1,
                "direct_port_end": -1,
                "local_ipaddrs": "172.17.0.2",
                "geolocation": offer["geolocation"],
                "start_date": time.time(),
                "end_date": time.time() + 30 * 86400,
                "uptime_mins": None,
                "jupyter_token": "",
                "template_id": None,
                "template_hash_id": body.get("template_hash_id"),
                "template_name": None,
            }
            keys = list(self.account_keys.values())
        self.new_host(iid, keys)
        self._boot(iid)
        return Response(200, {"success": True, "new_contract": int(iid)})

    def _boot(self, iid: str) -> None:
        """Container start: image pull ("loading"), then running with sshd answering."""

        def loading() -> None:
            with self.lock:
                inst = self.instances.get(iid)
                if inst and inst["intended_status"] == "running":
                    inst["actual_status"] = "loading"
                    inst["status_msg"] = "Pulling image"

        def running() -> None:
            with self.lock:
                inst = self.instances.get(iid)
                if not inst or inst["intended_status"] != "running":
                    return
            host = self.sshd_up(iid)
            with self.lock:
                inst = self.instances.get(iid)
                if not inst or host is None:
                    return
                inst["actual_status"] = "running"
                inst["status_msg"] = f"success, running {inst['image_uuid']}"
                inst["ssh_host"] = host.address
                inst["ssh_port"] = host.port
                if self.direct_ports:
                    inst["public_ipaddr"] = host.address
                    inst["ports"] = {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(host.port)}]}
                    inst["direct_port_start"] = inst["direct_port_end"] = host.port
                else:
                    inst["public_ipaddr"] = "192.0.2.45"  # the machine: no port reaches sshd

        self.after(self.boot_delay / 2, loading)
        if not self.never_ready:
            self.after(self.boot_delay, running)

    def update(self, iid: str, body: dict) -> Response:
        with self.lock:
            inst = self.instances.get(iid)
            if inst is None:
                return _error(404, "no_such_instance", f"Instance {iid} not found.")
            if "label" in body:
                inst["label"] = body["label"]
            state = body.get("state")
            if state == "stopped" and inst["intended_status"] != "stopped":
                inst["intended_status"] = inst["cur_state"] = inst["next_state"] = "stopped"
                self.after(self.stop_delay, lambda: self._stopped(iid))
            elif state == "running" and inst["intended_status"] != "running":
                inst["intended_status"] = inst["cur_state"] = inst["next_state"] = "running"
                if self.never_ready:
                    self.after(self.boot_delay / 2, lambda: self._set(iid, "scheduling"))
                else:
                    self._boot(iid)
            elif state not in (None, "stopped", "running"):
                return _error(400, "invalid_args", f"invalid state {state!r}")
        return Response(200, {"success": True})

    def _set(self, iid: str, actual: str) -> None:
        with self.lock:
            if iid in self.instances:
                self.instances[iid]["actual_status"] = actual

    def _stopped(self, iid: str) -> None:
        with self.lock:
            inst = self.instances.get(iid)
            if not inst or inst["intended_status"] != "stopped":
                return
        self.sshd_down(iid)
        with self.lock:
            inst = self.instances.get(iid)
            if inst:
                inst["actual_status"] = "stopped"
                inst["status_msg"] = "stopped"
                inst["ports"] = {}

    def preempt(self, iid: str, wipe=None) -> None:
        """Reclaim an interruptible instance, as vast does when a higher bid wins the machine:
        its container is killed (sshd and every process in it) and the instance reads as
        stopped (`intended_status` stays running, `actual_status` exited, no ports), all under
        the lock, so no API answer shows it half-preempted. `wipe()` runs in between (the
        disk a new machine will not have)."""
        with self.lock:
            inst = self.instances[iid]
            self.sshd_down(iid)
            if wipe is not None:
                wipe()
            inst["actual_status"] = "exited"
            inst["cur_state"] = "stopped"
            inst["status_msg"] = "Instance was outbid and stopped"
            inst["ports"] = {}

    def destroy(self, iid: str) -> Response:
        with self.lock:
            inst = self.instances.pop(iid, None)
            if inst is None:
                return _error(404, "no_such_instance", f"Instance {iid} not found.")
            offer = self.offers.get(inst["ask_id"])
            if offer:
                offer["rented"] = False
                offer["rentable"] = True
        self.sshd_gone(iid)
        return Response(200, {"success": True})

    def attach_ssh(self, iid: str, key: str) -> Response:
        key = key.strip()
        if not re.match(r"^(ssh-(ed25519|rsa)|ecdsa-sha2-\S+) [A-Za-z0-9+/=]+", key):
            return _error(400, "invalid_args", "Invalid SSH key format")
        with self.lock:
            if iid not in self.instances:
                return _error(404, "no_such_instance", f"Instance {iid} not found.")
            host = self.hosts.get(iid)
        if host is not None:
            host.add_authorized_key(key)
        return Response(200, {"success": True, "msg": "SSH key added to instance."})

    def list_v1(self, req: Request) -> Response:
        filters = json.loads(req.query.get("select_filters") or "{}")
        order = json.loads(req.query.get("order_by") or '[{"col": "id", "dir": "asc"}]')
        limit = int(json.loads(req.query.get("limit") or "25"))
        after = req.query.get("after_token")
        with self.lock:
            rows = [self._row(i) for i in self.instances.values()]
        try:
            rows = [r for r in rows if _matches(r, filters)]
        except ValueError as exc:
            return _error(400, "invalid_args", str(exc))
        rows = _sort(rows, order)
        start = int(base64.b64decode(after).decode()) if after else 0  # sent unquoted
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        token = base64.b64encode(str(start + limit).encode()).decode() if more else None
        labels: dict[str, int] = {}
        for r in rows:
            labels[r.get("label") or ""] = labels.get(r.get("label") or "", 0) + 1
        return Response(
            200,
            {
                "success": True,
                "instances_found": len(page),
                "total_instances": len(rows),
                "label_counts": labels,
                "next_token": token,
                "instances": page,
            },
        )

    def _sorted(self) -> list[dict]:
        return [self.instances[k] for k in sorted(self.instances, key=int)]

    @staticmethod
    def _row(inst: dict) -> dict:
        row = dict(inst)
        row.pop("ask_id", None)
        row["ports"] = json.loads(json.dumps(inst["ports"]))
        row["extra_env"] = [list(p) for p in inst["extra_env"]]
        return row


@pytest.fixture
def vast_emulator(tmp_path):
    emulator = VastEmulator(tmp_path / "vast-emulator")
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.close()
