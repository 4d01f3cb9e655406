"""Which addresses the control plane may connect to when an address comes from outside.

A provider whose service addresses it does not choose itself (a PVE guest reports its
own through the QEMU guest agent or its container interfaces; a cloud API names a host)
declares an ``AddressRule`` (``Provider.service_address_rule``). Such an address is
refused when it is unspecified (``0.0.0.0``, ``::``), loopback, link-local, multicast,
reserved (which covers IPv4-compatible and NAT64 IPv6 forms) or IPv6 site-local; an
IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) is judged as the IPv4 address it reaches.
Otherwise it must be global or private unicast, and inside the rule's networks when it
has some (``PVE_GUEST_CIDRS``).

The service proxy checks again when it connects (``providers.guarded_http``), so neither
a DNS name nor an answer that changes between a check and the connection slips past.
This module is plain Python: the provider contract imports it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AddressRule:
    """What an address that came from outside the control plane must be."""

    #: When not empty, the address must lie in one of these (e.g. ``PVE_GUEST_CIDRS``).
    networks: tuple[IPNetwork, ...] = ()
    #: The setting ``networks`` came from, for messages.
    setting: str = ""
    #: Let loopback addresses through. Never set from configuration: only simulators
    #: whose "guests" live on the test host's loopback addresses use it.
    allow_loopback: bool = False

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why ``address`` may not be connected to; None when it may."""
        try:
            ip = ipaddress.ip_address(str(address).split("%", 1)[0])
        except ValueError:
            return f"{address!r} is not an IP address"
        shown = str(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # what a dual-stack socket reaches: judged as IPv4
        reason = _forbidden_class(ip, allow_loopback=self.allow_loopback)
        if reason:
            return f"{shown} is {reason}"
        if self.networks:
            if not any(ip in net for net in self.networks if net.version == ip.version):
                return f"{shown} is outside {self.setting or 'the allowed networks'}"
            return None
        if not (ip.is_global or ip.is_private or (self.allow_loopback and ip.is_loopback)):
            return f"{shown} is not a global or private unicast address"
        return None

    def allows(self, address: str | IPAddress) -> bool:
        return self.refusal(address) is None


def _forbidden_class(ip: IPAddress, *, allow_loopback: bool) -> str:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback and not allow_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_reserved:
        return "a reserved address"
    return ""


def parse_networks(value: str, setting: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs (``10.20.0.0/16, fd00:20::/64``); ValueError naming ``setting``."""
    networks = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(
                f"{setting}: {part!r} is not a network in CIDR form (e.g. 10.20.0.0/16)"
            ) from None
    return tuple(networks)
