"""HTTP through addresses an ``AddressRule`` allows only: the service proxy's transport
for providers whose service addresses come from outside (see ``providers.addresses``).

The URL's host is resolved once, every address it resolves to must pass, the connection
goes to that checked address itself (no second lookup), and the peer it reached is checked
once more: neither a DNS name nor an answer that changes between a check and the
connection (DNS rebinding) slips past.
"""

from __future__ import annotations

import socket
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from providers.addresses import AddressRule


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
