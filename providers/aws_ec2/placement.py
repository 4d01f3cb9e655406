"""Which EC2 instance type a preset runs on.

A preset is a size (``4vcpu_16gb_48gb``); EC2 sells sizes as instance types. The
built-in mapping picks the smallest type of ``BUILTIN_TYPES`` with at least the preset's
vCPUs and memory (ordered by vCPUs, then memory: the cheapest that fits in these general
purpose families). ``AWS_EC2_INSTANCE_TYPES`` names a type for a preset outright
(``4vcpu_16gb_48gb=m7i.xlarge,...``), for other families, Graviton, or an exact fit. A
preset bigger than every built-in type and not overridden is refused, with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from providers.presets import parse_preset_id


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_mb: int


#: The built-in mapping (docs/providers/aws-ec2.md shows it as a table). Burstable t3 up
#: to 8 vCPUs / 32 GiB, then general purpose m6i. Whether a type supports hibernation is
#: asked of EC2 (DescribeInstanceTypes), not assumed: the largest m6i do not.
BUILTIN_TYPES: tuple[InstanceType, ...] = (
    InstanceType("t3.nano", 2, 512),
    InstanceType("t3.micro", 2, 1024),
    InstanceType("t3.small", 2, 2048),
    InstanceType("t3.medium", 2, 4096),
    InstanceType("t3.large", 2, 8192),
    InstanceType("t3.xlarge", 4, 16384),
    InstanceType("t3.2xlarge", 8, 32768),
    InstanceType("m6i.4xlarge", 16, 65536),
    InstanceType("m6i.8xlarge", 32, 131072),
    InstanceType("m6i.12xlarge", 48, 196608),
    InstanceType("m6i.16xlarge", 64, 262144),
    InstanceType("m6i.24xlarge", 96, 393216),
    InstanceType("m6i.32xlarge", 128, 524288),
)

_TYPE_NAME = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9]+")


def parse_overrides(text: str) -> dict[str, str]:
    """``AWS_EC2_INSTANCE_TYPES``: ``<preset id>=<instance type>`` pairs, comma-separated."""
    overrides: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        preset_id, sep, type_name = (p.strip() for p in item.partition("="))
        if not sep:
            raise ValueError(
                f"AWS_EC2_INSTANCE_TYPES: {item!r} is not <preset>=<instance type> "
                "(e.g. 4vcpu_16gb_48gb=m6i.xlarge)"
            )
        try:
            canonical = parse_preset_id(preset_id).id
        except ValueError as exc:
            raise ValueError(f"AWS_EC2_INSTANCE_TYPES: {exc}") from None
        if canonical != preset_id:
            raise ValueError(f"AWS_EC2_INSTANCE_TYPES: write {preset_id!r} as {canonical!r}")
        if not _TYPE_NAME.fullmatch(type_name):
            raise ValueError(f"AWS_EC2_INSTANCE_TYPES: {type_name!r} is not an instance type")
        overrides[preset_id] = type_name
    return overrides


def instance_type_for(
    preset_id: str, vcpus: int, memory_mb: int, overrides: dict[str, str] | None = None
) -> str | None:
    """The instance type for a preset; None when nothing offered fits (see ``refusal``)."""
    if overrides and preset_id in overrides:
        return overrides[preset_id]
    for candidate in BUILTIN_TYPES:
        if candidate.vcpus >= vcpus and candidate.memory_mb >= memory_mb:
            return candidate.name
    return None


def refusal(preset_id: str, vcpus: int, memory_mb: int, overrides: dict[str, str]) -> str:
    """Why this size cannot run here ('' when it can)."""
    if instance_type_for(preset_id, vcpus, memory_mb, overrides) is not None:
        return ""
    largest = BUILTIN_TYPES[-1]
    return (
        f"no built-in instance type has {vcpus} vCPUs and {memory_mb} MiB (the largest is "
        f"{largest.name}: {largest.vcpus} vCPUs, {largest.memory_mb} MiB); name one for "
        f"{preset_id} in AWS_EC2_INSTANCE_TYPES"
    )
