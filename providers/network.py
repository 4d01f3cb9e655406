"""Outbound network policies: what a sandbox may reach (plain data; see docs/network.md).

A policy is one of three modes:

* ``none``: no network beyond the sandbox's own loopback (the default);
* ``internet``: public addresses only. Never the host itself, its loopback services, the
  control plane, private, shared (CGNAT), link-local (cloud metadata: 169.254.169.254),
  documentation, benchmark, multicast or reserved ranges;
* ``allowlist``: only the listed CIDRs and host names (resolved when the sandbox starts),
  and only where they are public: an allowlist narrows ``internet``, never widens it.

The control plane computes the effective policy (preset, then team, then sandbox
override: ``sandboxes/services/network.py``) and hands it to the provider in
``InstanceSpec.network``. This module is plain Python: providers and the services share it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

NONE = "none"
INTERNET = "internet"
ALLOWLIST = "allowlist"
MODES = (NONE, INTERNET, ALLOWLIST)

#: The most entries an allowlist may hold (each becomes a rule or a DNS lookup at start).
MAX_ENTRIES = 64

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: IPv4 ranges that are not the public internet (IANA's special-purpose registry, the
#: ranges Python's ``ipaddress`` does not call global). Every enforcement refuses them.
NON_PUBLIC_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local: cloud metadata services (169.254.169.254)
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
    )
)

_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class NetworkPolicy:
    """A sandbox's outbound policy: a mode, and for ``allowlist`` its entries."""

    mode: str = NONE
    #: CIDRs (``93.184.216.0/24``, a bare address is a /32) and host names
    #: (``pypi.org``), normalised; empty unless ``mode`` is ``allowlist``.
    allow: tuple[str, ...] = ()

    @property
    def networked(self) -> bool:
        return self.mode != NONE

    def networks(self) -> tuple[IPNetwork, ...]:
        return tuple(n for n in (_as_network(e) for e in self.allow) if n is not None)

    def host_names(self) -> tuple[str, ...]:
        return tuple(e for e in self.allow if _as_network(e) is None)

    def as_dict(self) -> dict:
        return {"mode": self.mode, "allow": list(self.allow)}

    @classmethod
    def from_dict(cls, data: Mapping | None) -> NetworkPolicy:
        """A policy from stored data (a state file, a label); unknown data is ``none``."""
        if not data:
            return cls()
        try:
            return make_policy(str(data.get("mode") or NONE), data.get("allow") or ())
        except ValueError:
            return cls()

    def describe(self) -> str:
        if self.mode == ALLOWLIST:
            return f"allowlist: {', '.join(self.allow) or '(nothing)'}"
        return self.mode


def make_policy(mode: str, allow: Iterable[str] = ()) -> NetworkPolicy:
    """A validated policy; ValueError with a message for people otherwise."""
    if mode not in MODES:
        raise ValueError(f"network policy must be one of {', '.join(MODES)}, not {mode!r}")
    if isinstance(allow, str):
        raise ValueError("the allowlist is a list of CIDRs and host names")
    entries = [normalise_entry(str(e)) for e in allow]
    if mode != ALLOWLIST:
        if entries:
            raise ValueError(f"only the allowlist policy takes entries, not {mode!r}")
        return NetworkPolicy(mode=mode)
    if not entries:
        raise ValueError("an allowlist needs at least one CIDR or host name")
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"an allowlist holds at most {MAX_ENTRIES} entries")
    return NetworkPolicy(mode=mode, allow=tuple(dict.fromkeys(entries)))


def normalise_entry(entry: str) -> str:
    """One allowlist entry: a public IPv4 CIDR or address, or a host name."""
    text = entry.strip().lower().rstrip(".")
    if not text:
        raise ValueError("an allowlist entry is empty")
    network = _as_network(text)
    if network is not None:
        if network.version != 4:
            raise ValueError(f"{entry!r}: IPv6 is not offered yet (IPv4 CIDRs only)")
        refusal = public_refusal(network)
        if refusal:
            raise ValueError(f"{entry!r} {refusal}: an allowlist names public addresses only")
        return str(network)
    if ":" in text or "/" in text or text.replace(".", "").isdigit():
        raise ValueError(f"{entry!r} is neither a CIDR (e.g. 93.184.216.0/24) nor a host name")
    labels = text.split(".")
    if len(text) > 253 or len(labels) < 2 or not all(_HOST_LABEL.fullmatch(x) for x in labels):
        raise ValueError(f"{entry!r} is not a host name (e.g. pypi.org)")
    return text


def public_refusal(network: IPNetwork) -> str:
    """Why ``network`` is not (entirely) public IPv4 space; '' when it is."""
    if network.version != 4:
        return "is IPv6"
    for blocked in NON_PUBLIC_V4:
        if network.overlaps(blocked):
            return f"overlaps {blocked}, which is not public"
    return ""


def is_public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == 4 and not any(ip in n for n in NON_PUBLIC_V4)


def _as_network(text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
