"""The differences between PVE containers and VMs that the rest of the code asks about."""

from __future__ import annotations

import re
from dataclasses import dataclass

from providers.base import InstanceStatus

_DISK_KEYS = ("scsi0", "virtio0", "sata0", "ide0")
_SIZE = re.compile(r"size=(\d+(?:\.\d+)?)([KMGT]?)")
_UNITS = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0, "": 1 / 1024**3}


@dataclass(frozen=True)
class Kind:
    name: str  # the API's path segment: lxc | qemu
    provider: str  # pve-lxc | pve-vm
    label: str  # how PVE's messages call it: CT | VM
    name_key: str  # the config key of the guest's name: hostname | name

    @property
    def is_lxc(self) -> bool:
        return self.name == "lxc"

    def path(self, node: str, vmid: int, *rest: str) -> str:
        return "/".join([f"nodes/{node}/{self.name}/{vmid}", *rest])

    def disk_key(self, config: dict) -> str:
        if self.is_lxc:
            return "rootfs"
        for key in _DISK_KEYS:
            value = str(config.get(key, ""))
            if value and "media=cdrom" not in value:
                return key
        return "scsi0"

    def disk_volume(self, config: dict) -> str:
        return str(config.get(self.disk_key(config), "")).split(",")[0]

    def disk_gb(self, config: dict) -> float:
        match = _SIZE.search(str(config.get(self.disk_key(config), "")))
        return float(match[1]) * _UNITS[match[2]] if match else 0.0

    def status(self, current: dict) -> InstanceStatus:
        """A sandbox status from ``status/current`` or a ``/cluster/resources`` row."""
        lock = current.get("lock") or ""
        state = current.get("status")
        if lock == "create":
            return InstanceStatus.CREATING
        if state == "running":
            if not self.is_lxc and current.get("qmpstatus") in ("paused", "suspended"):
                return InstanceStatus.PAUSED
            if self.is_lxc and lock == "suspended":
                return InstanceStatus.PAUSED
            return InstanceStatus.RUNNING
        if state == "stopped":
            return InstanceStatus.HIBERNATED if lock == "suspended" else InstanceStatus.STOPPED
        return InstanceStatus.ERROR


LXC = Kind("lxc", "pve-lxc", "CT", "hostname")
QEMU = Kind("qemu", "pve-vm", "VM", "name")


def dns_label(value: str, fallback: str) -> str:
    """A guest name PVE accepts (DNS label) derived from a sandbox id."""
    label = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:63].strip("-")
    return label or fallback
