"""EC2 emulator: moto in server mode plus a controller that boots real sshd hosts.

moto speaks the EC2 query/XML wire format boto3 sends, but boots nothing. This module runs
`moto.server.ThreadedMotoServer` on 127.0.0.1:<free port> inside the test process and adds:

- a controller thread that watches moto's EC2 backend: an instance that is `pending` gets a
  network-namespace `SshHost` (sshd on port 22) with its key pair's public key authorized, its
  `PublicIpAddress` becomes that host's veth address, and only then is it `running`;
  `stopping` stops sshd and drops the public IP; `terminated` closes the host;
- EC2 behaviour moto lacks: `run_instances` with `InstanceMarketOptions` spot creates a spot
  instance request (`SpotInstanceRequestId` on the instance), a one-time spot instance cannot
  be stopped, cancelled requests stay visible as `cancelled`, no public IP before `running`;
  a launch without `SubnetId` lands in the default subnet of each AZ in turn (moto always
  picks the region's first AZ; EC2 "chooses a default subnet from your default VPC for you",
  docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RunInstances.html, SubnetId), so
  "every node in one subnet" is something vp must ask for;
- a Deep Learning AMI with the real name pattern, owned by amazon (and an older one, so
  "newest CreationDate" is tested);
- fault injection: capacity errors for spot and/or on-demand launches;
- EC2's vCPU quotas in Service Quotas. moto's server mode routes the JSON protocol
  (`X-Amz-Target: ServiceQuotasV20190624.GetServiceQuota`) but knows only `vpc` quotas and
  answers NoSuchResourceException for `ec2`; the patched backend answers the `ec2` codes in
  `quotas` with the real `{"Quota": {...}}` body, or AccessDeniedException when
  `quotas_denied` is set (a user without servicequotas:GetServiceQuota).

moto's backends are process-global, so one emulator is active per process at a time (each
xdist worker is its own process).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from .common import wait_for

ACCOUNT = "123456789012"  # moto's default account for the fake credentials below
DLAMI_OWNER = "898082745236"  # AWS's Deep Learning AMI account
DLAMI_NEW = "ami-0d1a0b5e11c0ffee1"
DLAMI_OLD = "ami-0d1a0b5e11c0ffee0"

# Service Quotas code -> (name, default vCPUs) for the EC2 GPU families.
EC2_QUOTAS = {
    "L-DB2E81BA": ("Running On-Demand G and VT instances", 64.0),
    "L-417A185B": ("Running On-Demand P instances", 192.0),
    "L-3819A6DF": ("All G and VT Spot Instance Requests", 64.0),
    "L-7212CCBC": ("All P Spot Instance Requests", 192.0),
}

_active_lock = threading.Lock()
_local = threading.local()


class AwsEmulator:
    def __init__(self, root: Path, *, region: str = "us-east-1", host_user: str = "root"):
        self.root = Path(root)
        self.region = region
        self.host_user = host_user
        self.boot_delay = 0.0  # seconds an instance stays `pending` before sshd starts
        # market ("spot" / "on-demand") -> error code raised by RunInstances
        self.capacity_faults: dict[str, str] = {}
        self.hosts: dict[str, Any] = {}  # instance id -> SshHost
        self.launches: list[dict] = []  # every RunInstances that got past the faults
        self.errors: list[str] = []  # controller failures (tests assert it stays empty)
        self._server = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._patches: list[tuple[Any, str, Any]] = []
        self._owns_lock = False
        self._pending_since: dict[str, float] = {}
        self._boots: dict[str, int] = {}
        self._lock = threading.Lock()  # API state changes vs. the controller's
        self.new_ip_on_start = True  # a started instance gets a new public IP, like EC2
        self.lose_run_response = False  # RunInstances creates the instance, then fails
        self.run_response_delay = 0.0  # RunInstances creates the instance, then hangs
        self.delayed_runs = 0
        self.quotas: dict[str, float] = {code: v for code, (_n, v) in EC2_QUOTAS.items()}
        self.quotas_denied = False
        self.quota_requests = 0
        self._launch_count = 0  # launches without a subnet go to the default AZs in turn
        # The access key id each request was signed with (SigV4 `Credential=AKID/...`), in
        # order: which credentials boto3 chose (environment, profile) is observable here.
        self.access_keys: list[str] = []
        # Access key ids EC2 refuses, as it does a deleted or mistyped key: AuthFailure.
        self.rejected_keys: set[str] = set()

    # ---------------------------------------------------------------- public surface

    @property
    def endpoint(self) -> str:
        host, port = self._server.get_host_and_port()
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """Environment that points boto3 (and so vp) at this emulator."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_CONFIG_FILE": str(self.root / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    @property
    def backend(self):
        from moto.ec2.models import ec2_backends

        return ec2_backends[ACCOUNT][self.region]

    def live_instances(self) -> list[Any]:
        """Instances not terminated."""
        return [
            i
            for i in self.backend.all_instances()
            if i._state.name not in ("terminated", "shutting-down")
        ]

    def fail_capacity(self, market: str = "spot", code: str = "InsufficientInstanceCapacity"):
        """Make RunInstances fail for `market` ("spot", "on-demand" or "all")."""
        for m in ("spot", "on-demand") if market == "all" else (market,):
            self.capacity_faults[m] = code

    def clear_faults(self) -> None:
        self.capacity_faults.clear()
        self.boot_delay = 0.0
        self.lose_run_response = False
        self.run_response_delay = 0.0
        self.quotas = {code: v for code, (_n, v) in EC2_QUOTAS.items()}
        self.quotas_denied = False

    def instance(self, instance_id: str):
        return self.backend.get_instance(instance_id)

    def user_data(self, instance_id: str) -> str:
        data = self.instance(instance_id).user_data
        return data.decode() if data is not None else ""

    def spot_requests(self) -> dict[str, Any]:
        return dict(self.backend.spot_instance_requests)

    def wait_state(self, instance_id: str, state: str, timeout: float = 10.0) -> None:
        wait_for(
            lambda: self.instance(instance_id)._state.name == state,
            timeout,
            f"{instance_id} to reach {state}",
        )

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> AwsEmulator:
        if not _active_lock.acquire(blocking=False):
            raise RuntimeError("only one AwsEmulator per process at a time")
        self._owns_lock = True
        try:
            from moto.server import ThreadedMotoServer

            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "aws-config").write_text("")
            (self.root / "aws-credentials").write_text("")
            self._reset_moto()
            self._install_patches()
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self._server.start()
            self._register_amis()
            self._thread = threading.Thread(target=self._controller, daemon=True)
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
            self._thread = None
        for host in list(self.hosts.values()):
            try:
                host.close()
            except Exception:  # noqa: BLE001 - best effort teardown
                traceback.print_exc()
        self.hosts.clear()
        if self._server is not None:
            self._server.stop()
            self._server = None
        for owner, attr, original in reversed(self._patches):
            setattr(owner, attr, original)
        if getattr(self, "_filter_map", None) is not None:
            self._filter_map.pop("client-token", None)
        if self._patches:
            self._patches.clear()
            self._reset_moto()
        if self._owns_lock:
            self._owns_lock = False
            _active_lock.release()

    def __enter__(self) -> AwsEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- moto setup

    @staticmethod
    def _reset_moto() -> None:
        from moto.ec2.models import ec2_backends

        ec2_backends.reset()

    def _register_amis(self) -> None:
        from moto.ec2.models.amis import Ami

        backend = self.backend
        for ami_id, date in ((DLAMI_OLD, "2025-01-10"), (DLAMI_NEW, "2026-10-02")):
            backend.amis[ami_id] = Ami(
                backend,
                ami_id,
                name=f"Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) {date}",
                description="Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)",
                owner_id=DLAMI_OWNER,
                owner_alias="amazon",
                public=True,
                virtualization_type="hvm",
                architecture="x86_64",
                creation_date=dt.datetime.fromisoformat(f"{date}T12:00:00+00:00"),
                root_device_type="ebs",
                root_device_name="/dev/sda1",
                hypervisor="xen",
            )

    def _patch(self, owner: Any, attr: str, replacement: Any) -> None:
        self._patches.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, replacement)

    def _install_patches(self) -> None:
        from moto.core.responses import BaseResponse

        emu = self
        orig_setup_class = BaseResponse.setup_class

        def setup_class(resp_self, *args, **kwargs):
            result = orig_setup_class(resp_self, *args, **kwargs)
            emu.access_keys.append(resp_self.get_access_key())
            return result

        self._patch(BaseResponse, "setup_class", setup_class)
        orig_call_action = BaseResponse.call_action

        def call_action(resp_self):
            if resp_self.get_access_key() in emu.rejected_keys:
                from moto.core.utils import camelcase_to_underscores
                from moto.ec2.exceptions import EC2ClientError

                def refuse():
                    # EC2's answer to an unknown key (docs.aws.amazon.com/AWSEC2/latest/
                    # APIReference/errors-overview.html, AuthFailure)
                    raise EC2ClientError(
                        "AuthFailure",
                        "AWS was not able to validate the provided access credentials",
                    )

                # the action's method, shadowed on this one response object
                setattr(resp_self, camelcase_to_underscores(resp_self._get_action()), refuse)
            return orig_call_action(resp_self)

        self._patch(BaseResponse, "call_action", call_action)
        self._install_ec2_patches()

    def _install_ec2_patches(self) -> None:
        from moto.ec2 import utils as ec2_utils
        from moto.ec2.exceptions import EC2ClientError
        from moto.ec2.models.elastic_network_interfaces import NetworkInterface
        from moto.ec2.models.instances import Instance, InstanceBackend
        from moto.ec2.models.spot_requests import SpotRequestBackend
        from moto.ec2.responses.instances import InstanceResponse
        from moto.servicequotas.models import ServiceQuotasBackend

        emu = self
        orig_get_quota = ServiceQuotasBackend.get_service_quota

        def get_quota(sq_self, service_code: str, quota_code: str):
            from moto.core.exceptions import JsonRESTError

            emu.quota_requests += 1
            if emu.quotas_denied:
                raise JsonRESTError(
                    "AccessDeniedException",
                    f"User: arn:aws:iam::{ACCOUNT}:user/vp is not authorized to perform: "
                    "servicequotas:GetServiceQuota",
                )
            if service_code != "ec2" or quota_code not in emu.quotas:
                return orig_get_quota(sq_self, service_code, quota_code)
            name = EC2_QUOTAS.get(quota_code, (quota_code, 0.0))[0]
            return {
                "ServiceCode": "ec2",
                "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
                "QuotaArn": f"arn:aws:servicequotas:{emu.region}:{ACCOUNT}:ec2/{quota_code}",
                "QuotaCode": quota_code,
                "QuotaName": name,
                "Value": float(emu.quotas[quota_code]),
                "Unit": "None",
                "Adjustable": True,
                "GlobalQuota": False,
            }

        orig_response_run = InstanceResponse.run_instances
        orig_backend_run = InstanceBackend.run_instances
        orig_start = Instance.start
        orig_stop = Instance.stop
        orig_terminate = Instance.terminate

        def response_run(resp_self):
            market = resp_self._get_param("InstanceMarketOptions.MarketType") or "on-demand"
            opts = {
                "market": market,
                "spot_type": resp_self._get_param(
                    "InstanceMarketOptions.SpotOptions.SpotInstanceType"
                )
                or "one-time",
                "interruption": resp_self._get_param(
                    "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"
                )
                or "terminate",
                "max_price": resp_self._get_param("InstanceMarketOptions.SpotOptions.MaxPrice"),
                "instance_type": resp_self._get_param("InstanceType"),
                "key_name": resp_self._get_param("KeyName"),
                "subnet_id": resp_self._get_param("SubnetId"),
            }
            code = emu.capacity_faults.get(market)
            if code:
                raise EC2ClientError(
                    code,
                    f"We currently do not have sufficient {opts['instance_type']} capacity "
                    f"({market}) in the Availability Zone you requested.",
                )
            emu.launches.append(opts)
            _local.opts = opts
            try:
                result = orig_response_run(resp_self)
            finally:
                _local.opts = None
            if emu.run_response_delay:  # the launch happened; the answer is slow to come
                emu.delayed_runs += 1
                emu._stop.wait(emu.run_response_delay)
            if emu.lose_run_response:
                raise EC2ClientError("InternalError", "An internal error has occurred.")
            return result

        def backend_run(backend_self, *args, **kwargs):
            with emu._lock:
                return _backend_run(backend_self, *args, **kwargs)

        def _backend_run(backend_self, *args, **kwargs):
            if not kwargs.get("subnet_id") and not kwargs.get("placement"):
                # EC2 picks a default subnet for the caller, not always the same AZ's.
                zones = sorted(backend_self.get_default_subnets())
                kwargs["placement"] = zones[emu._launch_count % len(zones)]
            emu._launch_count += 1
            reservation = orig_backend_run(backend_self, *args, **kwargs)
            opts = getattr(_local, "opts", None) or {}
            for inst in reservation.instances:
                inst._state.name, inst._state.code = "pending", 0
                for nic in inst.nics.values():
                    nic.public_ip = None
                if opts.get("market") == "spot":
                    emu._attach_spot_request(backend_self, inst, opts)
            return reservation

        def start(inst_self):
            with emu._lock:
                return _start(inst_self)

        def _start(inst_self):
            previous = orig_start(inst_self)
            inst_self._state.name, inst_self._state.code = "pending", 0
            for nic in inst_self.nics.values():
                nic.public_ip = None
            return previous

        def stop(inst_self):
            with emu._lock:
                return _stop(inst_self)

        def terminate(inst_self):
            with emu._lock:
                return orig_terminate(inst_self)

        def _stop(inst_self):
            req = getattr(inst_self, "_vp_spot_request", None)
            if req is not None and req.type == "one-time":
                raise EC2ClientError(
                    "UnsupportedOperation",
                    f"You can't stop the Spot Instance '{inst_self.id}' because it is "
                    "associated with a one-time Spot Instance request. You can only stop Spot "
                    "Instances associated with persistent Spot Instance requests.",
                )
            if req is not None and req.instance_interruption_behaviour != "stop":
                raise EC2ClientError(
                    "UnsupportedOperation",
                    f"You can't stop the Spot Instance '{inst_self.id}': its request's "
                    "interruption behavior is not 'stop'.",
                )
            previous = orig_stop(inst_self)
            inst_self._state.name, inst_self._state.code = "stopping", 64
            return previous

        def cancel(backend_self, request_ids):
            out = []
            for rid in request_ids:
                req = backend_self.spot_instance_requests.get(rid)
                if req is None:
                    raise EC2ClientError(
                        "InvalidSpotInstanceRequestID.NotFound",
                        f"The spot instance request ID '{rid}' does not exist",
                    )
                req.state = "cancelled"
                req._status_code = "request-canceled-and-instance-running"
                out.append(req)
            return out

        self._patch(InstanceResponse, "run_instances", response_run)
        self._patch(InstanceBackend, "run_instances", backend_run)
        self._patch(Instance, "start", start)
        self._patch(Instance, "stop", stop)
        self._patch(Instance, "terminate", terminate)
        self._patch(SpotRequestBackend, "cancel_spot_instance_requests", cancel)
        self._patch(ServiceQuotasBackend, "get_service_quota", get_quota)
        # Public IPs are handed out by the controller (the SshHost's veth address), never moto.
        self._patch(NetworkInterface, "check_auto_public_ip", lambda nic_self: None)
        # DescribeInstances Filter client-token: EC2 has it, moto does not.
        self._filter_map = ec2_utils.filter_dict_attribute_mapping
        self._filter_map["client-token"] = "client_token"
        logging.getLogger("werkzeug").setLevel(logging.ERROR)

    def _attach_spot_request(self, backend, inst, opts: dict) -> None:
        from moto.ec2.models.spot_requests import SpotInstanceRequest
        from moto.ec2.utils import random_spot_request_id

        # A spot request whose instance RunInstances already made: SpotInstanceRequest's
        # constructor launches one, so hand it ours instead.
        req = SpotInstanceRequest.__new__(SpotInstanceRequest)
        req.launch_instance = lambda: inst
        SpotInstanceRequest.__init__(
            req,
            backend,
            random_spot_request_id(),
            opts.get("max_price") or "",
            inst.image_id,
            opts["spot_type"],
            None,
            None,
            None,
            None,
            inst.key_name,
            [],
            None,
            inst.instance_type,
            None,
            None,
            None,
            False,
            inst.subnet_id,
            {},
            None,
            opts["interruption"],
        )
        backend.spot_instance_requests[req.id] = req
        inst.spot_instance_request_id = req.id
        inst.instance_lifecycle = "spot"
        inst._vp_spot_request = req

    # ---------------------------------------------------------------- controller

    def _controller(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - keep the controller alive, report to tests
                self.errors.append(traceback.format_exc())
            self._stop.wait(0.05)

    def _tick(self) -> None:
        backend = self.backend
        for inst in list(backend.all_instances()):
            state = inst._state.name
            host = self.hosts.get(inst.id)
            if state == "pending":
                since = self._pending_since.setdefault(inst.id, time.monotonic())
                if time.monotonic() - since < self.boot_delay:
                    continue
                if host is None or (self.new_ip_on_start and not host.running):
                    host = self._boot(inst, host)
                host.start()
                with self._lock:  # an API call may have stopped/terminated it meanwhile
                    if inst._state.name == "pending":
                        self._set_ip(inst, host.address)
                        inst._state.name, inst._state.code = "running", 16
                        self._pending_since.pop(inst.id, None)
            elif state == "stopping":
                if host is not None:
                    host.stop()
                with self._lock:
                    if inst._state.name == "stopping":
                        self._set_ip(inst, None)
                        inst._state.name, inst._state.code = "stopped", 80
            elif state in ("terminated", "shutting-down") and host is not None:
                del self.hosts[inst.id]
                host.close()
                self._set_ip(inst, None)

    def _boot(self, inst, previous):
        """A fresh namespace host for `inst`; a restart keeps the previous host key (same
        disk) but gets a new address, as a stopped EC2 instance does."""
        try:
            from tests.sshhost import SshHost
        except ImportError:  # tests/ itself is on sys.path (rootdir-less import mode)
            from sshhost import SshHost  # type: ignore[no-redef]

        self._boots[inst.id] = self._boots.get(inst.id, 0) + 1
        key_pair = self.backend.key_pairs.get(inst.key_name) if inst.key_name else None
        host = SshHost(
            self.root / f"{inst.id}-{self._boots[inst.id]}",
            netns=True,
            user=self.host_user,
            authorized_keys=[key_pair.public_key] if key_pair else [],
        )
        if previous is not None:
            for suffix in ("", ".pub"):
                src = Path(str(previous.host_key_path) + suffix)
                shutil.copyfile(src, str(host.host_key_path) + suffix)
            host.host_public_key = previous.host_public_key
            previous.close()
        self.hosts[inst.id] = host
        return host

    @staticmethod
    def _set_ip(inst, address: str | None) -> None:
        for nic in inst.nics.values():
            nic.public_ip = address
            break
