"""A handle on one EC2 instance (see ``providers.aws_ec2.provider`` for the mapping)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from providers.aws_ec2 import ssm_exec
from providers.aws_ec2.client import (
    IMAGE_TAG,
    META_PREFIX,
    POWER_TAG,
    SERVICE_PREFIX,
    Ec2Backend,
)
from providers.base import (
    ExecResult,
    HttpService,
    Instance,
    InstanceStatus,
    MetricSample,
    Networking,
    SnapshotResult,
    checked_env,
)
from providers.errors import InvalidState, NotFound, OperationFailed, ProviderError, Unsupported
from providers.presets import parse_preset_id

HIBERNATED = "hibernated"
_STATUS = {
    "pending": InstanceStatus.CREATING,
    "running": InstanceStatus.RUNNING,
    "stopping": InstanceStatus.STOPPED,
    "stopped": InstanceStatus.STOPPED,
}
_SERVICE_NAME_LIMIT = 128 - len(SERVICE_PREFIX)  # EC2 tag keys are at most 128 characters


def tags_of(raw: Mapping) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in raw.get("Tags", [])}


def status_of(raw: Mapping) -> InstanceStatus:
    state = raw["State"]["Name"]
    status = _STATUS.get(state, InstanceStatus.ERROR)
    if status == InstanceStatus.STOPPED and tags_of(raw).get(POWER_TAG) == HIBERNATED:
        return InstanceStatus.HIBERNATED
    return status


def vcpus_of(raw: Mapping) -> int:
    """The instance's vCPUs: EC2's CPU options, else the size its preset tag names."""
    options = raw.get("CpuOptions") or {}
    if options.get("CoreCount"):
        return int(options["CoreCount"]) * int(options.get("ThreadsPerCore") or 1)
    try:
        return parse_preset_id(tags_of(raw).get(META_PREFIX + "preset", "")).vcpus
    except ValueError:
        return 1


class Ec2Instance(Instance):
    def __init__(self, backend: Ec2Backend, raw: Mapping) -> None:
        self._backend = backend
        self._load(raw)

    def __repr__(self) -> str:
        return f"Ec2Instance(id={self.id!r}, status={self.status.value!r})"

    def _load(self, raw: Mapping) -> None:
        self._raw = raw
        self.id = raw["InstanceId"]
        self.status = status_of(raw)
        tags = tags_of(raw)
        self.metadata = {
            key[len(META_PREFIX) :]: value
            for key, value in tags.items()
            if key.startswith(META_PREFIX)
        }
        address = self.address
        services = sorted(
            (key[len(SERVICE_PREFIX) :], int(value))
            for key, value in tags.items()
            if key.startswith(SERVICE_PREFIX) and value.isdigit()
        )
        # An instance always has a private address in its VPC; without one (EC2 has not
        # assigned it yet) its services have no URL to show.
        self.networking = Networking(
            tuple(HttpService(name, port, f"http://{address}:{port}") for name, port in services)
            if address
            else ()
        )

    @property
    def address(self) -> str:
        """Where the control plane reaches the instance's ports (AWS_EC2_SERVICE_ADDRESS:
        its private address in the VPC, or its public one while it has one)."""
        raw = self._raw
        if self._backend.settings.service_address == "public" and raw.get("PublicIpAddress"):
            return raw["PublicIpAddress"]
        return raw.get("PrivateIpAddress") or ""

    @property
    def instance_type(self) -> str:
        return self._raw.get("InstanceType", "")

    @property
    def hibernation_configured(self) -> bool:
        return bool((self._raw.get("HibernationOptions") or {}).get("Configured"))

    def _refresh(self) -> None:
        self._load(self._backend.describe(self.id))

    def _call(self, what: str, fn) -> object:
        return self._backend.call(f"{what} instance {self.id}", fn, ref=self.id)

    def _wait(self, wanted: set[str], what: str) -> None:
        self._load(self._backend.wait_for(self.id, wanted, what=what))

    def _tag(self, key: str, value: str | None) -> None:
        ec2 = self._backend.ec2
        if value is None:
            self._call("untag", lambda: ec2.delete_tags(Resources=[self.id], Tags=[{"Key": key}]))
        else:
            self._call(
                "tag",
                lambda: ec2.create_tags(Resources=[self.id], Tags=[{"Key": key, "Value": value}]),
            )

    def relabel(self, metadata: Mapping[str, str]) -> None:
        """Hand the instance to another owner (a warm pool's member to a sandbox): the
        new ``sandboxes:*`` tags are written first, then the old keys the new metadata
        drops are removed, so the instance never lacks a sandbox id on the way."""
        wanted = {META_PREFIX + str(k): str(v)[:256] for k, v in metadata.items()}
        if META_PREFIX + "sandbox_id" not in wanted:
            raise ValueError("relabel needs a sandbox_id")
        self._refresh()
        current = tags_of(self._raw)
        dropped = [k for k in current if k.startswith(META_PREFIX) and k not in wanted]
        tags = [{"Key": k, "Value": v} for k, v in wanted.items()]
        tags.append({"Key": "Name", "Value": f"sandbox {metadata['sandbox_id']}"})
        ec2 = self._backend.ec2
        self._call("relabel", lambda: ec2.create_tags(Resources=[self.id], Tags=tags))
        if dropped:
            self._call(
                "relabel",
                lambda: ec2.delete_tags(Resources=[self.id], Tags=[{"Key": k} for k in dropped]),
            )
        self._refresh()

    # --- exec ---------------------------------------------------------------------------

    def exec(
        self,
        command: str | Sequence[str],
        timeout: float = 60.0,
        *,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        checked_env(env)  # a bad name is a ValueError before anything is sent
        self._refresh()
        if self.status != InstanceStatus.RUNNING:
            raise InvalidState(f"EC2 instance {self.id} is {self.status}, not running", ref=self.id)
        return ssm_exec.run(self._backend, self.id, command, timeout, env)

    # --- power --------------------------------------------------------------------------

    def start(self) -> None:
        """Boot a stopped or hibernated instance and wait until EC2 says it runs."""
        self._refresh()
        state = self._raw["State"]["Name"]
        if state == "stopping":
            self._wait({"stopped"}, "stopping")
            state = "stopped"
        if state == "stopped":
            ec2 = self._backend.ec2
            self._call("start", lambda: ec2.start_instances(InstanceIds=[self.id]))
        self._wait({"running"}, "starting")
        if POWER_TAG in tags_of(self._raw):
            self._tag(POWER_TAG, None)
            self._refresh()

    def stop(self) -> None:
        self._power_off(hibernate=False)

    def hibernate(self) -> None:
        self._refresh()
        if not self._backend.settings.hibernation:
            raise Unsupported(
                "hibernation is off for aws-ec2 (AWS_EC2_HIBERNATION)",
                capability="supports_hibernate",
                ref=self.id,
            )
        if not self.hibernation_configured:
            raise Unsupported(
                f"EC2 instance {self.id} ({self.instance_type}) was launched without "
                "hibernation: its type or image does not support it",
                capability="supports_hibernate",
                ref=self.id,
            )
        if self.status == InstanceStatus.HIBERNATED:
            return
        if self.status != InstanceStatus.RUNNING:
            raise InvalidState(
                f"EC2 instance {self.id} is {self.status}; only a running instance hibernates",
                ref=self.id,
            )
        self._power_off(hibernate=True)

    def _power_off(self, *, hibernate: bool) -> None:
        self._refresh()
        state = self._raw["State"]["Name"]
        if state in ("stopping", "stopped") and not hibernate:
            self._wait({"stopped"}, "stopping")
            if POWER_TAG in tags_of(self._raw):
                # Asked to stop a hibernated instance: it stays down and now reads as
                # stopped (its next start still brings back the saved memory).
                self._tag(POWER_TAG, None)
                self._refresh()
            return
        if state == "pending":
            self._wait({"running"}, "starting")
        ec2 = self._backend.ec2
        self._call(
            "hibernate" if hibernate else "stop",
            lambda: ec2.stop_instances(InstanceIds=[self.id], Hibernate=hibernate),
        )
        if hibernate:
            # EC2 shows a hibernated instance as stopped: the tag says which it is.
            self._tag(POWER_TAG, HIBERNATED)
        self._wait({"stopped"}, "hibernating" if hibernate else "stopping")

    def pause(self) -> None:
        raise Unsupported(
            "EC2 has no pause (hibernate keeps memory instead)",
            capability="supports_pause",
            ref=self.id,
        )

    def resume(self) -> None:
        self.start()

    def delete(self) -> None:
        self._backend.terminate(self.id)

    # --- services -----------------------------------------------------------------------

    def expose_http_service(self, name: str, port: int) -> str:
        if not name or len(name) > _SERVICE_NAME_LIMIT or not name.isprintable():
            raise ValueError(f"a service name is 1-{_SERVICE_NAME_LIMIT} printable characters")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError("port must be between 1 and 65535")
        self._refresh()
        self._tag(SERVICE_PREFIX + name, str(port))
        self._refresh()
        if not self.address:
            raise InvalidState(f"EC2 instance {self.id} has no address yet", ref=self.id)
        return f"http://{self.address}:{port}"

    def hide_http_service(self, name: str) -> None:
        self._refresh()
        if SERVICE_PREFIX + name in tags_of(self._raw):
            self._tag(SERVICE_PREFIX + name, None)
            self._refresh()

    def set_wake_on(self, http: bool, ssh: bool) -> None:
        raise Unsupported(
            "nothing in front of an EC2 instance wakes it on traffic (the control plane's "
            "proxy wakes a parked sandbox on HTTP)",
            capability="supports_wake_on",
            ref=self.id,
        )

    # --- images and metrics -------------------------------------------------------------

    def snapshot(self) -> SnapshotResult:
        """An AMI of the running instance (``NoReboot``: the sandbox keeps running; what
        its programs had not written to disk yet is not in the image)."""
        self._refresh()
        if self.status not in (InstanceStatus.RUNNING, InstanceStatus.STOPPED):
            raise InvalidState(f"EC2 instance {self.id} is {self.status}", ref=self.id)
        ec2 = self._backend.ec2
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        source = self.metadata.get("sandbox_id", self.id)
        image_tags = [
            {"Key": IMAGE_TAG, "Value": source},
            {"Key": "Name", "Value": f"sandboxes {source}"},
        ]
        made = self._call(
            "image",
            lambda: ec2.create_image(
                InstanceId=self.id,
                Name=f"sandboxes-{source}-{stamp}"[:128],
                Description=f"snapshot of sandbox {source}",
                NoReboot=True,
                # The image's EBS snapshots are found through the image when it is removed.
                TagSpecifications=[{"ResourceType": "image", "Tags": image_tags}],
            ),
        )
        image_id = made["ImageId"]
        try:
            image = wait_for_image(self._backend, image_id)
        except ProviderError:
            # An image that never became available is not left behind to be paid for.
            remove_image(self._backend, image_id)
            raise
        size_gb = sum(
            (m.get("Ebs") or {}).get("VolumeSize") or 0
            for m in image.get("BlockDeviceMappings", [])
        )
        return SnapshotResult(ref=image_id, size_bytes=size_gb * 1024**3 or None)

    def metrics(self) -> list[MetricSample]:
        """CPU from CloudWatch (``AWS/EC2`` ``CPUUtilization``, every 5 minutes with basic
        monitoring, every minute with detailed); EC2 itself does not see memory."""
        end = datetime.now(UTC)
        cw = self._backend.cloudwatch
        answer = self._call(
            "read metrics of",
            lambda: cw.get_metric_data(
                MetricDataQueries=[
                    {
                        "Id": "cpu",
                        "MetricStat": {
                            "Metric": {
                                "Namespace": "AWS/EC2",
                                "MetricName": "CPUUtilization",
                                "Dimensions": [{"Name": "InstanceId", "Value": self.id}],
                            },
                            "Period": 60,
                            "Stat": "Average",
                        },
                    }
                ],
                StartTime=end - timedelta(minutes=30),
                EndTime=end,
                ScanBy="TimestampAscending",
            ),
        )
        vcpus = vcpus_of(self._raw)
        samples = []
        for result in answer.get("MetricDataResults", []):
            for at, percent in zip(
                result.get("Timestamps", []), result.get("Values", []), strict=False
            ):
                samples.append(MetricSample(time=at, cpu_fraction=vcpus * float(percent) / 100))
        return sorted(samples, key=lambda s: s.time)


def wait_for_image(backend: Ec2Backend, image_id: str) -> dict:
    deadline = time.monotonic() + backend.settings.image_timeout
    delay = min(backend.settings.poll_interval, 0.05)
    while True:
        image = describe_image(backend, image_id)
        state = image.get("State")
        if state == "available":
            return image
        if state in ("failed", "invalid", "deregistered", "error"):
            reason = (image.get("StateReason") or {}).get("Message", state)
            raise OperationFailed(f"AMI {image_id} failed: {reason}", ref=image_id)
        if time.monotonic() > deadline:
            from providers.errors import Timeout

            raise Timeout(f"AMI {image_id} still {state}", ref=image_id)
        time.sleep(delay)
        delay = min(delay * 2, backend.settings.poll_interval)


def describe_image(backend: Ec2Backend, image_id: str) -> dict:
    answer = backend.call(
        f"describe image {image_id}",
        lambda: backend.ec2.describe_images(ImageIds=[image_id]),
        ref=image_id,
    )
    for image in answer.get("Images", []):
        if image.get("ImageId") == image_id and image.get("State") != "deregistered":
            return image
    raise NotFound(f"AMI {image_id} does not exist", ref=image_id)


def remove_image(backend: Ec2Backend, image_id: str) -> None:
    """Deregister an AMI this provider made and delete its EBS snapshots (best effort for
    the snapshots: one still being written is left to ``delete_snapshot``'s next call)."""
    try:
        image = describe_image(backend, image_id)
    except NotFound:
        return
    ec2 = backend.ec2
    with contextlib.suppress(NotFound):
        backend.call(
            f"deregister image {image_id}",
            lambda: ec2.deregister_image(ImageId=image_id),
            ref=image_id,
        )
    for mapping in image.get("BlockDeviceMappings", []):
        snapshot_id = (mapping.get("Ebs") or {}).get("SnapshotId")
        if not snapshot_id:
            continue
        try:
            backend.call(
                f"delete EBS snapshot {snapshot_id}",
                lambda sid=snapshot_id: ec2.delete_snapshot(SnapshotId=sid),
                ref=snapshot_id,
            )
        except NotFound:
            continue
