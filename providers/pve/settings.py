"""PVE provider settings, read from the environment (``PVE_*``) and checked up front."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from providers.addresses import AddressRule, parse_networks
from providers.presets import parse_preset_id
from providers.settings import FALSE_WORDS, TRUE_WORDS, flag_setting, int_setting, number_setting

#: The environment variables ``PveSettings.from_config`` reads (the providers' config_keys).
CONFIG_KEYS: tuple[str, ...] = (
    "PVE_API_URL",
    "PVE_API_TOKEN",
    "PVE_VERIFY_TLS",
    "PVE_NODE",
    "PVE_STORAGE",
    "PVE_BRIDGE",
    "PVE_VMID_RANGE",
    "PVE_PUBLIC_DOMAIN",
    "PVE_LXC_SUSPEND",
    "PVE_LXC_AGENT_PORT",
    "PVE_GUEST_WORKDIR",
    "PVE_HTTP_TIMEOUT",
    "PVE_TASK_TIMEOUT",
    "PVE_LOCK_WAIT",
    "PVE_GUEST_CIDRS",
    "PVE_MAX_VCPUS",
    "PVE_MAX_MEMORY_MB",
    "PVE_MAX_DISK_GB",
    "PVE_FULL_CLONE_PRESETS",
)

#: Accept guest addresses on loopback. Not an environment variable (the control plane's
#: settings pass on the providers' ``config_keys`` only, and this is none of them): only
#: the PVE simulator's configuration carries it, because its guests live on the test
#: host's loopback.
LOOPBACK_GUESTS_KEY = "pve-simulator:loopback-guests"

DEFAULT_VMID_RANGE = (200000, 299999)
_TOKEN = re.compile(
    r"(?P<user>[^!=\s]+@[^!=\s]+)!(?P<name>[A-Za-z][A-Za-z0-9._-]*)=(?P<secret>\S+)"
)
_DNS = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}")


@dataclass(frozen=True)
class PveSettings:
    host: str  # host:port, as proxmoxer takes it
    user: str  # user@realm
    token_name: str
    token_secret: str = field(repr=False)
    #: True, False, or the path of a CA bundle to verify the API's certificate with.
    verify_tls: bool | str = True
    node: str = ""
    storage: str = ""
    bridge: str = ""
    vmid_range: tuple[int, int] = DEFAULT_VMID_RANGE
    public_domain: str = ""
    lxc_suspend: bool = False
    agent_port: int = 7391
    guest_workdir: str = "/root/work"
    #: Seconds for one ordinary API request; clones, destroys and other slow POSTs get
    #: at least ``SLOW_CALL_TIMEOUT`` (proxmoxer's own default of 5 s is far too short).
    http_timeout: float = 30.0
    #: Longest wait for one PVE task (a full clone of a big disk can take many minutes).
    task_timeout: float = 1800.0
    #: How long to keep retrying "CT is locked" / "can't lock file" before giving up.
    lock_wait: float = 60.0
    #: What a guest's reported address must be before the control plane connects to it
    #: (exec agent, service URLs, the service proxy); ``PVE_GUEST_CIDRS`` narrows it.
    guest_addresses: AddressRule = field(default_factory=AddressRule)
    #: The largest guest to make (0: the largest online node's CPUs and memory, as last
    #: listed; no disk limit). Presets beyond these are not offered on PVE.
    max_vcpus: int = 0
    max_memory_mb: int = 0
    max_disk_gb: int = 0
    #: Presets (ids) whose sandboxes are full clones instead of linked ones
    #: (``PVE_FULL_CLONE_PRESETS``): a PVE option, so it lives here and not on the preset.
    full_clone_presets: frozenset[str] = frozenset()

    def full_clone(self, preset_id: str) -> bool:
        """True when sandboxes of ``preset_id`` are made as full clones."""
        return preset_id in self.full_clone_presets

    def __repr__(self) -> str:  # never the secret
        return f"PveSettings(host={self.host!r}, token={self.user}!{self.token_name}=***)"

    @property
    def token_id(self) -> str:
        return f"{self.user}!{self.token_name}"

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> PveSettings:
        url = config.get("PVE_API_URL", "").strip()
        token = config.get("PVE_API_TOKEN", "").strip()
        if not url:
            raise ValueError("PVE_API_URL is not set (e.g. https://pve1.example.org:8006)")
        if not token:
            raise ValueError("PVE_API_TOKEN is not set (user@realm!tokenid=secret)")
        match = _TOKEN.fullmatch(token)
        if match is None:
            # The value is a secret: say what is wrong without repeating it.
            raise ValueError(
                "PVE_API_TOKEN must look like user@realm!tokenid=secret "
                "(as PVE shows it when the token is made)"
            )
        return cls(
            host=_host(url),
            user=match["user"],
            token_name=match["name"],
            token_secret=match["secret"],
            verify_tls=_verify(config.get("PVE_VERIFY_TLS", "")),
            node=config.get("PVE_NODE", "").strip(),
            storage=config.get("PVE_STORAGE", "").strip(),
            bridge=config.get("PVE_BRIDGE", "").strip(),
            vmid_range=_vmid_range(config.get("PVE_VMID_RANGE", "")),
            public_domain=_domain(config.get("PVE_PUBLIC_DOMAIN", "")),
            lxc_suspend=flag_setting(config, "PVE_LXC_SUSPEND"),
            agent_port=int_setting(config, "PVE_LXC_AGENT_PORT", 7391, high=65535),
            guest_workdir=_workdir(config.get("PVE_GUEST_WORKDIR", "")),
            http_timeout=number_setting(config, "PVE_HTTP_TIMEOUT", 30.0, low=0.1, high=3600),
            task_timeout=number_setting(config, "PVE_TASK_TIMEOUT", 1800.0, low=1, high=86400),
            lock_wait=number_setting(config, "PVE_LOCK_WAIT", 60.0, low=0, high=3600),
            max_vcpus=int_setting(config, "PVE_MAX_VCPUS", 0, low=0, high=4096),
            max_memory_mb=int_setting(config, "PVE_MAX_MEMORY_MB", 0, low=0, high=1 << 30),
            max_disk_gb=int_setting(config, "PVE_MAX_DISK_GB", 0, low=0, high=1 << 20),
            full_clone_presets=_preset_ids(config.get("PVE_FULL_CLONE_PRESETS", "")),
            guest_addresses=AddressRule(
                networks=parse_networks(config.get("PVE_GUEST_CIDRS", ""), "PVE_GUEST_CIDRS"),
                setting="PVE_GUEST_CIDRS",
                allow_loopback=config.get(LOOPBACK_GUESTS_KEY) == "1",
            ),
        )


def _host(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme != "https":
        raise ValueError("PVE_API_URL must be an https:// URL (PVE's API only speaks HTTPS)")
    if not parts.hostname:
        raise ValueError("PVE_API_URL has no host name")
    if parts.path not in ("", "/", "/api2/json", "/api2/json/"):
        raise ValueError("PVE_API_URL is the server's address, e.g. https://pve1.example.org:8006")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or 8006}"


def _verify(value: str) -> bool | str:
    value = value.strip()
    if not value or value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    if not Path(value).is_file():
        raise ValueError(f"PVE_VERIFY_TLS: {value} is neither true/false nor a CA bundle file")
    return value


def _vmid_range(value: str) -> tuple[int, int]:
    value = value.strip()
    if not value:
        return DEFAULT_VMID_RANGE
    match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", value)
    if not match:
        raise ValueError("PVE_VMID_RANGE must look like 200000-299999")
    low, high = int(match[1]), int(match[2])
    if not 100 <= low <= high <= 999_999_999:
        raise ValueError("PVE_VMID_RANGE must lie within 100-999999999, low end first")
    return low, high


def _domain(value: str) -> str:
    value = value.strip().lower().rstrip(".")
    if value and not _DNS.fullmatch(value):
        raise ValueError(f"PVE_PUBLIC_DOMAIN: {value!r} is not a DNS name")
    return value


def _workdir(value: str) -> str:
    value = value.strip() or "/root/work"
    if not value.startswith("/") or value.rstrip("/").count("/") < 2 or ".." in value:
        raise ValueError(
            "PVE_GUEST_WORKDIR must be an absolute path two levels deep, e.g. /root/work"
        )
    return value.rstrip("/")


def _preset_ids(value: str) -> frozenset[str]:
    """``PVE_FULL_CLONE_PRESETS``: comma-separated preset ids (``2vcpu_4gb_16gb,...``)."""
    ids = frozenset(part.strip() for part in value.split(",") if part.strip())
    for preset_id in ids:
        try:
            parse_preset_id(preset_id)
        except ValueError as exc:
            raise ValueError(f"PVE_FULL_CLONE_PRESETS: {exc}") from None
    return ids
