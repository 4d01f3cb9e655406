"""The service proxy: ``/s/<sandbox_id>/<service>/<path>`` forwards to an exposed service.

Superseded by preview URLs (``sandboxes/preview.py``: every service at an origin of its
own). A browser opening a page here (a session, ``GET``/``HEAD`` accepting HTML) is
redirected to the service's preview URL; scripts (API tokens) and a page's own requests
are still served here, for the clients written against it.

Traffic that passes through here is the control plane's own evidence of use: it touches
the sandbox's activity (idle hibernation counts from it), and when the sandbox is paused
or hibernated with wake-on-HTTP on, the request resumes it (the resume runs here, inline,
for at most ``SANDBOX_WAKE_TIMEOUT_SECONDS``) and is then served.

Callers authenticate like the API: a session (the dashboard's current team) or
``Authorization: Bearer <token>`` (the token's team). Another team's sandbox is "not
found". The caller's credentials (cookies, the Authorization header) are never passed on
to the sandbox, and the sandbox cannot set cookies on the dashboard's origin; unless
``SANDBOX_PROXY_ISOLATE`` is off, its pages are served in an opaque origin (CSP sandbox)
so their scripts cannot act as the signed-in user.

Where the proxy connects: ``http+unix://`` services (sockets the control plane made) and
providers that chose the address themselves are connected to as they are; a provider
whose addresses come from outside (``Provider.service_address_rule``: PVE guests report
their own, Morph's API names a host) has every connection checked at the socket: the
host is resolved once, an unspecified, loopback, link-local, multicast or reserved
answer (or one outside ``PVE_GUEST_CIDRS``) is refused with a 502 before anything is
sent, and the peer actually reached is checked too.

A proxied request is a long call (``sandboxes.services.long_calls``): from before a wake
until its body has been passed on, it holds one of its team's slots and one of the
site's, so one team's traffic cannot hold every server thread; beyond them it answers
429 ``too_many_long_calls`` with ``Retry-After``. Under ASGI (``manage.py serve``,
uvicorn) the body is passed on as an asynchronous iterator, chunk by chunk: Django would
read a synchronous one whole into memory first.

Whatever the upstream does wrong (no answer, a reset, a 1xx or a status above 599,
headers that do not parse, are too large or cannot be passed on) is answered with the
API's error shape: 504 when it did not answer in time, else 502; never a 500.
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import AsyncIterator, Iterator

import requests
import urllib3
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.http import (
    BadHeaderError,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt
from urllib3.util.response import assert_header_parsing

from sandboxes import db_pool, selectors
from sandboxes.current_team import team_context
from sandboxes.models import Sandbox, Team
from sandboxes.services import (
    auth_failures,
    interactive,
    lifecycle,
    long_calls,
    previews,
    tokens,
    transport,
)
from sandboxes.services.actors import Actor
from sandboxes.services.errors import TooManyLongCalls
from sandboxes.states import PARKED, WAKING, Status

logger = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
#: Never forwarded to the sandbox: the caller's credentials for the control plane.
DROP_REQUEST = HOP_BY_HOP | {"host", "cookie", "authorization", "content-length"}
#: Never passed back: cookies would land on the dashboard's origin.
DROP_RESPONSE = HOP_BY_HOP | {"set-cookie"}
ISOLATION_POLICY = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"
CHUNK = 64 * 1024
#: Seconds to open the connection to the upstream.
CONNECT_TIMEOUT = 10
#: An upstream answer whose headers (names and values together) are larger is refused.
MAX_RESPONSE_HEADER_BYTES = 64 * 1024
#: What sending to the upstream may raise beyond requests' own errors (http.client and
#: urllib3 let a few through unwrapped).
UPSTREAM_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    ValueError,
)


class BadUpstream(Exception):
    """The upstream answered, but not with something the proxy can pass on."""


def _error(status: int, code: str, message: str, **extra) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message, **extra}}, status=status)


def _authenticate(request: HttpRequest) -> tuple[Actor | None, Team | None, bool]:
    """(actor, team, used_a_token). A refused token counts against the client's address,
    as on the API, so the proxy is no way around its guessing protection."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        token = tokens.authenticate_token(header[7:].strip())
        if token is None:
            auth_failures.record_failure(auth_failures.client_ip(request))
            return None, None, True
        return Actor.for_token(token), token.team, True
    if request.user.is_authenticated:
        context = team_context(request)
        return Actor.for_user(request.user), context.team if context else None, False
    return None, None, False


