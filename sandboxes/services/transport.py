"""How the control plane's service proxy reaches an exposed service (the provider side).

The view (sandboxes/proxy.py) speaks HTTP to the caller; this module holds what depends
on the provider: which transport a service URL needs (``http+unix://`` sockets the
control plane made, see providers/unix_http.py), and which addresses a connection may
reach when the provider's addresses come from outside (``Provider.service_address_rule``:
PVE guests report their own, Morph's API names a host; checked at the socket, see
providers/guarded_http.py).
"""

from __future__ import annotations

import requests

from providers import guarded_http, unix_http
from providers.addresses import AddressRule
from sandboxes.models import Sandbox
from sandboxes.services.backends import get_provider
from sandboxes.services.errors import ServiceError


def session_for(sandbox: Sandbox, url: str) -> requests.Session:
    """A session for one request to ``url``, a service of ``sandbox``: ``http+unix://``
    as is, ``http(s)://`` through the provider's address check when it has one."""
    session = unix_http.session()
    rule = _address_rule(sandbox, url)
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
