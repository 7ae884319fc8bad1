"""RunPod GraphQL emulator: POST /graphql, as the `runpod` SDK sends it.

Wire format taken from runpod 1.11 (`runpod/api/graphql.py`, `mutations/pods.py`,
`queries/{pods,gpus}.py`): the body is {"query": TEXT}, the key is `Authorization: Bearer`, a bad
key is HTTP 401 (the SDK raises AuthenticationError on the status alone), and a GraphQL failure is
HTTP 200 with {"errors": [{"message": ...}], "data": ...} (the SDK raises QueryError with the first
message). The SDK builds its queries by string interpolation, so this emulator parses real
GraphQL: operations, aliases, arguments (strings, numbers, enums, lists, input objects,
variables) and nested selections, and answers with exactly the fields asked for.

Pods: podFindAndDeployOnDemand -> desiredStatus RUNNING with `runtime: null` while the image is
pulled, then `runtime.ports` lists sshd (privatePort 22, isIpPublic, publicPort) when the pod was
created with ports "22/tcp" and supportPublicIp. The PUBLIC_KEY env var is what RunPod images'
start script appends to authorized_keys. podRentInterruptable (the same input plus
`bidPerGpu`, refused below `lowestPrice.minimumBidPrice`) -> a pod with podType
INTERRUPTABLE: the mutation and its PodRentInterruptableInput as https://graphql-spec.runpod.io/#definition-PodRentInterruptableInput
describes it and SkyPilot sends it (sky/provision/runpod/api/pods.py; runpod 1.11's SDK has no
call for it). podStop -> EXITED (runtime null once stopped),
podResume -> RUNNING again, podTerminate -> gone. A pod's `name` is the free text of the
mutation's `name: "..."` (runpod/api/mutations/pods.py generate_pod_deployment_mutation), read
back by the pods query's `name` field (runpod/api/queries/pods.py).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import string
import time
from pathlib import Path
from typing import Any

import pytest

from .common import Emulator, Request, Response

DEFAULT_GPU_TYPES = [
    {"id": "NVIDIA GeForce RTX 4090", "displayName": "RTX 4090", "memoryInGb": 24,
     "securePrice": 0.69, "communityPrice": 0.34, "maxGpuCount": 8},
    {"id": "NVIDIA H100 80GB HBM3", "displayName": "H100 SXM", "memoryInGb": 80,
     "securePrice": 2.99, "communityPrice": 2.69, "maxGpuCount": 8},
    {"id": "NVIDIA H100 PCIe", "displayName": "H100 PCIe", "memoryInGb": 80,
     "securePrice": 2.39, "communityPrice": 1.99, "maxGpuCount": 4},
    {"id": "NVIDIA A40", "displayName": "A40", "memoryInGb": 48,
     "securePrice": 0.44, "communityPrice": 0.35, "maxGpuCount": 8},
    {"id": "NVIDIA RTX A6000", "displayName": "RTX A6000", "memoryInGb": 48,
     "securePrice": 0.79, "communityPrice": 0.49, "maxGpuCount": 1},
]  # fmt: skip

NO_CAPACITY = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)


class GraphQLError(Exception):
    pass


# -- a small GraphQL parser ---------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>[\s,]+|\#[^\n]*)
  | (?P<block>\"\"\"(?:.|\n)*?\"\"\")
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
  | (?P<punct>\.\.\.|[{}()\[\]:!$=@|&])
    """,
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise GraphQLError(f'Syntax Error: Unexpected character "{text[pos]}".')
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