@csrf_exempt  # no session-cookie write happens here; the session cookie is SameSite=Lax
def service_proxy(
    request: HttpRequest, sandbox_id: str, service: str, path: str = ""
) -> HttpResponse:
    if request.headers.get("Authorization", "").lower().startswith("bearer "):
        wait = auth_failures.blocked_for(auth_failures.client_ip(request))
        if wait is not None:
            response = _error(429, "throttled", "too many failed authentications from your address")
            response["Retry-After"] = str(wait)
            return response
    actor, team, with_token = _authenticate(request)
    if actor is None:
        if with_token:
            return _error(401, "not_authenticated", "the token is unknown, revoked or expired")
        return redirect_to_login(request.get_full_path())
    sandbox = selectors.proxy_target(team=team, sandbox_id=sandbox_id) if team else None
    if sandbox is None:
        return _error(404, "not_found", "no such sandbox in your team")
    entry = next((s for s in sandbox.services if s.get("name") == service), None)
    if entry is None:
        return _error(404, "not_found", f"the sandbox exposes no service called {service!r}")
    if _is_navigation(request, with_token):
        return _to_preview(request, sandbox, entry, path)
    # The longest this request may wait: a wake, then the upstream's answer.
    bound = CONNECT_TIMEOUT + settings.SANDBOX_PROXY_TIMEOUT_SECONDS
    if sandbox.status in PARKED | WAKING:
        bound += settings.SANDBOX_WAKE_TIMEOUT_SECONDS
    try:
        slot = long_calls.acquire(team=team, kind="proxied request", seconds=bound)
    except TooManyLongCalls as exc:
        response = _error(429, exc.code, exc.message, retry_after=exc.retry_after)
        response["Retry-After"] = str(exc.retry_after)
        return response
    response = None
    try:
        response = _serve(request, sandbox, entry, path, actor, slot)
        return response
    finally:
        # A streamed answer's body holds the slot until it has been passed on.
        if not isinstance(response, StreamingHttpResponse):
            slot.release()


def _is_navigation(request: HttpRequest, with_token: bool) -> bool:
    """A browser opening a page (not a script with a token, not a page's own fetch)."""
    accept = request.headers.get("Accept", "")
    return not with_token and request.method in ("GET", "HEAD") and "text/html" in accept


def _to_preview(request: HttpRequest, sandbox: Sandbox, entry: dict, path: str) -> HttpResponse:
    """The same page at the service's preview URL (its own origin, sandboxes/preview.py)."""
    origin = previews.preview_origin(
        sandbox.pk, int(entry["port"]), scheme=request.scheme, web_port=int(request.get_port())
    )
    query = request.META.get("QUERY_STRING", "")
    return HttpResponseRedirect(f"{origin}/{path}" + (f"?{query}" if query else ""))


def _serve(
    request: HttpRequest,
    sandbox: Sandbox,
    entry: dict,
    path: str,
    actor: Actor,
    slot: long_calls.Slot,
) -> HttpResponse:
    sandbox_id = sandbox.pk
    if sandbox.status in PARKED | WAKING:
        if not sandbox.wake_on_http:
            return _error(
                409,
                "sandbox_not_running",
                f"{sandbox_id} is {sandbox.status} and wake-on-HTTP is off; resume it first",
            )
        sandbox = lifecycle.wake(sandbox=sandbox, actor=actor)
    if sandbox.status != Status.RUNNING:
        return _error(409, "sandbox_not_running", f"{sandbox_id} is {sandbox.status}")
    if not interactive.activity_is_recent(sandbox):  # a write at most every 30 s, not each time
        interactive.touch_activity(sandbox)
    try:
        return _forward(request, sandbox, entry, path, slot)
    except RequestDataTooBig:
        return _error(413, "too_large", "the request body is larger than the proxy accepts")


def _target(entry: dict, path: str, query: str) -> str:
    url = entry["url"].rstrip("/") + "/" + path
    return f"{url}?{query}" if query else url


def _forward(
    request: HttpRequest, sandbox: Sandbox, entry: dict, path: str, slot: long_calls.Slot
) -> HttpResponse:
    prefix = f"/s/{sandbox.pk}/{entry['name']}/"
    headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP_REQUEST}
    headers["X-Forwarded-For"] = request.META.get("REMOTE_ADDR", "")
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.get_host()
    headers["X-Forwarded-Prefix"] = prefix.rstrip("/")
    # From here the request waits on the sandbox (and a streamed body may flow for long):
    # the pool's connection is free meanwhile; the slot's release borrows one again.
    db_pool.give_back()
    try:
        try:
            upstream = _send(request, sandbox, entry, path, headers)
        except requests.ConnectionError as exc:
            if transport.refusal(exc) is not None:
                raise
            # Nothing at the URL the row holds: the provider may have moved the service
            # (an upgrade); ask it once and try its current URL.
            fresh = interactive.refresh_service_url(sandbox, entry["name"])
            if fresh is None:
                raise
            entry = fresh
            upstream = _send(request, sandbox, entry, path, headers)
    except requests.Timeout as exc:
        logger.info("proxy %s/%s: %s", sandbox.pk, entry["name"], exc)
        return _error(
            504, "gateway_timeout", f"the service {entry['name']!r} did not answer in time"
        )
    except UPSTREAM_ERRORS as exc:
        refused = transport.refusal(exc)
        if refused is not None:
            logger.warning("proxy %s/%s: %s", sandbox.pk, entry["name"], refused)
            return _error(
                502,
                "bad_gateway",
                f"the service {entry['name']!r} is at an address the proxy may not connect to",
            )
        logger.info("proxy %s/%s: %r", sandbox.pk, entry["name"], exc)
        return _error(502, "bad_gateway", f"the service {entry['name']!r} did not answer")
    body = _Body(upstream, slot)
    body.prefetch_if_small()
    try:
        response = _response(
            upstream, prefix, entry, body.chunks() if isinstance(request, ASGIRequest) else body
        )
    except BadUpstream as exc:
        upstream.close()
        logger.info("proxy %s/%s: %s", sandbox.pk, entry["name"], exc)
        return _error(
            502, "bad_gateway", f"the service {entry['name']!r} gave an invalid answer: {exc}"
        )
    if settings.SANDBOX_PROXY_ISOLATE:
        response["Content-Security-Policy"] = ISOLATION_POLICY
    return response


