"""The aws-ec2 provider against moto running as an HTTP server on 127.0.0.1.

What moto verifies here is EC2's, SSM's and CloudWatch's API as moto implements it: the
requests are real boto3 requests over HTTP, the state (instances, tags, AMIs, commands,
metrics) is moto's. moto runs no instance, so a command sent through SSM is checked as a
request (document, script, timeouts) only: see docs/providers/aws-ec2.md.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from providers.aws_ec2 import AwsEc2Provider
from providers.aws_ec2.client import IMAGE_TAG, META_PREFIX, POWER_TAG, typed_error
from providers.aws_ec2.placement import BUILTIN_TYPES, instance_type_for, parse_overrides
from providers.aws_ec2.ssm_exec import DOCUMENT, WORKDIR
from providers.base import MARKER_KEYS, InstanceSpec, InstanceStatus
from providers.errors import (
    Conflict,
    InvalidState,
    NotFound,
    OperationFailed,
    QuotaExceeded,
    Unavailable,
    Unsupported,
)
from providers.network import NetworkPolicy
from providers.registry import build_providers, enabled_provider_names
from tests.aws_moto import MISSING_AMI, MotoServer, moto_server

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def moto():
    with moto_server() as server:
        yield server


@pytest.fixture(scope="module")
def base_ami(moto: MotoServer) -> str:
    return moto.base_ami()


def provider_for(moto: MotoServer, **extra: str) -> AwsEc2Provider:
    return AwsEc2Provider.from_config(moto.config(**extra))


def spec(**overrides) -> InstanceSpec:
    values = {
        "sandbox_id": f"sbx-aws{next(_ids):05d}",
        "preset_id": "1vcpu_512mb_4gb",
        "vcpus": 1,
        "memory_mb": 512,
        "disk_gb": 4,
    }
    values.update(overrides)
    return InstanceSpec(**values)


def marker(s: InstanceSpec) -> dict[str, str]:
    return {
        "sandbox_id": s.sandbox_id,
        "team": "platform",
        "preset": s.preset_id,
        "snapshot_id": "awsec2_1vcpu_512mb_4gb_v1",
    }


def running(provider: AwsEc2Provider, ami: str, **overrides):
    s = spec(**overrides)
    instance = provider.create(s, ami, marker(s))
    instance.start()
    return provider.get(instance.id)


def described(moto: MotoServer, ref: str) -> dict:
    answer = moto.client("ec2").describe_instances(InstanceIds=[ref])
    return answer["Reservations"][0]["Instances"][0]


# --- settings and registry --------------------------------------------------------------


def test_importing_and_configuring_needs_no_boto3():
    """The SDK is imported on first use: the registry reads config_keys of every provider."""
    code = (
        "import sys\n"
        "from providers.registry import provider_class\n"
        "cls = provider_class('aws-ec2')\n"
        "cls.from_config({'AWS_EC2_REGION': 'eu-west-1'}).capabilities\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_region_switches_it_on_and_bad_settings_name_the_variable():
    assert "aws-ec2" in enabled_provider_names({"AWS_EC2_REGION": "eu-west-1"})
    assert "aws-ec2" not in enabled_provider_names({})
    for config, variable in (
        ({}, "AWS_EC2_REGION"),
        ({"AWS_EC2_REGION": "Europe"}, "AWS_EC2_REGION"),
        ({"AWS_EC2_ENDPOINT_URL": "ftp://x"}, "AWS_EC2_ENDPOINT_URL"),
        ({"AWS_EC2_SECURITY_GROUP_IDS": "sg-12345678,web"}, "AWS_EC2_SECURITY_GROUP_IDS"),
        ({"AWS_EC2_SUBNET_ID": "default"}, "AWS_EC2_SUBNET_ID"),
        ({"AWS_EC2_SERVICE_ADDRESS": "elastic"}, "AWS_EC2_SERVICE_ADDRESS"),
        ({"AWS_EC2_HIBERNATION": "maybe"}, "AWS_EC2_HIBERNATION"),
        ({"AWS_EC2_BOOT_TIMEOUT": "0"}, "AWS_EC2_BOOT_TIMEOUT"),
        ({"AWS_EC2_INSTANCE_TYPES": "4vcpu_16gb_48gb"}, "AWS_EC2_INSTANCE_TYPES"),
        ({"AWS_EC2_INSTANCE_TYPES": "4vcpu_16384mb_48gb=m6i.xlarge"}, "AWS_EC2_INSTANCE_TYPES"),
        ({"AWS_EC2_ACCESS_KEY_ID": "AKIA..."}, "AWS_EC2_SECRET_ACCESS_KEY"),
    ):
        config = (
            {"AWS_EC2_REGION": "eu-west-1", **config} if variable != "AWS_EC2_REGION" else config
        )
        with pytest.raises(ValueError, match=variable):
            AwsEc2Provider.from_config(config)
    built = build_providers({"SANDBOX_PROVIDERS": "aws-ec2", "AWS_EC2_REGION": "eu-west-1"})
    assert isinstance(built["aws-ec2"], AwsEc2Provider)


def test_the_secret_key_never_shows():
    provider = AwsEc2Provider.from_config(
        {
            "AWS_EC2_REGION": "eu-west-1",
            "AWS_EC2_ACCESS_KEY_ID": "AKIAEXAMPLE",
            "AWS_EC2_SECRET_ACCESS_KEY": "very-secret-key",
            # Nothing listens on port 9 of the loopback: every call fails to connect.
            "AWS_EC2_ENDPOINT_URL": "http://127.0.0.1:9",
        }
    )
    assert "very-secret-key" not in repr(provider) + repr(provider.settings)
    health = provider.health()
    assert not health.reachable
    assert "very-secret-key" not in health.detail
    with pytest.raises(Unavailable) as raised:
        provider.get("i-0123456789abcdef0")
    assert "very-secret-key" not in str(raised.value)


# --- placement --------------------------------------------------------------------------


def test_the_smallest_built_in_type_that_fits_and_overrides():
    assert instance_type_for("1vcpu_512mb_4gb", 1, 512) == "t3.nano"
    assert instance_type_for("2vcpu_4gb_16gb", 2, 4096) == "t3.medium"
    assert instance_type_for("4vcpu_6gb_32gb", 4, 6144) == "t3.xlarge"
    assert instance_type_for("16vcpu_32gb_64gb", 16, 32768) == "m6i.4xlarge"
    assert instance_type_for("256vcpu_1gb_8gb", 256, 1024) is None
    overrides = parse_overrides("4vcpu_6gb_32gb=c6i.xlarge, 256vcpu_1gb_8gb=u-6tb1.112xlarge")
    assert instance_type_for("4vcpu_6gb_32gb", 4, 6144, overrides) == "c6i.xlarge"
    assert instance_type_for("256vcpu_1gb_8gb", 256, 1024, overrides) == "u-6tb1.112xlarge"
    sizes = [(t.vcpus, t.memory_mb) for t in BUILTIN_TYPES]
    assert sizes == sorted(sizes), "the table is ordered from the smallest"


def test_a_size_beyond_the_mapping_is_refused_through_capabilities(moto, base_ami):
    provider = provider_for(moto)
    caps = provider.capabilities
    assert caps.size_refusal(vcpus=128, memory_mb=524288, disk_gb=100) == ""
    assert "too large" in caps.size_refusal(vcpus=129, memory_mb=1024, disk_gb=8)
    before = moto.live_instances()
    with pytest.raises(Unsupported) as raised:
        provider.create(spec(preset_id="256vcpu_1gb_8gb", vcpus=256), base_ami, {})
    assert raised.value.capability == "size"
    assert moto.live_instances() == before
    # An override lifts the bound: any type may be named.
    overridden = provider_for(moto, AWS_EC2_INSTANCE_TYPES="256vcpu_1gb_8gb=m6i.32xlarge")
    assert overridden.capabilities.max_vcpus is None


def test_network_policies_beyond_none_are_refused(moto, base_ami):
    provider = provider_for(moto)
    with pytest.raises(Unsupported) as raised:
        provider.create(spec(network=NetworkPolicy(mode="internet")), base_ami, {})
    assert raised.value.capability == "supports_network_internet"


# --- instances ----------------------------------------------------------------------------


def test_the_launch_request_carries_type_network_profile_and_tags(moto, base_ami):
    ec2 = moto.client("ec2")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    group = ec2.create_security_group(GroupName="sbx-launch", Description="t", VpcId=vpc)
    moto.client("iam").create_instance_profile(InstanceProfileName="sandboxes-ssm")
    provider = provider_for(
        moto,
        AWS_EC2_SUBNET_ID=subnet,
        AWS_EC2_SECURITY_GROUP_IDS=group["GroupId"],
        AWS_EC2_INSTANCE_PROFILE="sandboxes-ssm",
        AWS_EC2_HIBERNATION="1",
    )
    instance = running(provider, base_ami, preset_id="2vcpu_4gb_16gb", vcpus=2, memory_mb=4096)
    try:
        raw = described(moto, instance.id)
        assert raw["InstanceType"] == "t3.medium"
        assert raw["SubnetId"] == subnet
        assert [g["GroupId"] for g in raw["SecurityGroups"]] == [group["GroupId"]]
        assert raw["IamInstanceProfile"]["Arn"].endswith("/sandboxes-ssm")
        assert raw["HibernationOptions"] == {"Configured": True}
        tags = {t["Key"]: t["Value"] for t in raw["Tags"]}
        assert {k: tags[META_PREFIX + k] for k in MARKER_KEYS} == instance.metadata
    finally:
        instance.delete()


def test_list_finds_every_sandbox_instance_with_enough_to_rebuild_its_row(moto, base_ami):
    """Orphan detection and adoption read ``list()``: the tags carry the whole marker."""
    provider = provider_for(moto)
    made = running(provider, base_ami)
    foreign = moto.client("ec2").run_instances(ImageId=base_ami, MinCount=1, MaxCount=1)
    foreign_id = foreign["Instances"][0]["InstanceId"]
    try:
        # A process that knows nothing of it (a fresh provider) finds it with its marker.
        listed = {i.id: i for i in provider_for(moto).list()}
        assert made.id in listed
        assert set(MARKER_KEYS) <= set(listed[made.id].metadata)
        assert listed[made.id].metadata["team"] == "platform"
        assert foreign_id not in listed  # not ours: never listed, never acted on
        with pytest.raises(NotFound):
            provider.get(foreign_id)
    finally:
        made.delete()
        moto.client("ec2").terminate_instances(InstanceIds=[foreign_id])
    assert made.id not in {i.id for i in provider.list()}


def test_hibernate_and_resume_where_the_type_supports_it(moto, base_ami):
    provider = provider_for(moto, AWS_EC2_HIBERNATION="1")
    instance = running(provider, base_ami)
    try:
        instance.hibernate()
        assert provider.get(instance.id).status == InstanceStatus.HIBERNATED
        assert described(moto, instance.id)["State"]["Name"] == "stopped"
        with pytest.raises(InvalidState):
            instance.exec("true", timeout=5)
        instance.resume()
        again = provider.get(instance.id)
        assert again.status == InstanceStatus.RUNNING
        assert POWER_TAG not in {t["Key"] for t in described(moto, instance.id)["Tags"]}
        instance.hibernate()
        instance.start()  # start also boots a hibernated instance
        assert provider.get(instance.id).status == InstanceStatus.RUNNING
        instance.hibernate()
        instance.hibernate()  # idempotent
        instance.stop()  # stopping a hibernated instance settles on stopped
        assert provider.get(instance.id).status == InstanceStatus.STOPPED
    finally:
        instance.delete()


def test_hibernate_is_unsupported_for_a_type_without_it_or_when_off(moto, base_ami):
    # moto (like EC2) says a1 instances cannot hibernate: launched without it.
    provider = provider_for(
        moto, AWS_EC2_HIBERNATION="1", AWS_EC2_INSTANCE_TYPES="1vcpu_512mb_4gb=a1.medium"
    )
    instance = running(provider, base_ami)
    off = provider_for(moto)
    try:
        assert not described(moto, instance.id).get("HibernationOptions", {}).get("Configured")
        with pytest.raises(Unsupported, match=r"a1\.medium"):
            instance.hibernate()
        assert not off.capabilities.supports_hibernate
        assert "AWS_EC2_HIBERNATION" in off.capabilities.reason("supports_hibernate")
        with pytest.raises(Unsupported):
            off.get(instance.id).hibernate()
        assert provider.get(instance.id).status == InstanceStatus.RUNNING
    finally:
        instance.delete()


def test_services_are_the_instance_address_and_every_process_sees_them(moto, base_ami):
    provider = provider_for(moto)
    instance = running(provider, base_ami)
    try:
        raw = described(moto, instance.id)
        url = instance.expose_http_service("web", 8080)
        assert url == f"http://{raw['PrivateIpAddress']}:8080"
        other = provider_for(moto, AWS_EC2_SERVICE_ADDRESS="public")  # another process
        services = other.get(instance.id).networking.http_services
        assert [(s.name, s.port, s.url) for s in services] == [
            ("web", 8080, f"http://{raw['PublicIpAddress']}:8080")
        ]
        with pytest.raises(ValueError, match="port"):
            instance.expose_http_service("web", 70000)
        instance.hide_http_service("web")
        assert provider.get(instance.id).networking.http_services == ()
        assert provider.service_address_rule is not None  # addresses come from EC2
    finally:
        instance.delete()


def test_exec_sends_a_run_shell_script_command(moto, base_ami):
    """Request shape only: moto answers Success with empty output and runs nothing."""
    provider = provider_for(moto)
    instance = running(provider, base_ami)
    try:
        on_the_wire: list[dict] = []
        provider.backend.ssm.meta.events.register(
            "provide-client-params.ssm.SendCommand",
            lambda params, **_: on_the_wire.append(params),
        )
        result = instance.exec(["printf", "%s", "a b"], timeout=7, env={"API_KEY": "s3cr3t"})
        assert [p["InstanceIds"] for p in on_the_wire] == [[instance.id]]
        assert on_the_wire[0]["TimeoutSeconds"] == 37
        assert (result.exit_code, result.timed_out) == (0, False)
        commands = moto.client("ssm").list_commands()["Commands"]
        # moto stores the command with more instance ids than were sent; the request
        # itself named one (checked on the wire below).
        mine = [c for c in commands if instance.id in c["InstanceIds"]]
        assert len(mine) == 1
        sent = mine[0]
        assert sent["DocumentName"] == DOCUMENT
        assert sent["Parameters"]["executionTimeout"] == ["37"]
        script = sent["Parameters"]["commands"][0]
        assert f"cd {WORKDIR}" in script
        assert "timeout -s KILL 7 env -- API_KEY=s3cr3t printf %s 'a b'" in script
        with pytest.raises(ValueError, match="not an environment variable name"):
            instance.exec("true", env={"1X": "v"})
        instance.stop()
        with pytest.raises(InvalidState):
            instance.exec("true", timeout=5)
    finally:
        instance.delete()


def test_metrics_come_from_cloudwatch_cpu(moto, base_ami):
    provider = provider_for(moto)
    instance = running(provider, base_ami, preset_id="2vcpu_4gb_16gb", vcpus=2, memory_mb=4096)
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        moto.client("cloudwatch").put_metric_data(
            Namespace="AWS/EC2",
            MetricData=[
                {
                    "MetricName": "CPUUtilization",
                    "Dimensions": [{"Name": "InstanceId", "Value": instance.id}],
                    "Timestamp": now - timedelta(minutes=minutes),
                    "Value": percent,
                    "Unit": "Percent",
                }
                for minutes, percent in ((10, 50.0), (5, 25.0))
            ],
        )
        samples = instance.metrics()
        assert [s.cpu_fraction for s in samples] == [1.0, 0.5]  # of 2 vCPUs
        assert samples[0].time < samples[1].time
        assert all(s.memory_bytes is None for s in samples)
    finally:
        instance.delete()


def test_snapshots_are_amis_and_only_ours_are_deregistered(moto, base_ami):
    provider = provider_for(moto)
    source = running(provider, base_ami)
    made = source.snapshot()
    assert made.ref.startswith("ami-")
    image = moto.client("ec2").describe_images(ImageIds=[made.ref])["Images"][0]
    assert image["State"] == "available"
    assert {t["Key"]: t["Value"] for t in image["Tags"]}[IMAGE_TAG] == source.metadata["sandbox_id"]
    assert provider.get(source.id).status == InstanceStatus.RUNNING
    child = running(provider, made.ref)
    with pytest.raises(Conflict):
        provider.delete_snapshot(made.ref)
    child.delete()
    source.delete()
    provider.delete_snapshot(made.ref)
    assert made.ref not in moto.images()
    with pytest.raises(NotFound):
        provider.create(spec(), made.ref, {})
    # An imported AMI (here one moto ships) is the operator's: its version goes, it stays.
    provider.delete_snapshot(base_ami)
    assert moto.client("ec2").describe_images(ImageIds=[base_ami])["Images"]
    with pytest.raises(NotFound):
        provider.create(spec(), MISSING_AMI, {})


def test_a_just_launched_instance_that_reads_as_missing_is_waited_for(moto, base_ami):
    """EC2's reads are eventually consistent: right after RunInstances, DescribeInstances
    may say the instance does not exist. create waits instead of rolling back."""
    from botocore.exceptions import ClientError

    provider = provider_for(moto)
    launched: list[str] = []

    def after_run(**_):
        launched.append("run")

    def missing_once(**_):
        if launched == ["run"]:
            launched.append("said missing")
            raise ClientError(
                {"Error": {"Code": "InvalidInstanceID.NotFound", "Message": "not yet"}},
                "DescribeInstances",
            )

    events = provider.backend.ec2.meta.events
    events.register("after-call.ec2.RunInstances", after_run)
    events.register("before-call.ec2.DescribeInstances", missing_once)
    s = spec()
    instance = provider.create(s, base_ami, marker(s))
    try:
        assert launched == ["run", "said missing"]
        instance.start()
        assert provider.get(instance.id).status == InstanceStatus.RUNNING
        assert [i.id for i in provider.list() if i.metadata["sandbox_id"] == s.sandbox_id] == [
            instance.id
        ]
    finally:
        instance.delete()


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("InvalidInstanceID.NotFound", 400, NotFound),
        ("InvalidAMIID.Malformed", 400, NotFound),
        ("InsufficientInstanceCapacity", 500, QuotaExceeded),
        ("VcpuLimitExceeded", 400, QuotaExceeded),
        ("RequestLimitExceeded", 503, Unavailable),
        ("InternalError", 500, Unavailable),
        ("IncorrectInstanceState", 400, InvalidState),
        ("UnauthorizedOperation", 403, OperationFailed),
    ],
)
def test_aws_errors_become_typed_provider_errors(code, status, expected):
    from botocore.exceptions import ClientError

    raised = ClientError(
        {
            "Error": {"Code": code, "Message": "with key very-secret-key inside"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "RunInstances",
    )
    error = typed_error(raised, "launch", ref="i-1", secrets=("very-secret-key",))
    assert type(error) is expected
    assert code in error.message
    assert "very-secret-key" not in error.message


def test_relabel_hands_the_instance_over_without_ever_losing_its_sandbox_id(moto, base_ami):
    provider = provider_for(moto)
    s = spec()
    instance = provider.create(s, base_ami, {**marker(s), "pool": "3"})
    try:
        seen: list[set[str]] = []
        for operation in ("CreateTags", "DeleteTags"):
            provider.backend.ec2.meta.events.register(
                f"after-call.ec2.{operation}",
                lambda **_: seen.append({t["Key"] for t in described(moto, instance.id)["Tags"]}),
            )
        claimed = marker(spec())
        provider.get(instance.id).relabel(claimed)
        assert len(seen) == 2  # the new tags, then the old keys' removal
        assert all(META_PREFIX + "sandbox_id" in keys for keys in seen)
        assert provider.get(instance.id).metadata == claimed  # "pool" is gone
        tags = {t["Key"]: t["Value"] for t in described(moto, instance.id)["Tags"]}
        assert tags["Name"] == f"sandbox {claimed['sandbox_id']}"
        with pytest.raises(ValueError, match="sandbox_id"):
            instance.relabel({"team": "x"})
    finally:
        instance.delete()
