"""Settings of the local provider, read from the configuration mapping (the environment).

Every key starts with ``LOCAL_SANDBOX_`` (config/settings.py passes exactly those on) and
is documented in docs/providers/local.md.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from providers.addresses import parse_networks
from providers.local import idmap
from providers.local.cgroups import (
    Totals,
    default_total_memory_mb,
    default_total_pids,
    host_memory_mb,
    host_pid_space,
)
from providers.local.network import NetworkSettings
from providers.settings import int_setting

_CGROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def default_root() -> Path:
    """Where sandboxes live when nothing says otherwise (Django passes its data dir)."""
    if os.geteuid() == 0:
        return Path("/var/lib/sandboxes/local")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sandboxes" / "local"


#: The environment variables ``LocalConfig.from_mapping`` reads (the provider's config_keys).
CONFIG_KEYS: tuple[str, ...] = (
    "LOCAL_SANDBOX_ROOT",
    "LOCAL_SANDBOX_BWRAP",
    "LOCAL_SANDBOX_CGROUP_PARENT",
    "LOCAL_SANDBOX_HOST_USR",
    "LOCAL_SANDBOX_ID_RANGE",
    "LOCAL_SANDBOX_MAX_LAYERS",
    "LOCAL_SANDBOX_MIN_FREE_MB",
    "LOCAL_SANDBOX_PIDS_MAX",
    "LOCAL_SANDBOX_TOTAL_MEMORY_MB",
    "LOCAL_SANDBOX_TOTAL_PIDS",
    "LOCAL_SANDBOX_PASTA",
    "LOCAL_SANDBOX_DNS",
    "LOCAL_SANDBOX_NET_NAMESPACE",
    "LOCAL_SANDBOX_NET_DENY",
)


@dataclass(frozen=True)
class LocalConfig:
    root: Path
    cgroup_parent: str = "sandboxes-local"
    #: Snapshot layers a version may stack before a snapshot flattens them into one.
    max_layers: int = 16
    pids_max: int = 4096
    #: pids.max of the parent cgroup: all sandboxes together. 0: derived from the host
    #: (75% of pid_max; see cgroups.default_total_pids).
    total_pids: int = 0
    #: Memory limit of the parent cgroup, and the memory creates and starts may commit.
    #: 0: derived from the host (MemTotal less max(1 GiB, 10%)).
    total_memory_mb: int = 0
    #: Refuse to create, start or snapshot when the root's file system has less free.
    min_free_mb: int = 256
    bwrap: str = "bwrap"
    #: The host directory every sandbox sees (copy-on-write) as its /usr.
    host_usr: Path = Path("/usr")
    #: Host ids for sandboxes' user namespaces (see idmap.py).
    id_range: idmap.IdRange = field(default_factory=idmap.default)
    #: Outbound networking (pasta, resolvers, the namespace traffic leaves from, denials).
    network: NetworkSettings = field(default_factory=NetworkSettings)

    @classmethod
    def from_mapping(cls, config: Mapping[str, str]) -> LocalConfig:
        root = Path(config.get("LOCAL_SANDBOX_ROOT", "").strip() or default_root())
        if not root.is_absolute():
            raise ValueError(f"LOCAL_SANDBOX_ROOT must be an absolute path, not {str(root)!r}")
        parent = config.get("LOCAL_SANDBOX_CGROUP_PARENT", "").strip() or cls.cgroup_parent
        if not _CGROUP_NAME.fullmatch(parent):
            raise ValueError(
                "LOCAL_SANDBOX_CGROUP_PARENT must be one cgroup name "
                f"(letters, digits, '-', '_', '.'), not {parent!r}"
            )
        host_usr = Path(config.get("LOCAL_SANDBOX_HOST_USR", "").strip() or cls.host_usr)
        id_range = config.get("LOCAL_SANDBOX_ID_RANGE", "").strip()
        if any(c in str(root) for c in ",:\\"):
            # overlayfs mount options separate paths with ':' and options with ','.
            raise ValueError("LOCAL_SANDBOX_ROOT must not contain ',', ':' or '\\'")
        made = cls(
            root=root.resolve(),
            cgroup_parent=parent,
            max_layers=int_setting(config, "LOCAL_SANDBOX_MAX_LAYERS", cls.max_layers, high=64),
            pids_max=int_setting(config, "LOCAL_SANDBOX_PIDS_MAX", cls.pids_max, high=4_194_304),
            total_pids=int_setting(
                config, "LOCAL_SANDBOX_TOTAL_PIDS", cls.total_pids, low=16, high=4_194_304
            ),
            total_memory_mb=int_setting(
                config, "LOCAL_SANDBOX_TOTAL_MEMORY_MB", cls.total_memory_mb, low=16, high=2**32
            ),
            min_free_mb=int_setting(
                config, "LOCAL_SANDBOX_MIN_FREE_MB", cls.min_free_mb, low=0, high=10**7
            ),
            bwrap=config.get("LOCAL_SANDBOX_BWRAP", "").strip() or cls.bwrap,
            host_usr=host_usr.resolve(),
            id_range=idmap.parse(id_range) if id_range else idmap.default(),
            network=network_settings(config),
        )
        if made.root == made.host_usr or made.host_usr in made.root.parents:
            # Every sandbox sees the host's /usr: sandboxes kept under it would see each other.
            raise ValueError(
                f"LOCAL_SANDBOX_ROOT ({made.root}) must not be inside {made.host_usr}, "
                "which every sandbox can read"
            )
        return made

    def totals(self) -> Totals:
        """The caps on all sandboxes together: the settings, or what the host can spare."""
        return Totals(
            pids=self.total_pids or default_total_pids(host_pid_space()),
            memory_mb=self.total_memory_mb or default_total_memory_mb(host_memory_mb()),
        )


def network_settings(config: Mapping[str, str]) -> NetworkSettings:
    """``LOCAL_SANDBOX_PASTA``, ``LOCAL_SANDBOX_DNS``, ``LOCAL_SANDBOX_NET_NAMESPACE`` and
    ``LOCAL_SANDBOX_NET_DENY``; ValueError naming the setting."""
    dns = []
    for part in config.get("LOCAL_SANDBOX_DNS", "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            address = ipaddress.ip_address(part)
        except ValueError:
            raise ValueError(f"LOCAL_SANDBOX_DNS: {part!r} is not an IPv4 address") from None
        if address.version != 4:
            raise ValueError(f"LOCAL_SANDBOX_DNS: {part!r} is not an IPv4 address")
        dns.append(str(address))
    namespace = config.get("LOCAL_SANDBOX_NET_NAMESPACE", "").strip()
    if namespace and not namespace.startswith("/"):
        namespace = f"/run/netns/{namespace}"  # a name, as `ip netns` gives them
    deny = parse_networks(config.get("LOCAL_SANDBOX_NET_DENY", ""), "LOCAL_SANDBOX_NET_DENY")
    if any(n.version != 4 for n in deny):
        raise ValueError("LOCAL_SANDBOX_NET_DENY: IPv4 CIDRs only (sandboxes have no IPv6)")
    return NetworkSettings(
        pasta=config.get("LOCAL_SANDBOX_PASTA", "").strip() or "pasta",
        dns=tuple(dns),
        namespace=Path(namespace) if namespace else None,
        deny=tuple(deny),
    )
