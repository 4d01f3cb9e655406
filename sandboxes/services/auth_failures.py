"""Failed API token authentications per client address, against token guessing.

Counted like the API's per-team rates (``sandboxes.services.throttling``: Redis when
``REDIS_URL`` is set, else the database; shared by every web worker), in fixed windows of
``SANDBOX_API_AUTH_FAILURE_RATE`` (``30/hour``: 30 failures per hour). Once an address has
used up its failures, every token it presents is refused with 429 until the window ends,
without the token being looked at; other addresses are unaffected.
"""

from __future__ import annotations

import ipaddress
import math
import time

from django.conf import settings
from django.http import HttpRequest

from sandboxes.services.throttling import count_request, current_count, forget, parse_rate


def client_ip(request: HttpRequest) -> str:
    """The client's address: ``REMOTE_ADDR``, or behind a reverse proxy the right-most
    address of the ``CLIENT_IP_HEADER`` header (the one the proxy itself added; a client
    can forge the addresses left of it, never that one). Empty when there is no valid
    address (a request made in-process, a garbled header): the access log stores an
    address column, which must never receive anything else."""
    header = getattr(settings, "CLIENT_IP_HEADER", "")
    address = request.META.get("REMOTE_ADDR", "") if request is not None else ""
    if header and request is not None:
        addresses = [a.strip() for a in request.META.get(header, "").split(",") if a.strip()]
        address = addresses[-1] if addresses else address
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return ""


def _limit() -> tuple[int, int] | None:
    return parse_rate(getattr(settings, "SANDBOX_API_AUTH_FAILURE_RATE", ""))


def _key(address: str, period: int) -> str:
    return f"auth-failures:{address}:{period}"


def blocked_for(address: str) -> int | None:
    """Seconds until ``address`` may present a token again, or None if it may now."""
    limit = _limit()
    if limit is None:
        return None
    count, period = limit
    now = time.time()
    window = int(now // period)
    if current_count(_key(address, period), window=window) < count:
        return None
    return max(1, math.ceil((window + 1) * period - now))


def record_failure(address: str) -> None:
    """Count one failed token authentication from ``address``."""
    limit = _limit()
    if limit is not None:
        period = limit[1]
        window = int(time.time() // period)
        count_request(_key(address, period), window=window, period=period)


def reset(address: str) -> None:
    """Forget ``address``'s refused tokens of the current window (an operator's unlock)."""
    limit = _limit()
    if limit is not None:
        period = limit[1]
        forget(_key(address, period), window=int(time.time() // period))
