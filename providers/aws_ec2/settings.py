"""The ``aws-ec2`` provider's settings (environment variables), read in one place.

Every variable the provider reads is in ``CONFIG_KEYS``: the registry passes exactly
those (and nothing else of the environment) to ``AwsEc2Provider.from_config``. They are
documented in docs/providers/aws-ec2.md and docs/configuration.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

from providers.aws_ec2.placement import parse_overrides
from providers.settings import flag_setting, number_setting

CONFIG_KEYS: tuple[str, ...] = (
    "AWS_EC2_REGION",
    "AWS_EC2_ENDPOINT_URL",
    "AWS_EC2_SUBNET_ID",
    "AWS_EC2_SECURITY_GROUP_IDS",
    "AWS_EC2_INSTANCE_PROFILE",
    "AWS_EC2_INSTANCE_TYPES",
    "AWS_EC2_HIBERNATION",
    "AWS_EC2_SERVICE_ADDRESS",
    "AWS_EC2_BOOT_TIMEOUT",
    "AWS_EC2_IMAGE_TIMEOUT",
    "AWS_EC2_POLL_INTERVAL",
    # Credentials for this provider alone. When unset, boto3's own chain finds them: the
    # process's AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE, ~/.aws, an
    # instance role. (The control plane never passes the process's AWS_* variables on
    # itself: boto3 reads those where it always does.)
    "AWS_EC2_PROFILE",
    "AWS_EC2_ACCESS_KEY_ID",
    "AWS_EC2_SECRET_ACCESS_KEY",
    "AWS_EC2_SESSION_TOKEN",
)

_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}")
_SUBNET = re.compile(r"subnet-[0-9a-f]{8,17}")
_GROUP = re.compile(r"sg-[0-9a-f]{8,17}")
_PROFILE = re.compile(r"[\w+=,.@:/-]{1,2048}")
ADDRESS_CHOICES = ("private", "public")


@dataclass(frozen=True)
class AwsEc2Settings:
    region: str
    endpoint_url: str | None = None
    subnet_id: str | None = None
    security_group_ids: tuple[str, ...] = ()
    #: An instance profile's name or ARN; it must allow SSM (AmazonSSMManagedInstanceCore).
    instance_profile: str | None = None
    #: preset id -> instance type, beside the built-in mapping (``placement``).
    instance_types: Mapping[str, str] = field(default_factory=dict)
    hibernation: bool = False
    service_address: str = "private"
    boot_timeout: float = 600.0
    image_timeout: float = 3600.0
    poll_interval: float = 2.0
    profile: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never appear in a message."""
        return tuple(s for s in (self.secret_access_key, self.session_token) if s)


def _optional(config: Mapping[str, str], key: str) -> str | None:
    return config.get(key, "").strip() or None


def _matching(config: Mapping[str, str], key: str, pattern: re.Pattern, what: str) -> str | None:
    value = _optional(config, key)
    if value is not None and not pattern.fullmatch(value):
        raise ValueError(f"{key}={value!r} is not {what}")
    return value


def read_settings(config: Mapping[str, str]) -> AwsEc2Settings:
    """The settings from ``config``; ValueError naming the variable when one is wrong."""
    region = _matching(config, "AWS_EC2_REGION", _REGION, "an AWS region (e.g. eu-west-1)")
    if region is None:
        raise ValueError("AWS_EC2_REGION is not set")
    endpoint = _optional(config, "AWS_EC2_ENDPOINT_URL")
    if endpoint is not None:
        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"AWS_EC2_ENDPOINT_URL must be an http(s) URL, not {endpoint!r}")
    groups = tuple(
        part.strip()
        for part in config.get("AWS_EC2_SECURITY_GROUP_IDS", "").split(",")
        if part.strip()
    )
    for group in groups:
        if not _GROUP.fullmatch(group):
            raise ValueError(f"AWS_EC2_SECURITY_GROUP_IDS: {group!r} is not a security group id")
    address = (_optional(config, "AWS_EC2_SERVICE_ADDRESS") or "private").lower()
    if address not in ADDRESS_CHOICES:
        raise ValueError(f"AWS_EC2_SERVICE_ADDRESS={address!r} must be private or public")
    key_id = _optional(config, "AWS_EC2_ACCESS_KEY_ID")
    secret = _optional(config, "AWS_EC2_SECRET_ACCESS_KEY")
    if bool(key_id) != bool(secret):
        raise ValueError(
            "set AWS_EC2_ACCESS_KEY_ID and AWS_EC2_SECRET_ACCESS_KEY together, or neither"
        )
    return AwsEc2Settings(
        region=region,
        endpoint_url=endpoint.rstrip("/") if endpoint else None,
        subnet_id=_matching(config, "AWS_EC2_SUBNET_ID", _SUBNET, "a subnet id"),
        security_group_ids=groups,
        instance_profile=_matching(
            config, "AWS_EC2_INSTANCE_PROFILE", _PROFILE, "an instance profile name or ARN"
        ),
        instance_types=parse_overrides(config.get("AWS_EC2_INSTANCE_TYPES", "")),
        hibernation=flag_setting(config, "AWS_EC2_HIBERNATION", False),
        service_address=address,
        boot_timeout=number_setting(config, "AWS_EC2_BOOT_TIMEOUT", 600.0, low=1, high=86_400),
        image_timeout=number_setting(config, "AWS_EC2_IMAGE_TIMEOUT", 3600.0, low=1, high=86_400),
        poll_interval=number_setting(config, "AWS_EC2_POLL_INTERVAL", 2.0, low=0.001, high=60),
        profile=_optional(config, "AWS_EC2_PROFILE"),
        access_key_id=key_id,
        secret_access_key=secret,
        session_token=_optional(config, "AWS_EC2_SESSION_TOKEN"),
    )
