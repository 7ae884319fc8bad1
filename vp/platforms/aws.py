"""AWS EC2 GPU instances through boto3.

The endpoint is boto3's own (`AWS_ENDPOINT_URL`), credentials come from boto3's chain (env,
profile, SSO, instance role), so vp has no AWS-specific switches. Facts EC2 imposes:

- the Deep Learning AMIs log in as `ubuntu`; a security group must open tcp/22;
- an instance is `pending` with no public IP until it is up, and the IP changes on every start;
- a one-time spot instance cannot be stopped, so spot hosts are persistent requests with
  `InstanceInterruptionBehavior=stop`, and the request is cancelled on destroy (or AWS
  relaunches it);
- the EC2 API has no prices: on-demand prices of the types vp offers are built in below. A spot
  request's default `MaxPrice` is the on-demand price, so a type is only chosen when its
  on-demand price is within `max_price`, and no host ever costs more than that;
- GPU instances count against per-family vCPU quotas (Service Quotas, service code `ec2`), which
  are 0 on many new accounts: offers show the quota, and create stops before launching anything
  when the instance type's vCPUs exceed it. A quota vp may not read is shown as "?";
- the nodes of a multi-node run share vp-ssh, whose rule from itself opens their ports to
  each other, and one subnet (one AZ). No cluster placement group: it is all-or-nothing on
  capacity per AZ, and moto (the test emulator) has no placement groups to test it against.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import threading
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from vp import keys
from vp.errors import HostGone, UsageError, VpError
from vp.idle import VM_SHUTDOWN
from vp.platforms import gpus
from vp.platforms.base import GONE, PENDING, RUNNING, STOPPED, UNKNOWN, Host, HostSpec, Offer
from vp.platforms.cloud import (
    Capacity,
    CloudPlatform,
    CloudSettings,
    Declaration,
    Ownership,
    Unavailable,
    reraise_after_cleanup,
)
from vp.platforms.common import discard_key
from vp.platforms.gpus import catalog
from vp.settings import non_negative, positive, setting

NAME = "aws"

# EC2 instance states -> vp states.
STATUS = {
    "pending": PENDING,
    "running": RUNNING,
    "stopping": PENDING,
    "stopped": STOPPED,
    "shutting-down": GONE,
    "terminated": GONE,
}


# instance type -> its GPUs, on-demand price and vCPUs: a dated data file (data/aws.toml),
# read on first use (config loading imports this module for its DECLARATION only).
def instance_types() -> dict[str, tuple[str, int, float]]:
    """instance type -> (GPU model, GPU count, on-demand $/h in us-east-1, Linux)."""
    return {t: (v["gpu"], v["gpus"], v["price"]) for t, v in catalog("aws")["types"].items()}


def vcpus_of(itype: str) -> int | None:
    """An instance type's vCPUs (what the family's vCPU quota counts)."""
    return catalog("aws")["types"].get(itype, {}).get("vcpus")


# instance family letter -> {market: (Service Quotas code, quota name)}, service code "ec2".
QUOTAS: dict[str, dict[str, tuple[str, str]]] = {
    "g": {
        "on-demand": ("L-DB2E81BA", "Running On-Demand G and VT instances"),
        "spot": ("L-3819A6DF", "All G and VT Spot Instance Requests"),
    },
    "p": {
        "on-demand": ("L-417A185B", "Running On-Demand P instances"),
        "spot": ("L-7212CCBC", "All P Spot Instance Requests"),
    },
}

DLAMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
SECURITY_GROUP = "vp-ssh"
NODES_RULE = "vp: nodes to each other"  # the description of vp-ssh's rule from itself
DEFAULT_REGION = "us-east-1"
DEFAULT_USER = "ubuntu"
DATA_DEVICE = "/dev/sdf"

# RunInstances errors that mean "not this market / type right now": try the next option.
CAPACITY_ERRORS = {
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientFreeAddressesInSubnet",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "Unsupported",
}
NOT_FOUND = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}
# A host still stopped this long after wait_ready began (no start in flight) never comes up.
STOPPED_GRACE = 30.0
HINT_INSTALL = "pip install 'vp-runner[aws]'"


def create_platform(settings: AwsSettings | dict | None) -> AwsPlatform:
    return AwsPlatform(settings)


def _tags(item: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags", [])}


# A login name as useradd accepts it: it lands in cloud-init (a root shell script) and tags.
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def _login_name(user: str) -> str:
    if not _USER_NAME.fullmatch(user):
        raise UsageError(
            f"[aws] user {user!r} is not a login name",
            hint="use lower-case letters, digits, '_' and '-', starting with a letter or '_'",
        )
    return user


def _data_volume_script(user: str) -> str:
    """cloud-init user data: format the extra EBS volume on first use and mount it at /data.
    The user name is validated and quoted: this script runs as root on first boot."""
    owner = shlex.quote(_login_name(user) + ":")
    return f"""#!/bin/bash
