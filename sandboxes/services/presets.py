"""Preset ids from sizes (the id is the size: ``4vcpu_16gb_48gb``)."""

from __future__ import annotations

from providers.errors import InvalidPresetId
from providers.presets import format_preset_id
from sandboxes.services.errors import InvalidInput


def preset_id_for(vcpus: int, memory_mb: int, disk_gb: int) -> str:
    try:
        return format_preset_id(vcpus, memory_mb, disk_gb)
    except InvalidPresetId as exc:
        raise InvalidInput(str(exc)) from None
