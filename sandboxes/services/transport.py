"""How the control plane's service proxy reaches an exposed service (the provider side).

The view (sandboxes/proxy.py) speaks HTTP to the caller; this module holds what depends
on the provider: which transport a service URL needs (``http+unix://`` sockets the
control plane made, see providers/unix_http.py), and which addresses a connection may
reach when the provider's addresses come from outside (``Provider.service_address_rule``:
PVE guests report their own, Morph's API names a host; checked at the socket, see
providers/guarded_http.py).
"""

from __future__ import annotations

import http.cookiejar
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from providers import guarded_http, unix_http
from providers.addresses import AddressRule
from sandboxes.models import Sandbox
from sandboxes.services.backends import get_provider
from sandboxes.services.errors import ServiceError


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Stores no cookie: the sessions are shared by every sandbox's requests, and one
    upstream's ``Set-Cookie`` must never be sent to another."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        return False


#: One session per address rule (None: no rule), shared by the process's requests: its
#: connections to an upstream are kept alive and reused instead of opened per request.
_sessions: dict[AddressRule | None, requests.Session] = {}
_sessions_lock = threading.Lock()


def session_for(sandbox: Sandbox, url: str) -> requests.Session:
    """The session for a request to ``url``, a service of ``sandbox``: ``http+unix://``
    as is, ``http(s)://`` through the provider's address check when it has one (every
    new connection is checked; a kept one was checked when it was made). Not to be
    closed by the caller: it is shared."""
    rule = _address_rule(sandbox, url)
    session = _sessions.get(rule)
    if session is None:
        with _sessions_lock:
            session = _sessions.get(rule)
            if session is None:
                session = _sessions[rule] = _new_session(rule)
    return session


def _new_session(rule: AddressRule | None) -> requests.Session:
    session = unix_http.session()
    # No proxy, .netrc or CA bundle from the environment: a request to a sandbox goes
    # straight to the checked address (a proxy would be what the address check sees).
    session.trust_env = False
    session.cookies.set_policy(_NoCookies())
    return guarded_http.mount(session, rule) if rule is not None else session


def _address_rule(sandbox: Sandbox, url: str) -> AddressRule | None:
    """The rule the service's address must pass (None: the provider chose it itself)."""
    if url.startswith(f"{unix_http.SCHEME}://"):
        return None
    try:
        return get_provider(sandbox.provider).service_address_rule
    except ServiceError:
        return AddressRule()  # the provider is gone from the settings: trust nothing


def refusal(error: BaseException) -> str | None:
    """Why a connection was refused by the address check, if that is what ``error`` was."""
    refused = guarded_http.refused_in(error)
    return str(refused) if refused is not None else None


def origins(url: str) -> tuple[str, ...]:
    """Prefixes of an absolute ``Location`` that point back at the service itself."""
    url = url.rstrip("/")
    if url.startswith(f"{unix_http.SCHEME}://"):
        return (url, unix_http.UPSTREAM_ORIGIN)  # it sees its requests as for localhost
    return (url,)


@dataclass(frozen=True)
class Upstream:
    """A connection to a service, made by ``connect`` (the preview proxy speaks HTTP/1.1
    over it itself): ``tls_host`` is the name to verify when the URL is ``https``."""

    sock: socket.socket
    host_header: str
    base_path: str
    tls_host: str | None = None


def connect(*, sandbox: Sandbox, url: str, timeout: float) -> Upstream:
    """A blocking connected socket to the service at ``url`` of ``sandbox``, through the
    same rules as ``session_for``: ``http+unix://`` sockets as they are, ``http(s)://``
    through the provider's address check when it has one (``guarded_http.AddressRefused``,
    an ``OSError``, when refused; ``refusal`` tells). Raises ``OSError`` when nothing
    answers."""
    parts = urlsplit(url)
    base_path = parts.path.rstrip("/")
    if parts.scheme == unix_http.SCHEME:
        sock = unix_http.connect(unix_http.socket_path(url), timeout)
        return Upstream(sock, "localhost", base_path)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OSError(f"not a service URL: {parts.scheme}://")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    rule = _address_rule(sandbox, url)
    if rule is None:
        sock = socket.create_connection((parts.hostname, port), timeout)
    else:
        sock = guarded_http.connect(parts.hostname, port, rule, timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls_host = parts.hostname if parts.scheme == "https" else None
    return Upstream(sock, parts.netloc, base_path, tls_host)