class _Parser:
    def __init__(self, text: str, variables: dict):
        self.toks = _tokens(text)
        self.i = 0
        self.variables = variables

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            found = tok[1] if tok else "<EOF>"
            raise GraphQLError(f'Syntax Error: Expected "{value}", found "{found}".')
        self.i += 1
        return tok[1]

    def document(self) -> tuple[str, list]:
        op = "query"
        tok = self.peek()
        if tok and tok[1] in ("query", "mutation", "subscription"):
            op = self.take()
            if self.peek() and self.peek()[0] == "name":
                self.take()
            if self.peek() and self.peek()[1] == "(":
                self.variable_definitions()
        selection = self.selection_set()
        if self.peek() is not None:
            raise GraphQLError(f'Syntax Error: Unexpected "{self.peek()[1]}".')
        return op, selection

    def variable_definitions(self) -> None:
        self.take("(")
        while self.peek() and self.peek()[1] != ")":
            self.take("$")
            name = self.take()
            self.take(":")
            self.type_ref()
            if self.peek() and self.peek()[1] == "=":
                self.take("=")
                default = self.value()
                self.variables.setdefault(name, default)
        self.take(")")

    def type_ref(self) -> None:
        if self.peek()[1] == "[":
            self.take("[")
            self.type_ref()
            self.take("]")
        else:
            self.take()
        if self.peek() and self.peek()[1] == "!":
            self.take("!")

    def selection_set(self) -> list:
        self.take("{")
        fields = []
        while self.peek() and self.peek()[1] != "}":
            fields.append(self.field())
        self.take("}")
        if not fields:
            raise GraphQLError("Syntax Error: Expected Name, found }.")
        return fields

    def field(self) -> tuple[str, str, dict, list | None]:
        name = self.take()
        alias = name
        if self.peek() and self.peek()[1] == ":":
            self.take(":")
            name = self.take()
        args = {}
        if self.peek() and self.peek()[1] == "(":
            self.take("(")
            while self.peek() and self.peek()[1] != ")":
                key = self.take()
                self.take(":")
                args[key] = self.value()
            self.take(")")
        sub = self.selection_set() if self.peek() and self.peek()[1] == "{" else None
        return alias, name, args, sub

    def value(self) -> Any:
        kind, text = self.peek() or ("", "")
        if text == "$":
            self.take("$")
            name = self.take()
            if name not in self.variables:
                raise GraphQLError(f'Variable "${name}" is not defined.')
            return self.variables[name]
        if text == "[":
            self.take("[")
            items = []
            while self.peek() and self.peek()[1] != "]":
                items.append(self.value())
            self.take("]")
            return items
        if text == "{":
            self.take("{")
            obj = {}
            while self.peek() and self.peek()[1] != "}":
                key = self.take()
                self.take(":")
                obj[key] = self.value()
            self.take("}")
            return obj
        self.take()
        if kind == "str":
            return json.loads(text)
        if kind == "block":
            return text[3:-3]
        if kind == "num":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "name":
            return {"true": True, "false": False, "null": None}.get(text, text)  # enums: names
        raise GraphQLError(f'Syntax Error: Unexpected "{text}".')


