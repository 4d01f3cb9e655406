"""Proxmox VE providers: ``pve-lxc`` (containers) and ``pve-vm`` (QEMU VMs).

See docs/providers/pve.md. Modules: ``settings`` (PVE_* variables), ``client`` (proxmoxer
session, timeouts, retries, typed errors), ``tasks`` (UPID polling), ``placement``,
``vmids`` (concurrency-safe VMID allocation), ``metadata`` (description/tags),
``guest_exec`` and ``agent`` (running commands in guests), ``instance``, ``provider``.
"""

from providers.pve.provider import PveLxcProvider, PveProvider, PveVmProvider

__all__ = ["PveLxcProvider", "PveProvider", "PveVmProvider"]
