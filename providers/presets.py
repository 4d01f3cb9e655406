"""Preset ids: machine sizes written as ``<cpu>_<memory>_<disk>``, e.g. ``4vcpu_16gb_48gb``.

Every size has exactly one spelling: memory is written in ``gb`` when it is a whole
number of GiB and in ``mb`` otherwise (``1vcpu_512mb_8gb``), numbers have no leading
zeros. That makes ids comparable as strings and round-trip exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from providers.errors import InvalidPresetId

_NUMBER = r"[1-9][0-9]{0,5}"
PRESET_ID_PATTERN = rf"(?:{_NUMBER})vcpu_(?:{_NUMBER})(?:mb|gb)_(?:{_NUMBER})gb"
_PRESET_RE = re.compile(
    rf"(?P<vcpus>{_NUMBER})vcpu_(?P<memory>{_NUMBER})(?P<unit>mb|gb)_(?P<disk>{_NUMBER})gb"
)
_MAX = 999_999


@dataclass(frozen=True)
class PresetSize:
    """The size a preset id stands for."""

    vcpus: int
    memory_mb: int
    disk_gb: int

    @property
    def id(self) -> str:
        return format_preset_id(self.vcpus, self.memory_mb, self.disk_gb)


def format_preset_id(vcpus: int, memory_mb: int, disk_gb: int) -> str:
    """Return the canonical id of a size; raise InvalidPresetId for an impossible size."""
    for name, value in (("vcpus", vcpus), ("memory_mb", memory_mb), ("disk_gb", disk_gb)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidPresetId(f"{name} must be a positive whole number, not {value!r}")
    memory, unit = (memory_mb // 1024, "gb") if memory_mb % 1024 == 0 else (memory_mb, "mb")
    if max(vcpus, memory, disk_gb) > _MAX:
        raise InvalidPresetId("preset sizes are limited to six digits per part")
    return f"{vcpus}vcpu_{memory}{unit}_{disk_gb}gb"


def parse_preset_id(text: str) -> PresetSize:
    """Parse ``4vcpu_16gb_48gb``; raise InvalidPresetId naming what is wrong."""
    if not isinstance(text, str):
        raise InvalidPresetId(f"a preset id is a string, not {type(text).__name__}")
    match = _PRESET_RE.fullmatch(text)
    if match is None:
        raise InvalidPresetId(
            f"{text!r} is not a preset id; expected <n>vcpu_<n>gb_<n>gb, e.g. 4vcpu_16gb_48gb"
        )
    memory = int(match["memory"])
    if match["unit"] == "gb":
        memory_mb = memory * 1024
    elif memory % 1024 == 0:
        raise InvalidPresetId(f"{text!r}: write {memory}mb as {memory // 1024}gb")
    else:
        memory_mb = memory
    return PresetSize(vcpus=int(match["vcpus"]), memory_mb=memory_mb, disk_gb=int(match["disk"]))