def _project(value: Any, selection: list | None, type_name: str, path: list) -> Any:
    """Answer a selection set from plain data; callables are fields that take arguments."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_project(v, selection, type_name, path) for v in value]
    if selection is None:
        if isinstance(value, dict):
            raise GraphQLError(
                f'Field "{path[-1]}" of type "{type_name}" must have a selection of subfields.'
            )
        return value
    if not isinstance(value, dict):
        raise GraphQLError(f'Field "{path[-1]}" must not have a selection since it is a scalar.')
    out = {}
    for alias, name, args, sub in selection:
        if name == "__typename":
            out[alias] = type_name
            continue
        if name not in value:
            raise GraphQLError(f'Cannot query field "{name}" on type "{type_name}".')
        field = value[name]
        if callable(field):
            field = field(args)
        out[alias] = _project(field, sub, name[:1].upper() + name[1:], [*path, alias])
    return out


# -- the emulator -------------------------------------------------------------------------------


class RunPodEmulator(Emulator):
    provider = "runpod"

    def __init__(self, workdir: Path, *, gpu_types: list[dict] | None = None, **kwargs):
        super().__init__(workdir, **kwargs)
        self.gpu_types = [dict(g) for g in (gpu_types or DEFAULT_GPU_TYPES)]
        # Fault: bill new pods at this $/h instead of the catalog price (a pricier machine).
        self.billed_price: float | None = None
        self._machine = itertools.count(1)

    def handle(self, req: Request) -> Response:
        if req.path.rstrip("/") != "/graphql":
            return Response(404, "404 page not found")
        key = req.bearer or req.query.get("api_key")
        if self.fail_auth or key != self.api_key:
            return Response(401, {"error": "Unauthorized", "status": 401})
        if req.method != "POST":
            return Response(405, {"errors": [{"message": "GET is not supported"}]})
        try:
            body = req.json or {}
            parser = _Parser(body.get("query") or "", dict(body.get("variables") or {}))
            op, selection = parser.document()
        except (GraphQLError, ValueError) as exc:
            return Response(400, {"errors": [{"message": str(exc)}]})
        root = self._mutation() if op == "mutation" else self._query()
        data: dict[str, Any] = {}
        errors = []
        for field in selection:
            try:
                data.update(_project(root, [field], op.capitalize(), []))
            except GraphQLError as exc:
                data[field[0]] = None
                errors.append({"message": str(exc), "path": [field[0]]})
        body = {"data": data}
        if errors:
            body["errors"] = errors
        return Response(200, body)

    # -- schema roots ---------------------------------------------------------------------------

    def _query(self) -> dict:
        return {
            "myself": lambda args: {
                "id": "user_emulated",
                "email": "test@example.com",
                "pubKey": "",
                "networkVolumes": [],
                "pods": [self._pod_view(p) for p in self._pods()],
            },
            "pod": lambda args: self._pod_query(args),
            "gpuTypes": lambda args: self._gpu_types(args),
        }

    def _mutation(self) -> dict:
        return {
            "podFindAndDeployOnDemand": lambda args: self.deploy(args.get("input") or {}),
            "podRentInterruptable": lambda args: self.deploy(args.get("input") or {}, spot=True),
            "podStop": lambda args: self.stop((args.get("input") or {}).get("podId")),
            "podResume": lambda args: self.resume(args.get("input") or {}),
            "podTerminate": lambda args: self.terminate((args.get("input") or {}).get("podId")),
        }

    def _pods(self) -> list[dict]:
        with self.lock:
            return list(self.instances.values())

    def _pod_query(self, args: dict) -> dict | None:
        pod_id = (args.get("input") or {}).get("podId")
        with self.lock:
            pod = self.instances.get(pod_id)
            return self._pod_view(pod) if pod else None

    def _gpu_types(self, args: dict) -> list[dict]:
        wanted = (args.get("input") or {}).get("id")
        out = []
        for gpu in self.gpu_types:
            if wanted and gpu["id"] != wanted:
                continue
            view = dict(gpu)
            view.update(manufacturer="Nvidia", cudaCores=0, secureCloud=True, communityCloud=True)
            for name in ("oneMonthPrice", "threeMonthPrice", "oneWeekPrice"):
                view[name] = None
            view["communitySpotPrice"] = round(gpu["communityPrice"] * 0.5, 2)
            view["secureSpotPrice"] = round(gpu["securePrice"] * 0.5, 2)
            view["lowestPrice"] = lambda a, g=gpu: self._lowest_price(g, a.get("input") or {})
            out.append(view)
        return out

    def _lowest_price(self, gpu: dict, query: dict) -> dict:
        count = int(query.get("gpuCount") or 1)
        secure = query.get("secureCloud")
        price = gpu["securePrice"] if secure else min(gpu["securePrice"], gpu["communityPrice"])
        if count > gpu["maxGpuCount"]:
            return {"minimumBidPrice": None, "uninterruptablePrice": None, "stockStatus": None}
        return {
            "minimumBidPrice": round(price * 0.5, 3),
            "uninterruptablePrice": price,  # per GPU
            "stockStatus": "High",
            "minVcpu": 8,
            "minMemory": 30,
        }

    # -- pods -----------------------------------------------------------------------------------

    def _pod_view(self, pod: dict) -> dict:
        view = {k: v for k, v in pod.items() if not k.startswith("_")}
        view["machine"] = dict(pod["machine"])
        view["runtime"] = json.loads(json.dumps(pod["runtime"])) if pod["runtime"] else None
        return view

    def deploy(self, spec: dict, spot: bool = False) -> dict:
        for required in ("name", "imageName", "gpuTypeId", "cloudType"):
            if spec.get(required) in (None, ""):
                raise GraphQLError(f"{required} is required")
        if spec["cloudType"] not in ("ALL", "SECURE", "COMMUNITY"):
            raise GraphQLError(f'Value "{spec["cloudType"]}" does not exist in "CloudTypeEnum".')
        gpu = next((g for g in self.gpu_types if g["id"] == spec["gpuTypeId"]), None)
        if gpu is None:
            raise GraphQLError("Invalid GPU type")
        count = int(spec.get("gpuCount") or 1)
        if self.capacity_error or count > gpu["maxGpuCount"]:
            raise GraphQLError(NO_CAPACITY)
        bid = spec.get("bidPerGpu")
        if spot:
            if bid is None:
                raise GraphQLError("bidPerGpu is required")
            low = self._lowest_price(gpu, {"gpuCount": count})["minimumBidPrice"]
            if float(bid) < low:
                raise GraphQLError(f"Your bid of ${bid} is below the minimum bid of ${low}.")
        env = spec.get("env") or []
        env_pairs = [(e.get("key"), e.get("value")) for e in env if isinstance(e, dict)]
        secure = spec["cloudType"] == "SECURE"
        price = gpu["securePrice"] if secure else min(gpu["securePrice"], gpu["communityPrice"])
        pod_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(14))
        pod = {
            "id": pod_id,
            "name": spec["name"],
            "imageName": spec["imageName"],
            "env": [f"{k}={v}" for k, v in env_pairs],
            "machineId": f"m{next(self._machine):05d}",
            "machine": {"podHostId": f"{pod_id}-64411b2e", "gpuDisplayName": gpu["displayName"]},
            "desiredStatus": "RUNNING",
            "lastStatusChange": f"Rented by User: {time.strftime('%a %b %d %Y %H:%M:%S')}",
            "costPerHr": self.billed_price or round((float(bid) if spot else price) * count, 3),
            "gpuCount": count,
            "containerDiskInGb": spec.get("containerDiskInGb"),
            "volumeInGb": spec.get("volumeInGb") or 0,
            "volumeMountPath": spec.get("volumeMountPath") or "/workspace",
            "memoryInGb": 62,
            "vcpuCount": 16,
            "podType": "INTERRUPTABLE" if spot else "RESERVED",
            "port": None,
            "ports": spec.get("ports") or "",
            "dockerArgs": spec.get("dockerArgs") or "",
            "dockerId": None,
            "uptimeSeconds": 0,
            "runtime": None,
            "_public_ssh": bool(spec.get("supportPublicIp", True))
            and "22/tcp" in (spec.get("ports") or "").split(","),
            "_gpu": gpu,
        }
        keys = [v for k, v in env_pairs if k == "PUBLIC_KEY" and v]
        with self.lock:
            self.instances[pod_id] = pod
        self.new_host(pod_id, [k for v in keys for k in v.split("\\n") if k.strip()])
        self._boot(pod_id)
        with self.lock:
            return self._pod_view(pod)

    def _boot(self, pod_id: str) -> None:
        if self.never_ready:
            return  # stays RUNNING with runtime null: the image never comes up

        def up() -> None:
            with self.lock:
                pod = self.instances.get(pod_id)
                if not pod or pod["desiredStatus"] != "RUNNING":
                    return
            host = self.sshd_up(pod_id)
            with self.lock:
                pod = self.instances.get(pod_id)
                if not pod or host is None:
                    return
                ports = [
                    {"ip": "100.65.13.7", "isIpPublic": False, "privatePort": 22,
                     "publicPort": 22, "type": "tcp"},
                ]  # fmt: skip
                if pod["_public_ssh"]:
                    ports.append(
                        {"ip": host.address, "isIpPublic": True, "privatePort": 22,
                         "publicPort": host.port, "type": "tcp"}
                    )  # fmt: skip
                pod["runtime"] = {
                    "uptimeInSeconds": 1,
                    "ports": ports,
                    "gpus": [
                        {"id": f"GPU-{i}", "gpuUtilPercent": 0} for i in range(pod["gpuCount"])
                    ],
                    "container": {"cpuPercent": 0, "memoryPercent": 1},
                }

        self.after(self.boot_delay, up)

    def _existing(self, pod_id: str | None) -> dict:
        pod = self.instances.get(pod_id or "")
        if pod is None:
            raise GraphQLError(f"Pod {pod_id} not found")
        return pod

    def stop(self, pod_id: str | None) -> dict:
        with self.lock:
            pod = self._existing(pod_id)
            pod["desiredStatus"] = "EXITED"
            pod["lastStatusChange"] = "Exited by user"

        def down() -> None:
            with self.lock:
                current = self.instances.get(pod_id)
                if not current or current["desiredStatus"] != "EXITED":
                    return
            self.sshd_down(pod_id)
            with self.lock:
                if pod_id in self.instances:
                    self.instances[pod_id]["runtime"] = None

        self.after(self.stop_delay, down)
        with self.lock:
            return self._pod_view(pod)

    def resume(self, spec: dict) -> dict:
        with self.lock:
            pod = self._existing(spec.get("podId"))
            if pod["desiredStatus"] == "RUNNING":
                raise GraphQLError("Pod is already running")
            if int(spec.get("gpuCount") or 0) < 1:
                raise GraphQLError("gpuCount must be at least 1")
            if self.capacity_error:
                raise GraphQLError(
                    "There are not enough free GPUs on the host machine to start this pod."
                )
            pod["desiredStatus"] = "RUNNING"
            pod["gpuCount"] = int(spec["gpuCount"])
            pod["lastStatusChange"] = "Resumed by user"
        self._boot(pod["id"])
        with self.lock:
            return self._pod_view(pod)

    def terminate(self, pod_id: str | None) -> None:
        with self.lock:
            self._existing(pod_id)
            del self.instances[pod_id]
        self.sshd_gone(pod_id)
        return None


@pytest.fixture
def runpod_emulator(tmp_path):
    emulator = RunPodEmulator(tmp_path / "runpod-emulator")
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.close()
