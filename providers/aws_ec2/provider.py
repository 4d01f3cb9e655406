"""The ``aws-ec2`` provider: sandboxes as EC2 instances, snapshot versions as AMIs.

How the contract maps onto EC2 (docs/providers/aws-ec2.md says it for operators):

* A snapshot version's reference is an AMI id. ``manage.py import_snapshot --provider
  aws-ec2 --ref ami-...`` registers an existing AMI; ``snapshot`` makes one from a
  sandbox (``CreateImage``) and waits until it is available.
* ``create`` looks the sandbox id up first (idempotence), checks the AMI, then launches
  one instance (``RunInstances``) of the preset's instance type (``placement``) with the
  control plane's metadata as tags (``sandboxes:<key>``), so a lost row can be rebuilt
  and an orphan recognised from ``list``. EC2 has no "created but not booted" state: the
  instance boots at once and ``start`` waits until it runs. When anything in ``create``
  fails (also with the answer lost), it terminates whatever carries the sandbox id.
* ``stop``/``start`` are EC2's; ``hibernate`` is a stop with ``Hibernate`` for instances
  launched with hibernation configured (``AWS_EC2_HIBERNATION`` and a type that supports
  it), marked by a tag because EC2 shows both as ``stopped``. There is no pause.
* ``exec`` is SSM Run Command (``ssm_exec``). ``delete`` terminates.
* Services are reached at the instance's address (``AWS_EC2_SERVICE_ADDRESS``); exposed
  ports are recorded as tags, so every control-plane process sees the same list.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping
from typing import ClassVar

from providers.addresses import AddressRule
from providers.aws_ec2 import placement
from providers.aws_ec2.client import IMAGE_TAG, META_PREFIX, Ec2Backend
from providers.aws_ec2.instance import Ec2Instance, describe_image, remove_image
from providers.aws_ec2.settings import CONFIG_KEYS, AwsEc2Settings, read_settings
from providers.base import (
    META_SANDBOX_ID,
    Capabilities,
    Health,
    InstanceSpec,
    Provider,
)
from providers.errors import Conflict, NotFound, ProviderError, Unsupported

#: Why outbound policies are refused (docs/providers/aws-ec2.md, "Network").
EC2_NETWORK = (
    "an EC2 instance's network is its subnet's and security groups' (AWS_EC2_SUBNET_ID, "
    "AWS_EC2_SECURITY_GROUP_IDS), which the operator sets; the provider enforces no policy "
    "of its own"
)
NO_EXEC_IN_TERMINAL = (
    "interactive sessions need SSM Session Manager's websocket protocol, not implemented"
)


class AwsEc2Provider(Provider):
    name: ClassVar[str] = "aws-ec2"
    #: Every environment variable this provider reads (the registry passes exactly these).
    config_keys: ClassVar[tuple[str, ...]] = CONFIG_KEYS

    def __init__(self, settings: AwsEc2Settings) -> None:
        self.settings = settings
        self.backend = Ec2Backend(settings)
        #: instance type -> whether it supports hibernation (DescribeInstanceTypes).
        self._hibernation_support: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"AwsEc2Provider(region={self.settings.region!r})"

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> AwsEc2Provider:
        return cls(read_settings(config))

    @classmethod
    def configured(cls, config: Mapping[str, str]) -> bool:
        return bool(config.get("AWS_EC2_REGION", "").strip())

    @property
    def service_address_rule(self) -> AddressRule:
        """Addresses come from EC2's answers: global or private unicast only."""
        return AddressRule()

    @property
    def capabilities(self) -> Capabilities:
        reasons = {
            "supports_pause": "EC2 has no pause; hibernate keeps memory instead",
            "supports_wake_on": "nothing in front of an EC2 instance wakes it on traffic",
            "supports_ssh": "SSH is not brokered for EC2 (use exec, or your own key pair)",
            "supports_resize": "changing an instance type needs a stop; not offered yet",
            "supports_terminal": NO_EXEC_IN_TERMINAL,
            "supports_process": "SSM Run Command returns a command's output when it ended; "
            "streaming needs Session Manager's websocket protocol, not implemented",
            "supports_network_internet": EC2_NETWORK,
            "supports_network_allowlist": EC2_NETWORK,
        }
        if not self.settings.hibernation:
            reasons["supports_hibernate"] = (
                "hibernation is off (AWS_EC2_HIBERNATION); it needs an instance type, an "
                "AMI and an encrypted root volume large enough for the memory"
            )
        # The largest built-in type bounds what is offered; an override may name any
        # type, so with overrides only create refuses a size nothing maps to.
        largest = placement.BUILTIN_TYPES[-1]
        bounded = not self.settings.instance_types
        return Capabilities(
            max_vcpus=largest.vcpus if bounded else None,
            max_memory_mb=largest.memory_mb if bounded else None,
            # One gp3 root volume holds at most 16 TiB.
            max_disk_gb=16384,
            limits_source="the largest instance type of the built-in mapping; "
            "AWS_EC2_INSTANCE_TYPES names others"
            if bounded
            else "gp3 volume size",
            supports_hibernate=self.settings.hibernation,
            supports_snapshots=True,
            supports_exec=True,
            supports_expose_http=True,
            supports_metrics=True,
            reasons=reasons,
        )

    def size_refusal(self, preset_id: str, vcpus: int, memory_mb: int) -> str:
        """Why a preset of this size cannot run here ('' when it can)."""
        return placement.refusal(preset_id, vcpus, memory_mb, dict(self.settings.instance_types))

    def instance_type(self, spec: InstanceSpec) -> str:
        overrides = dict(self.settings.instance_types)
        chosen = placement.instance_type_for(spec.preset_id, spec.vcpus, spec.memory_mb, overrides)
        if chosen is None:
            raise Unsupported(
                f"aws-ec2 cannot run {spec.preset_id}: "
                + self.size_refusal(spec.preset_id, spec.vcpus, spec.memory_mb),
                capability="size",
            )
        return chosen

    # --- the contract -------------------------------------------------------------------

    def _find(self, sandbox_id: str) -> list[dict]:
        return self.backend.find([{"Name": f"tag:{META_PREFIX}sandbox_id", "Values": [sandbox_id]}])

    def create(
        self, spec: InstanceSpec, snapshot_ref: str, metadata: Mapping[str, str]
    ) -> Ec2Instance:
        capabilities = self.capabilities
        capabilities.require_network(spec.network, provider=self.name)
        # The services ask size_refusal before they create; a direct caller is refused too.
        refusal = capabilities.size_refusal(
            vcpus=spec.vcpus, memory_mb=spec.memory_mb, disk_gb=spec.disk_gb
        )
        if refusal:
            raise Unsupported(f"{self.name}: {refusal}", capability="size")
        instance_type = self.instance_type(spec)
        existing = self._find(spec.sandbox_id)
        if existing:
            return Ec2Instance(self.backend, existing[0])
        image = describe_image(self.backend, snapshot_ref)
        request = self.run_request(spec, image, instance_type, metadata)
        made: str | None = None
        try:
            answer = self.backend.call(
                f"launch {instance_type} from {snapshot_ref}",
                lambda: self.backend.ec2.run_instances(**request),
                ref=snapshot_ref,
            )
            made = answer["Instances"][0]["InstanceId"]
            raw = self.backend.wait_for(made, {"running", "pending"}, what="launching", new=True)
        except ProviderError:
            # The launch may have happened with its answer lost: remove what carries the id.
            self._remove_sandbox(spec.sandbox_id, made)
            raise
        return Ec2Instance(self.backend, raw)

    def run_request(
        self, spec: InstanceSpec, image: Mapping, instance_type: str, metadata: Mapping[str, str]
    ) -> dict:
        """The RunInstances request for ``spec`` (its shape is checked by the tests)."""
        marker = {**dict(metadata), META_SANDBOX_ID: spec.sandbox_id}
        tags = [{"Key": META_PREFIX + k, "Value": str(v)[:256]} for k, v in marker.items()]
        tags.append({"Key": "Name", "Value": f"sandbox {spec.sandbox_id}"})
        hibernate = self.settings.hibernation and self._supports_hibernation(instance_type)
        root = image.get("RootDeviceName") or "/dev/xvda"
        root_gb = max(
            [spec.disk_gb]
            + [
                (m.get("Ebs") or {}).get("VolumeSize") or 0
                for m in image.get("BlockDeviceMappings", [])
                if m.get("DeviceName") == root
            ]
        )
        # Hibernation writes memory to the root volume, which must then be encrypted.
        ebs = {"VolumeSize": root_gb, "VolumeType": "gp3", "DeleteOnTermination": True}
        if hibernate:
            ebs["Encrypted"] = True
        request: dict = {
            "ImageId": image["ImageId"],
            "InstanceType": instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            # Dedups botocore's own retries of this request; a new create is a new token.
            "ClientToken": f"{spec.sandbox_id[:27]}-{uuid.uuid4().hex}",
            "BlockDeviceMappings": [{"DeviceName": root, "Ebs": ebs}],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        }
        if hibernate:
            request["HibernationOptions"] = {"Configured": True}
        if self.settings.subnet_id:
            request["SubnetId"] = self.settings.subnet_id
        if self.settings.security_group_ids:
            request["SecurityGroupIds"] = list(self.settings.security_group_ids)
        profile = self.settings.instance_profile
        if profile:
            key = "Arn" if profile.startswith("arn:") else "Name"
            request["IamInstanceProfile"] = {key: profile}
        return request

    def _supports_hibernation(self, instance_type: str) -> bool:
        if instance_type not in self._hibernation_support:
            answer = self.backend.call(
                f"describe instance type {instance_type}",
                lambda: self.backend.ec2.describe_instance_types(InstanceTypes=[instance_type]),
            )
            types = answer.get("InstanceTypes", [])
            self._hibernation_support[instance_type] = bool(
                types and types[0].get("HibernationSupported")
            )
        return self._hibernation_support[instance_type]

    def _remove_sandbox(self, sandbox_id: str, *refs: str | None) -> None:
        """Best-effort roll-back of a failed create (orphan cleanup finds what is left)."""
        found = {r for r in refs if r}
        with contextlib.suppress(ProviderError):
            found |= {raw["InstanceId"] for raw in self._find(sandbox_id)}
        for ref in sorted(found):
            try:
                self.backend.terminate(ref)
            except ProviderError:
                continue

    def get(self, ref: str) -> Ec2Instance:
        return Ec2Instance(self.backend, self.backend.describe(ref))

    def list(self) -> list[Ec2Instance]:
        found = self.backend.find([{"Name": "tag-key", "Values": [f"{META_PREFIX}sandbox_id"]}])
        return [Ec2Instance(self.backend, raw) for raw in found]

    def delete_snapshot(self, ref: str) -> None:
        """Deregister an AMI this provider made (and delete its EBS snapshots). An AMI
        registered by import is the operator's: its version goes, the AMI stays."""
        users = sorted(
            raw["InstanceId"] for raw in self.backend.find([{"Name": "image-id", "Values": [ref]}])
        )
        if users:
            shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
            raise Conflict(f"AMI {ref} is in use by instance(s) {shown}", ref=ref)
        try:
            image = describe_image(self.backend, ref)
        except NotFound:
            return
        if not any(tag.get("Key") == IMAGE_TAG for tag in image.get("Tags", [])):
            return
        remove_image(self.backend, ref)

    def health(self) -> Health:
        started = time.perf_counter()
        try:
            self.backend.call(
                "health check",
                lambda: self.backend.ec2.describe_instances(
                    Filters=[{"Name": "tag-key", "Values": [f"{META_PREFIX}sandbox_id"]}],
                    MaxResults=5,
                ),
            )
        except ProviderError as exc:
            return Health(reachable=False, detail=exc.message)
        return Health(reachable=True, latency_ms=(time.perf_counter() - started) * 1000)
