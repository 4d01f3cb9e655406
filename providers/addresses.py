"""Which addresses the control plane may connect to when an address comes from outside.

A provider whose service addresses it does not choose itself (a PVE guest reports its
own through the QEMU guest agent or its container interfaces; a cloud API names a host)
declares an ``AddressRule`` (``Provider.service_address_rule``). Such an address is
refused when it is unspecified (``0.0.0.0``, ``::``), loopback, link-local, multicast,
reserved (which covers IPv4-compatible and NAT64 IPv6 forms) or IPv6 site-local; an
IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) is judged as the IPv4 address it reaches.
Otherwise it must be global or private unicast, and inside the rule's networks when it
has some (``PVE_GUEST_CIDRS``).

The service proxy checks again when it connects (``session``): the URL's host is
resolved once, every address it resolves to must pass, and the connection goes to that
checked address (and its peer is checked once more), so neither a DNS name nor an
answer that changes between a check and the connection (DNS rebinding) slips past.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

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


# --- connecting -------------------------------------------------------------------------------


class AddressRefused(NewConnectionError):
    """The host resolved to (or the connection reached) an address the rule refuses."""


def connect(
    host: str,
    port: int,
    rule: AddressRule,
    timeout: Any = urllib3_connection._DEFAULT_TIMEOUT,
    source_address: tuple[str, int] | None = None,
    socket_options: Any = None,
    *,
    conn: Any = None,
) -> socket.socket:
    """A TCP connection to ``host:port`` through addresses ``rule`` allows only.

    The host is resolved once; if any answer is refused, nothing is connected to. The
    connection is made to a resolved address itself (no second lookup), and the address
    the socket actually reached is checked before it is used.
    """
    host = host.strip("[]")
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        reason = rule.refusal(sockaddr[0])
        if reason:
            raise AddressRefused(conn, f"{host}: refused, {reason}")
    error: OSError | None = None
    for *_, sockaddr in infos:
        try:
            sock = urllib3_connection.create_connection(
                (sockaddr[0], port), timeout, source_address, socket_options
            )
        except OSError as exc:
            error = exc
            continue
        peer = sock.getpeername()[0]
        reason = rule.refusal(peer)
        if reason:
            sock.close()
            raise AddressRefused(conn, f"{host}: refused, {reason}")
        return sock
    raise error or OSError(f"{host} has no address")


class _Guarded:
    rule: AddressRule

    def _new_conn(self) -> socket.socket:
        try:
            return connect(
                self._dns_host,  # type: ignore[attr-defined]
                self.port,  # type: ignore[attr-defined]
                self.rule,
                self.timeout,  # type: ignore[attr-defined]
                self.source_address,  # type: ignore[attr-defined]
                self.socket_options,  # type: ignore[attr-defined]
                conn=self,
            )
        except AddressRefused:
            raise
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[attr-defined]
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                self,
                f"Connection to {self.host} timed out.",  # type: ignore[attr-defined]
            ) from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc


class GuardedAdapter(HTTPAdapter):
    """``http://`` and ``https://`` to addresses ``rule`` allows only."""

    def __init__(self, rule: AddressRule, **kwargs: Any) -> None:
        self.rule = rule
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        marks = {"rule": self.rule}
        http = type("GuardedHTTPConnection", (_Guarded, HTTPConnection), marks)
        https = type("GuardedHTTPSConnection", (_Guarded, HTTPSConnection), marks)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "rule": self.rule}


def mount(session: requests.Session, rule: AddressRule) -> requests.Session:
    """Make ``session``'s ``http://`` and ``https://`` requests obey ``rule``."""
    adapter = GuardedAdapter(rule)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def refused_in(error: BaseException) -> AddressRefused | None:
    """The ``AddressRefused`` behind a requests/urllib3 error, if that is what it was."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, AddressRefused):
            return current
        pending.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
    return None