root=$(lsblk -no PKNAME "$(findmnt -no SOURCE /)")
for d in $(lsblk -dno NAME,MODEL | awk '/Elastic Block Store/ {{print $1}}') xvdf; do
  [ "$d" = "$root" ] && continue
  dev=/dev/$d
  [ -b "$dev" ] || continue
  blkid "$dev" >/dev/null 2>&1 || mkfs.ext4 -q -L vp-data "$dev"
  mkdir -p /data
  uuid=$(blkid -s UUID -o value "$dev")
  grep -q "$uuid" /etc/fstab || echo "UUID=$uuid /data ext4 defaults,nofail 0 2" >> /etc/fstab
  mount /data && chown {owner} /data
  break
done
"""


@dataclass(frozen=True)
class AwsSettings(CloudSettings):
    """[aws]"""

    region: str | None = setting(check="cloud_zone")
    profile: str | None = None
    user: str | None = setting(check="user_name")
    data_volume_gb: int | None = positive()
    keep_data_volume: bool = False
    ami: str | None = None
    api_timeout: float | None = non_negative()


DECLARATION = Declaration(
    name=NAME,
    kind="vm",
    ownership=Ownership.LABEL,  # tags vp:managed=true and vp:project=PROJECT (vp:node=R)
    # A stopped instance's EBS gp3 volume: $0.08/GB/month in us-east-1 (aws.amazon.com/ebs/
    # pricing, 2026-12).
    storage_price=0.08,
    credentials=(
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "~/.aws/credentials",
        "~/.aws/config",
    ),
    settings=AwsSettings,
    idle_stop=VM_SHUTDOWN,  # EC2 turns a guest shutdown into a stop
    honours=frozenset({"gpu", "gpus", "max_price", "disk_gb", "spot"}),
    endpoint_env="AWS_ENDPOINT_URL",
    noun="aws instance",
    provider="AWS",
    private_network=True,
    network=(
        "one subnet (rank 0's) and security group (vp-ssh): private addresses; vp-ssh's rule "
        "whose source is the group itself opens every port between the nodes, to them only"
    ),
)


class AwsPlatform(CloudPlatform):
    declaration = DECLARATION
    ready_hint = "raise [host] ready_timeout, or vp down the host and try again"
    stopped_grace = STOPPED_GRACE

    def __init__(self, settings: AwsSettings | dict | None = None):
        super().__init__(settings)
        self.region = (
            self.settings.region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION
        )
        self.user = self.settings.user or DEFAULT_USER
        self.poll_interval = float(self.settings.poll_interval or 2.0)
        self._launched: dict[str, dict] = {}  # instance id -> RunInstances' answer
        # (image, security group, subnet or None: EC2's choice) for launches
        self._prepared: tuple[dict, str, str | None] | None = None
        self._prepare_lock = threading.Lock()  # the nodes of one run are created in parallel
        self._client = None
        self._quota_client = None
        self._quotas: dict[str, float | None] = {}  # quota code -> vCPUs (None: unreadable)
        self._quotas_unreadable = False

    # ---------------------------------------------------------------- SDK plumbing

    def _sdk(self):
        try:
            import boto3
            import botocore.exceptions
        except ImportError as exc:
            raise VpError("the aws platform needs boto3", hint=HINT_INSTALL) from exc
        return boto3, botocore.exceptions

    def _new_client(self, service: str, timeout: float, retries: dict):
        boto3, _ = self._sdk()
        from botocore.config import Config

        session = boto3.session.Session(
            profile_name=self.settings.profile or None, region_name=self.region
        )
        config = Config(connect_timeout=min(timeout, 10), read_timeout=timeout, retries=retries)
        return session.client(service, config=config)

    @property
    def ec2(self):
        if self._client is None:
            timeout = float(self.settings.api_timeout or 60)
            self._client = self._new_client("ec2", timeout, {"mode": "standard"})
        return self._client

    def quota_vcpus(self, itype: str, spot: bool) -> float | None:
        """The account's vCPU quota in this region for `itype`'s family and market, or None
        when it cannot be read (no permission, no credentials, unknown family).

        Quotas only inform: a failure to read one is never an error, and after the first
        failure vp stops asking.
        """
        entry = QUOTAS.get(itype[:1], {}).get("spot" if spot else "on-demand")
        if entry is None:
            return None
        code = entry[0]
        if code in self._quotas:
            return self._quotas[code]
        value = None
        if not self._quotas_unreadable:
            try:
                if self._quota_client is None:
                    self._quota_client = self._new_client(
                        "service-quotas", 10.0, {"mode": "standard", "max_attempts": 2}
                    )
                quota = self._quota_client.get_service_quota(ServiceCode="ec2", QuotaCode=code)
                value = float(quota["Quota"]["Value"])
            except Exception:  # noqa: BLE001 - AccessDenied, no credentials, no endpoint...
                self._quotas_unreadable = True
        self._quotas[code] = value
        return value

    def _call(self, method: str, **kwargs) -> dict:
        """One EC2 call; SDK failures become a one-line VpError, ClientError passes through."""
        _, exc = self._sdk()
        try:
            return getattr(self.ec2, method)(**kwargs)
        except exc.NoCredentialsError as e:
            raise VpError(
                "no AWS credentials found",
                hint="set AWS_PROFILE ([aws] profile) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            ) from e
        except (exc.EndpointConnectionError, exc.ConnectTimeoutError) as e:
            raise VpError(
                f"cannot reach the EC2 API: {e}", hint="check the network or AWS_ENDPOINT_URL"
            ) from e
        except exc.ProfileNotFound as e:
            raise VpError(str(e), hint="check [aws] profile / AWS_PROFILE") from e

    @staticmethod
    def _code(error: Exception) -> str:
        response = getattr(error, "response", None)
        return response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""

    def _client_error(self):
        return self._sdk()[1].ClientError

    def _fail(self, what: str, error: Exception) -> VpError:
        err = getattr(error, "response", {}).get("Error", {})
        code, msg = err.get("Code", type(error).__name__), err.get("Message", str(error))
        hint = None
        if code in ("AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId"):
            hint = "check your AWS credentials and their EC2 permissions"
        return VpError(f"aws: {what} failed: {code}: {msg}", hint=hint)

    # ---------------------------------------------------------------- read side

    def _search(self, spec: HostSpec) -> list[Offer]:
        out = []
        types = catalog("aws")["types"]
        for itype, (gpu, count, price) in instance_types().items():
            memory_gb = types[itype]["memory_gb"]
            if not gpus.matches(spec.gpu, gpu, memory_gb) or count < max(spec.gpus, 1):
                continue
            if spec.max_price is not None and price > spec.max_price:
                continue
            extra: dict[str, Any] = {"vcpus": vcpus_of(itype)}
            if spec.spot:
                extra["price_is"] = "on-demand (a spot host costs at most this)"
            out.append(
                Offer(
                    platform=NAME,
                    id=itype,
                    gpu=gpu,
                    gpus=count,
                    price=price,
                    region=self.region,
                    spot=bool(spec.spot),
                    extra=extra,
                )
            )
        # The smallest machine with enough GPUs: never fall back to an 8-GPU box for 1 GPU.
        fewest = min((o.gpus for o in out), default=0)
        chosen = sorted((o for o in out if o.gpus == fewest), key=lambda o: (o.price, o.id))
        for offer in chosen:
            quota = self.quota_vcpus(offer.id, offer.spot)
            offer.extra["quota_vcpus"] = "?" if quota is None else int(quota)
        return chosen

    def _within_quota(self, offers: list[Offer], spot: bool) -> list[tuple[Offer, bool]]:
        """The (offer, spot?) launches to try, in order, leaving out those whose vCPUs exceed
        a quota vp could read; a one-line error when that leaves none."""
        tries = [(o, market) for o in offers for market in ((True, False) if spot else (False,))]
        allowed, refused = [], []
        for offer, market in tries:
            quota = self.quota_vcpus(offer.id, market)
            vcpus = vcpus_of(offer.id)
            if quota is not None and vcpus is not None and vcpus > quota:
                refused.append((offer, market, vcpus, quota))
            else:
                allowed.append((offer, market))
        if allowed or not refused:
            return allowed
        offer, market, vcpus, quota = refused[0]
        _code, quota_name = QUOTAS[offer.id[:1]]["spot" if market else "on-demand"]
        more = f" (and {len(refused) - 1} more refused)" if len(refused) > 1 else ""
        raise Unavailable(
            f"aws: {offer.id} needs {vcpus} vCPUs but the account's quota "
            f"'{quota_name}' in {self.region} is {quota:g}{more}",
            hint="request an increase in the Service Quotas console (AWS services > Amazon EC2)",
        )

    def _host(self, inst: dict) -> Host:
        tags = _tags(inst)
        itype = inst.get("InstanceType", "")
        gpu, count, price = instance_types().get(itype, (None, 0, None))
        key_file = tags.get("vp:key")
        key_path = str(keys.keys_dir() / key_file) if key_file else None
        launch = inst.get("LaunchTime")
        labels = {
            "project": tags.get("vp:project", ""),
            "instance_type": itype,
            "market": "spot" if inst.get("InstanceLifecycle") == "spot" else "on-demand",
            "region": self.region,
        }
        if inst.get("SpotInstanceRequestId"):
            labels["spot_request"] = inst["SpotInstanceRequestId"]
        if tags.get("vp:node", "").isdigit():
            labels["node"] = tags["vp:node"]
        return Host(
            id=inst["InstanceId"],
            name=tags.get("Name", inst["InstanceId"]),
            platform=NAME,
            status=STATUS.get(inst.get("State", {}).get("Name", ""), UNKNOWN),
            gpu=gpu,
            gpus=count,
            price=price,
            ssh_user=tags.get("vp:user") or self.user,
            ssh_host=inst.get("PublicIpAddress"),
            ssh_port=22,
            labels=labels,
            key_path=key_path,
            host_key_alias=f"vp-{NAME}-{inst['InstanceId']}",
            created_at=launch.timestamp() if hasattr(launch, "timestamp") else None,
            region=self.region,
        )

    def _describe(self, host_id: str) -> dict | None:
        try:
            resp = self._call("describe_instances", InstanceIds=[host_id])
        except self._client_error() as e:
            if self._code(e) in NOT_FOUND:
                return None
            raise self._fail("DescribeInstances", e) from e
        for res in resp.get("Reservations", []):
            for inst in res.get("Instances", []):
                return inst
        return None

    def _get(self, host_id: str) -> Host:
        inst = self._describe(host_id)
        if inst is None:
            raise HostGone(f"aws instance {host_id} does not exist", hint="vp ls shows your hosts")
        return self._host(inst)

    def list(self, project: str | None = None) -> list[Host]:
        filters = [
            {"Name": "tag:vp:managed", "Values": ["true"]},
            {
                "Name": "instance-state-name",
                "Values": ["pending", "running", "stopping", "stopped"],
            },
        ]
        if project:
            filters.append({"Name": "tag:vp:project", "Values": [project]})
        hosts, token = [], None
        while True:
            kwargs: dict[str, Any] = {"Filters": filters}
            if token:
                kwargs["NextToken"] = token
            try:
                resp = self._call("describe_instances", **kwargs)
            except self._client_error() as e:
                raise self._fail("DescribeInstances", e) from e
            for res in resp.get("Reservations", []):
                hosts.extend(self._host(i) for i in res.get("Instances", []))
            token = resp.get("NextToken")
            if not token:
                return hosts

    # ---------------------------------------------------------------- create

    def _image(self) -> dict:
        if self.settings.ami:
            resp = self._call("describe_images", ImageIds=[self.settings.ami])
        else:
            resp = self._call(
                "describe_images",
                Owners=["amazon"],
                Filters=[
                    {"Name": "name", "Values": [DLAMI_NAME]},
                    {"Name": "state", "Values": ["available"]},
                ],
            )
        images = sorted(resp.get("Images", []), key=lambda i: i.get("CreationDate", ""))
        if not images:
            raise VpError(
                f"no Deep Learning AMI found in {self.region}",
                hint="set [aws] region to a region that has it, or [aws] ami to an AMI id",
            )
        return images[-1]

    def _security_group(self) -> str:
        """vp-ssh: tcp/22 from anywhere, and all traffic between its own members (the nodes
        of a multi-node run); nothing else is open to the internet."""
        ce = self._client_error()
        resp = self._call(
            "describe_security_groups", Filters=[{"Name": "group-name", "Values": [SECURITY_GROUP]}]
        )
        if resp.get("SecurityGroups"):
            group = resp["SecurityGroups"][0]
            self._open_to_members(group["GroupId"], group.get("IpPermissions", []))
            return group["GroupId"]
        try:
            group_id = self._call(
                "create_security_group",
                GroupName=SECURITY_GROUP,
                Description="vp: ssh access to GPU hosts",
                TagSpecifications=[
                    {
                        "ResourceType": "security-group",
                        "Tags": [{"Key": "vp:managed", "Value": "true"}],
                    }
                ],
            )["GroupId"]
        except ce as e:
            if self._code(e) != "InvalidGroup.Duplicate":
                raise
            return self._security_group()  # created concurrently by another vp
        with suppress(ce):
            self._call(
                "authorize_security_group_ingress",
                GroupId=group_id,
                IpPermissions=[
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 22,
                        "ToPort": 22,
                        "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "ssh"}],
                    }
                ],
            )
        self._open_to_members(group_id, [])
        return group_id

    def _open_to_members(self, group_id: str, permissions: list[dict]) -> None:
        """A rule whose source is the group itself: its members (and no one else) reach each
        other on every port, so torchrun/Ray find rank 0 at its private address. A group from
        an older vp gets it on the next create; a rule already there is not an error. Without
        the right to add it, a single host carries on; a node's create fails."""
        for perm in permissions:
            pairs = perm.get("UserIdGroupPairs", [])
            if perm.get("IpProtocol") == "-1" and any(p.get("GroupId") == group_id for p in pairs):
                return
        rule = {
            "IpProtocol": "-1",
            "UserIdGroupPairs": [{"GroupId": group_id, "Description": NODES_RULE}],
        }
        try:
            self._call("authorize_security_group_ingress", GroupId=group_id, IpPermissions=[rule])
        except self._client_error() as e:
            if self._code(e) == "InvalidPermission.Duplicate" or self.nodes_of is None:
                return
            err = self._fail("opening the nodes' ports to each other", e)
            err.hint = (
                f"allow ec2:AuthorizeSecurityGroupIngress, or add to security group "
                f"{SECURITY_GROUP} an inbound rule for all traffic from {SECURITY_GROUP} itself"
            )
            raise err from e

    def _node_subnet(self) -> str | None:
        """The subnet every node of `nodes_of` launches in: rank 0's (or the lowest rank's
        that exists), else the default subnet of the region's first availability zone. One
        subnet is one AZ: private addresses, no cross-AZ traffic charges."""
        group = self.nodes_of
        assert group is not None
        rank_of = re.compile(re.escape(group) + r"(?:-(\d+))?")
        resp = self._call(
            "describe_instances",
            Filters=[
                {"Name": "tag:vp:managed", "Values": ["true"]},
                {"Name": "tag:Name", "Values": [group, f"{group}-*"]},
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                },
            ],
        )
        ranked = []
        for res in resp.get("Reservations", []):
            for inst in res.get("Instances", []):
                m = rank_of.fullmatch(_tags(inst).get("Name", ""))
                if m and inst.get("SubnetId"):
                    ranked.append((int(m.group(1) or 0), inst["SubnetId"]))
        if ranked:
            return min(ranked)[1]
        subnets = self._call(
            "describe_subnets", Filters=[{"Name": "default-for-az", "Values": ["true"]}]
        ).get("Subnets", [])
        subnets.sort(key=lambda s: s.get("AvailabilityZone", ""))
        return subnets[0]["SubnetId"] if subnets else None  # no default VPC: EC2 decides

    def _launch_args(
        self, image: dict, spec: HostSpec, name: str, sg: str, key_name: str, key_file: str
    ) -> dict:
        _login_name(self.user)
        project = self.project_of(name)
        tags = [
            {"Key": "Name", "Value": name},
            {"Key": "vp:project", "Value": project},
            {"Key": "vp:managed", "Value": "true"},
            {"Key": "vp:key", "Value": key_file},
            {"Key": "vp:user", "Value": self.user},
        ]
        if rank := self.node_rank_of(name):  # node R of a multi-node run (vp/nodes.py)
            tags.append({"Key": "vp:node", "Value": str(rank)})
        root_name = image.get("RootDeviceName") or "/dev/sda1"
        root_min = 0
        for bdm in image.get("BlockDeviceMappings", []):
            if bdm.get("DeviceName") == root_name:
                root_min = bdm.get("Ebs", {}).get("VolumeSize") or 0
        mappings = [
            {
                "DeviceName": root_name,
                "Ebs": {
                    "VolumeSize": max(int(spec.disk_gb or 0), root_min, 8),
                    "VolumeType": "gp3",
                    "DeleteOnTermination": True,
                },
            }
        ]
        args: dict[str, Any] = {
            "ImageId": image["ImageId"],
            "MinCount": 1,
            "MaxCount": 1,
            "KeyName": key_name,
            "SecurityGroupIds": [sg],
            "BlockDeviceMappings": mappings,
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags[:3]},
            ],
        }
        data_gb = self.settings.data_volume_gb
        if data_gb:
            mappings.append(
                {
                    "DeviceName": DATA_DEVICE,
                    "Ebs": {
                        "VolumeSize": int(data_gb),
                        "VolumeType": "gp3",
                        "DeleteOnTermination": not self.settings.keep_data_volume,
                    },
                }
            )
            args["UserData"] = _data_volume_script(self.user)
        return args

    def _run(self, args: dict, itype: str, spot: bool) -> dict:
        args = dict(args, InstanceType=itype, ClientToken=secrets.token_hex(16))
        if spot:
            args["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "persistent",
                    "InstanceInterruptionBehavior": "stop",
                },
            }
        try:
            return self._call("run_instances", **args)["Instances"][0]
        except BaseException as e:
            if self._code(e) in CAPACITY_ERRORS:
                raise
            # The request may have reached EC2 (Ctrl-C, dropped connection, a 5xx after the
            # launch): find what it made by its idempotency token and take it down again.
            done = self._sweep(args["ClientToken"])
            if done is None:
                raise
            self._reraise_after_cleanup(e, done)
            raise  # unreachable

    def _sweep(self, client_token: str) -> str | None:
        """Destroy the instances a RunInstances call with this token made; say what happened
        (None: it made none)."""
        try:
            resp = self._call(
                "describe_instances",
                Filters=[{"Name": "client-token", "Values": [client_token]}],
            )
            found = [i for r in resp.get("Reservations", []) for i in r.get("Instances", [])]
        except Exception:  # noqa: BLE001 - the original failure is what we report
            return "could not check whether EC2 launched an instance anyway; run: vp cleanup"
        if not found:
            return None
        return self._destroy_quietly(*found)

    def _destroy_quietly(self, *instances: dict | str) -> str:
        ids = [i if isinstance(i, str) else i["InstanceId"] for i in instances]
        try:
            for inst in instances:
                if isinstance(inst, str):
                    self.destroy(inst)
                else:
                    self._destroy_instance(inst)
        except BaseException:  # noqa: BLE001 - report the original failure, not this one
            return f"could not destroy the new aws instance {', '.join(ids)}; run: vp cleanup"
        return f"destroyed the new aws instance {', '.join(ids)}"

    def _reraise_after_cleanup(self, exc: BaseException, done: str) -> NoReturn:
        """Re-raise a failure that happened after EC2 accepted a launch, saying what became of
        the instance."""
        if isinstance(exc, self._client_error()):
            exc = self._fail("RunInstances", exc)
        reraise_after_cleanup(exc, done, "AWS")

    def _no_offer(self, spec: HostSpec, found: list[Offer]) -> VpError:
        within = f" within ${spec.max_price}/h" if spec.max_price is not None else ""
        return VpError(
            f"aws offers no {spec.gpus}x {spec.gpu or 'GPU'} instance{within}",
            hint="vp offers -p aws lists what there is; raise max_price or pick another GPU",
        )

    def _attempts(self, spec: HostSpec, fitting: list[Offer]) -> list[tuple[Offer, bool]]:
        """Every type within quota, spot first when asked; the AMI, security group and (for the
        nodes of one run) subnet found (or made) once for all of them."""
        tries = self._within_quota(fitting, bool(spec.spot))
        with self._prepare_lock:
            if self._prepared is None:
                try:
                    subnet = self._node_subnet() if self.nodes_of else None
                    self._prepared = (self._image(), self._security_group(), subnet)
                except self._client_error() as e:
                    raise self._fail("preparing the launch", e) from e
        return tries

    def _key_name(self, name: str) -> str:
        return f"aws-{name}-{secrets.token_hex(3)}"

    def _register_key(self, key: keys.KeyPair) -> None:
        try:
            self._call(
                "import_key_pair",
                KeyName=key.private_path.name,
                PublicKeyMaterial=key.public_key.encode(),
                TagSpecifications=[
                    {"ResourceType": "key-pair", "Tags": [{"Key": "vp:managed", "Value": "true"}]}
                ],
            )
        except self._client_error() as e:
            raise self._fail("ImportKeyPair", e) from e

    def _unregister_key(self, key: keys.KeyPair) -> None:
        self._delete_key_pair(key.private_path.name, None)  # it may have got there

    def _launch(
        self, attempt: tuple[Offer, bool], spec: HostSpec, name: str, key: keys.KeyPair
    ) -> str:
        offer, spot = attempt
        assert self._prepared is not None
        image, sg, subnet = self._prepared
        name_of_key = key.private_path.name
        args = self._launch_args(image, spec, name, sg, name_of_key, name_of_key)
        if subnet:
            args["SubnetId"] = subnet
        try:
            inst = self._run(args, offer.id, spot)
        except self._client_error() as e:
            code = self._code(e)
            if code not in CAPACITY_ERRORS:
                raise self._fail("RunInstances", e) from e
            raise Capacity(f"{offer.id} {'spot' if spot else 'on-demand'}: {code}") from None
        self._launched[inst["InstanceId"]] = inst
        return inst["InstanceId"]

    def _no_capacity(self, spec: HostSpec, failures: list[VpError]) -> VpError:
        messages = [f.message for f in failures]
        codes = sorted({m.rsplit(": ", 1)[1] for m in messages})
        tried = ", ".join(dict.fromkeys(m.split()[0] for m in messages))
        markets = "spot and on-demand" if spec.spot else "on-demand"
        quota = any("Limit" in c or "Count" in c for c in codes)
        return VpError(
            f"aws has no {markets} capacity for {spec.gpus}x {spec.gpu or 'GPU'} in "
            f"{self.region} (tried {tried}: {', '.join(codes)})",
            hint="request a quota increase in the Service Quotas console"
            if quota
            else "try another region ([aws] region) or another GPU type",
        )

    def _accepted(self, host_id: str, spec: HostSpec, name: str, key: keys.KeyPair) -> Host:
        host = self._host(self._launched.pop(host_id))
        return self._get(host.id) if host.status == UNKNOWN else host

    # ---------------------------------------------------------------- lifecycle

    def start(self, host_id: str) -> Host:
        try:
            self._call("start_instances", InstanceIds=[host_id])
        except self._client_error() as e:
            if self._code(e) in NOT_FOUND:
                raise HostGone(f"aws instance {host_id} does not exist") from e
            raise self._fail("StartInstances", e) from e
        return self._get(host_id)

    def stop(self, host_id: str) -> None:
        try:
            self._call("stop_instances", InstanceIds=[host_id])
        except self._client_error() as e:
            if self._code(e) in NOT_FOUND:
                raise HostGone(f"aws instance {host_id} does not exist") from e
            raise self._fail("StopInstances", e) from e

    def destroy(self, host_id: str) -> None:
        inst = self._describe(host_id)
        if inst is None:
            return
        self._destroy_instance(inst)

    def _destroy_instance(self, inst: dict) -> None:
        ce = self._client_error()
        host_id = inst["InstanceId"]
        # Cancel the persistent spot request first, or EC2 relaunches the instance.
        if inst.get("SpotInstanceRequestId"):
            try:
                self._call(
                    "cancel_spot_instance_requests",
                    SpotInstanceRequestIds=[inst["SpotInstanceRequestId"]],
                )
            except ce as e:
                if "NotFound" not in self._code(e):
                    raise self._fail("CancelSpotInstanceRequests", e) from e
        if inst.get("State", {}).get("Name") != "terminated":
            try:
                self._call("terminate_instances", InstanceIds=[host_id])
            except ce as e:
                if self._code(e) not in NOT_FOUND:
                    raise self._fail("TerminateInstances", e) from e
        tags = _tags(inst)
        if inst.get("KeyName") and tags.get("vp:managed") == "true":
            key_file = tags.get("vp:key")
            self._delete_key_pair(inst["KeyName"], keys.keys_dir() / key_file if key_file else None)

    def _delete_key_pair(self, key_name: str, private_path: Path | None) -> None:
        with suppress(self._client_error()):
            self._call("delete_key_pair", KeyName=key_name)
        if private_path is not None:
            discard_key(private_path)