def _response(
    upstream: requests.Response, prefix: str, entry: dict, body: _Body | _AsyncBody
) -> HttpResponse:
    """The upstream's answer as Django's; BadUpstream when it cannot be passed on."""
    status = upstream.status_code
    if not 200 <= status <= 599:
        raise BadUpstream(f"status {status}")
    original = getattr(upstream.raw, "_original_response", None)
    if original is not None:
        try:
            assert_header_parsing(original.msg)
        except (urllib3.exceptions.HeaderParsingError, TypeError) as exc:
            raise BadUpstream("its headers do not parse") from exc
    items = list(upstream.raw.headers.items())
    if sum(len(name) + len(value) + 4 for name, value in items) > MAX_RESPONSE_HEADER_BYTES:
        raise BadUpstream("its headers are too large")
    response = StreamingHttpResponse(body, status=status)
    try:
        for name, value in items:
            if name.lower() not in DROP_RESPONSE:
                response[name] = value
    except (BadHeaderError, ValueError, UnicodeError) as exc:
        raise BadUpstream("a header cannot be passed on") from exc
    location = response.get("Location", "")
    for origin in transport.origins(entry["url"]):
        if location == origin or location.startswith(origin + "/"):
            response["Location"] = prefix + location[len(origin) :].lstrip("/")
            break
    return response


def _send(
    request: HttpRequest, sandbox: Sandbox, entry: dict, path: str, headers: dict
) -> requests.Response:
    return transport.session_for(sandbox, entry["url"]).request(
        request.method,
        _target(entry, path, request.META.get("QUERY_STRING", "")),
        headers=headers,
        data=request.body or None,
        stream=True,
        allow_redirects=False,
        timeout=(CONNECT_TIMEOUT, settings.SANDBOX_PROXY_TIMEOUT_SECONDS),
    )


class _Body:
    """The upstream body as it came (still compressed if it was). Closing it (at its end,
    or Django closing the response) closes the upstream connection and frees the slot."""

    def __init__(self, upstream: requests.Response, slot: long_calls.Slot) -> None:
        self.upstream = upstream
        self.slot = slot
        #: The whole body, read ahead (``prefetch_if_small``); None: read as it is sent.
        self.prefetched: bytes | None = None

    def prefetch_if_small(self) -> None:
        """Read a body of at most one chunk (by its Content-Length) now, in the request's
        thread: under ASGI each chunk read later costs two thread switches, most of what
        passing on a small answer would take; and the upstream connection goes back to
        the keep-alive pool at once. The response still streams it, and the slot is still
        held until it has been passed on."""
        length = self.upstream.headers.get("Content-Length", "")
        if not (length.isdigit() and int(length) <= CHUNK):
            return
        try:
            self.prefetched = self.upstream.raw.read(decode_content=False)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            # As when a streamed body breaks off: the answer ends short.
            logger.info("proxy: the upstream's body broke off: %r", exc)
            self.prefetched = b""

    def __iter__(self) -> Iterator[bytes]:
        if self.prefetched is not None:
            try:
                if self.prefetched:
                    yield self.prefetched
            finally:
                self.close()
            return
        try:
            for chunk in self.upstream.raw.stream(CHUNK, decode_content=False):
                # Still flowing: keep the slot past its first bound (each read has its own).
                self.slot.extend(seconds=settings.SANDBOX_PROXY_TIMEOUT_SECONDS)
                db_pool.give_back()  # the renewal may have borrowed one
                yield chunk
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            # The status line is gone already: the answer ends short (the client sees it).
            logger.info("proxy: the upstream's body broke off: %r", exc)
        finally:
            self.close()

    def close(self) -> None:
        self.upstream.close()
        self.slot.release()

    def chunks(self) -> _AsyncBody:
        return _AsyncBody(self)


class _AsyncBody:
    """The same body for an ASGI server: each chunk is read in the request's own thread,
    so the body is passed on as it comes instead of being read whole first."""

    def __init__(self, body: _Body) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.body.prefetched is not None:
            try:
                if self.body.prefetched:
                    yield self.body.prefetched  # no thread switch for what is in memory
            finally:
                await sync_to_async(self.close)()
            return
        chunks = iter(self.body)
        read = sync_to_async(next)
        try:
            while (chunk := await read(chunks, None)) is not None:
                yield chunk
        finally:
            await sync_to_async(self.close)()

    def close(self) -> None:
        self.body.close()
