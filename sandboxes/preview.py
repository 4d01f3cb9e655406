"""Preview hosts: every exposed service at an origin of its own, ``<port>-<sandbox id>.
<SANDBOX_PREVIEW_DOMAIN>``, so that an IDE, a dev server with hot reload or anything that
expects to live at ``/`` works as it does on its own machine.

A pure ASGI application: ``config/asgi.py`` hands it every ``http`` and ``websocket``
scope whose ``Host`` is a preview host, before Django. It speaks HTTP/1.1 to the service
itself (h11, over the connection ``services/transport.connect`` makes, so the address
checks are the service proxy's), streams bodies both ways as they come with no cap and
under the servers' flow control, keeps upstream connections alive for the next request
(a pool per service), and relays websockets (the ``websockets`` library as the client,
over a connection made the same way). Who may come in is ``services/previews.py``
(sharing levels, tokens, the cookie); a parked sandbox with wake-on-HTTP is woken there
too. Database work runs in threads, never on the event loop.

What it never passes on: the visitor's credentials for the control plane (the preview
cookie, an API token in ``Authorization``, the dashboard's cookie names) to the service;
a ``Domain`` attribute of a cookie the service sets (every cookie stays on this host, so
a service cannot set one for the dashboard's or another preview's host); hop-by-hop
headers either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import h11
from django.conf import settings
from django.db import DatabaseError, connection, connections
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sandboxes import db_pool
from sandboxes.services import previews, transport

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

CHUNK = 256 * 1024
CONNECT_TIMEOUT = 10.0
#: An upstream answer's head (status line and headers) larger than this is refused.
MAX_HEAD = 64 * 1024
#: Kept-alive connections per service, and how long one may wait unused.
MAX_IDLE = 16
IDLE_SECONDS = 30.0
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
WS_HANDSHAKE = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)


def target(scope: Scope) -> tuple[int, str] | None:
    """(service port, sandbox id) when the request is for a preview host."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return previews.parse_host(value.decode("latin-1"))
    return None


async def application(scope: Scope, receive: Receive, send: Send, where: tuple[int, str]) -> None:
    port, sandbox_id = where
    if scope["type"] == "http":
        await _http(scope, receive, send, port, sandbox_id)
    elif scope["type"] == "websocket":
        await _websocket(scope, receive, send, port, sandbox_id)


#: Threads for the database work of preview requests (the access check, a wake): few and
#: long-lived, so each keeps its connection between requests where that is cheap.
_db_threads = ThreadPoolExecutor(max_workers=16, thread_name_prefix="preview-db")


def _after_database_work() -> None:
    """Between two requests' work in a thread: a pooled connection goes back to the pool,
    a SQLite one is kept (opening it is most of a check's cost), any other is closed
    when Django would close it (``CONN_MAX_AGE``, unusable)."""
    if db_pool.pooled():
        db_pool.give_back()
    elif connection.vendor != "sqlite":
        connection.close_if_unusable_or_obsolete()


async def in_thread(function: Callable[..., Any], /, **kwargs: Any) -> Any:
    """A service call in one of the preview's database threads."""

    def call() -> Any:
        try:
            return function(**kwargs)
        except DatabaseError:
            connections.close_all()
            raise
        finally:
            _after_database_work()

    return await asyncio.get_running_loop().run_in_executor(_db_threads, call)


# --- requests: headers, credentials


def _headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    return list(scope.get("headers", ()))


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return ""


def _cookies(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                name, _, content = part.strip().partition("=")
                if name:
                    found.setdefault(name, content)
    return found


def _bearer(scope: Scope) -> str | None:
    """The control plane's API token in ``Authorization``, if that is what it holds."""
    header = _header(scope, b"authorization")
    if header[:7].lower() == "bearer " and header[7:].strip().startswith("sbt_"):
        return header[7:].strip()
    return None


def _scheme(scope: Scope) -> str:
    header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if header:
        wanted = header[0].removeprefix("HTTP_").lower().replace("_", "-").encode()
        if _header(scope, wanted).split(",")[0].strip() == header[1]:
            return "https"
    return "https" if scope.get("scheme") in ("https", "wss") else "http"


def _own_cookie_names() -> set[str]:
    return {previews.COOKIE_NAME, settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME}


def _upstream_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The request's headers as the service gets them (see the module)."""
    drop = HOP_BY_HOP | WS_HANDSHAKE | {b"cookie"}
    out = []
    bearer = _bearer(scope)
    for name, value in _headers(scope):
        if name in drop or name.startswith(b"x-forwarded-"):
            continue
        if name == b"authorization" and bearer is not None:
            continue
        out.append((name, value))
    own = _own_cookie_names()
    kept = [f"{k}={v}" for k, v in _cookies(scope).items() if k not in own]
    if kept:
        out.append((b"cookie", "; ".join(kept).encode("latin-1")))
    client = scope.get("client") or ("", 0)
    out.append((b"x-forwarded-for", str(client[0]).encode()))
    out.append((b"x-forwarded-proto", _scheme(scope).encode()))
    out.append((b"x-forwarded-host", _header(scope, b"host").encode("latin-1")))
    return out


def _response_headers(headers: list[tuple[bytes, bytes]], origins: tuple[str, ...]) -> list:
    """The service's answer's headers as the visitor gets them (see the module)."""
    out = []
    for raw_name, value in headers:
        name = raw_name.lower()
        if name in HOP_BY_HOP and name != b"content-length":
            continue
        if name == b"set-cookie":
            value = _host_only(value)
            if value is None:
                continue
        elif name == b"location":
            location = value.decode("latin-1")
            for origin in origins:
                if location == origin or location.startswith(origin + "/"):
                    value = ("/" + location[len(origin) :].lstrip("/")).encode("latin-1")
                    break
        out.append((name, value))
    return out


def _host_only(value: bytes) -> bytes | None:
    """A ``Set-Cookie`` without its ``Domain`` (None: it names a cookie the control plane
    uses, which a service may not set)."""
    parts = value.split(b";")
    name = parts[0].split(b"=", 1)[0].strip().decode("latin-1")
    if name in _own_cookie_names():
        return None
    kept = [p for p in parts[1:] if not p.strip().lower().startswith(b"domain")]
    return b";".join([parts[0], *kept])


# --- answers of the preview host itself


async def _answer(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Send, location: str, headers: list | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 302,
            "headers": [
                (b"location", location.encode("latin-1")),
                (b"content-length", b"0"),
                (b"cache-control", b"no-store"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def dashboard_url(scope: Scope) -> str:
    """Where the dashboard is, for a browser that must sign in first."""
    if settings.SANDBOX_PREVIEW_DASHBOARD_URL:
        return settings.SANDBOX_PREVIEW_DASHBOARD_URL.rstrip("/")
    host = _header(scope, b"host")
    port = host.rsplit(":", 1)[1] if ":" in host else ""
    return f"{_scheme(scope)}://{settings.SANDBOX_PREVIEW_DOMAIN}{':' + port if port else ''}"


def _path_and_query(scope: Scope) -> str:
    raw = scope.get("raw_path")
    if raw:  # as the client sent it (an encoded slash stays encoded)
        path = raw.decode("latin-1")
    else:
        path = quote(scope.get("path", "/"), safe="/%:@!$&'()*+,;=~-._")
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


async def _exchange(scope: Scope, send: Send, port: int, sandbox_id: str) -> None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    token = (query.get("token") or [""])[0]
    following = (query.get("next") or ["/"])[0]
    if not following.startswith("/") or following.startswith("//") or "\\" in following:
        following = "/"
    value = previews.exchange_token(token=token, sandbox_id=sandbox_id, port=port)
    if value is None:
        await _answer(
            send,
            403,
            "link_expired",
            "this link has expired: open the service again from the dashboard",
        )
        return
    cookie = (
        f"{previews.COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Lax; "
        f"Max-Age={settings.SANDBOX_PREVIEW_SESSION_SECONDS}"
    )
    if _scheme(scope) == "https":
        cookie += "; Secure"
    await _redirect(send, following, [(b"set-cookie", cookie.encode("latin-1"))])


#: A request admitted (its credentials, sandbox and service checked, the sandbox running)
#: lets the same credentials in again for this long without asking the database: the
#: difference between a check per request and one per burst of an IDE's requests. A
#: revoked membership, a changed password or sharing level, a paused sandbox take effect
#: within it. Per process; only admissions are remembered, never refusals.
ADMITTED_SECONDS = 2.0
MAX_ADMITTED = 10_000
_admitted: dict[tuple, tuple[float, previews.Access]] = {}


def _admit(
    *, cross_origin: bool, **kwargs: Any
) -> tuple[previews.Access, previews.NotReady | None]:
    """In one thread: who the request is (``previews.authorize``), then the sandbox made
    ready for it (``previews.ready_for_traffic``: woken when parked with wake-on-HTTP)."""
    access = previews.authorize(**kwargs)
    if access.outcome != "ok":
        return access, None
    if cross_origin and access.actor is not None:
        return replace(access, outcome="cross_origin"), None
    try:
        sandbox = previews.ready_for_traffic(sandbox=access.sandbox, actor=access.actor)
    except previews.NotReady as exc:
        return access, exc
    return replace(access, sandbox=sandbox), None


def _cross_origin(scope: Scope) -> bool:
    """Sent by another origin with the visitor's cookie (another preview host is the same
    site, so a browser sends it): refused unless it is a safe read or the service is
    public (no cookie needed there)."""
    origin = _header(scope, b"origin")
    if not origin or _bearer(scope) is not None:
        return False
    expected = f"{_scheme(scope)}://{_header(scope, b'host')}"
    return origin.lower() != expected.lower() and (
        scope["type"] == "websocket" or scope.get("method") not in ("GET", "HEAD", "OPTIONS")
    )


async def _access(
    scope: Scope, send: Send | None, port: int, sandbox_id: str
) -> previews.Access | None:
    """The admitted request (its sandbox running); None when refused, once the preview
    host has answered itself (``send`` None: a websocket, whose refusal the caller makes)."""
    client = scope.get("client") or ("", 0)
    cookie = _cookies(scope).get(previews.COOKIE_NAME, "")
    bearer = _bearer(scope)
    cross_origin = _cross_origin(scope)
    key = (sandbox_id, port, cookie, bearer, cross_origin)
    cached = _admitted.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    access, not_ready = await in_thread(
        _admit,
        cross_origin=cross_origin,
        sandbox_id=sandbox_id,
        port=port,
        cookie=cookie,
        bearer=bearer,
        client_ip=str(client[0]),
    )
    if access.outcome == "ok" and not_ready is None:
        if ADMITTED_SECONDS > 0:
            if len(_admitted) >= MAX_ADMITTED:
                _admitted.clear()
            _admitted[key] = (time.monotonic() + ADMITTED_SECONDS, access)
        return access
    if send is None:
        return None
    if not_ready is not None:
        extra = [(b"retry-after", str(not_ready.retry_after).encode())]
        await _answer(
            send,
            not_ready.status,
            not_ready.code,
            not_ready.message,
            extra if not_ready.retry_after else [],
        )
    elif access.outcome == "login":
        login = (
            f"{dashboard_url(scope)}/preview/{sandbox_id}/{port}/"
            f"?next={quote(_path_and_query(scope), safe='')}"
        )
        await _redirect(send, login)
    elif access.outcome == "throttled":
        await _answer(
            send,
            429,
            "throttled",
            "too many failed authentications from your address",
            [(b"retry-after", str(access.retry_after).encode())],
        )
    elif access.outcome == "unauthorized":
        await _answer(send, 401, "not_authenticated", "the token is unknown or may not open this")
    elif access.outcome == "cross_origin":
        await _answer(send, 403, "cross_origin", "refused: the request came from another origin")
    else:
        await _answer(send, 403, "forbidden", "your role in the team cannot open this service")
    return None


# --- upstream connections


class Connection:
    """One HTTP/1.1 connection to a service."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.idle_since = time.monotonic()
        self.used = False

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def next_event(self, timeout: float) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(self.reader.read(CHUNK), timeout)
            self.h11.receive_data(data)

    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


_idle: dict[tuple[str, str], list[Connection]] = {}


async def _open(access: previews.Access, service: dict[str, Any]) -> tuple[Any, Any]:
    """(reader, writer) of a new connection to the service, and its transport details."""
    upstream = await in_thread(
        transport.connect, sandbox=access.sandbox, url=service["url"], timeout=CONNECT_TIMEOUT
    )
    context = None
    if upstream.tls_host:
        context = ssl.create_default_context()
    reader, writer = await asyncio.open_connection(
        sock=upstream.sock,
        ssl=context,
        server_hostname=upstream.tls_host if context else None,
        limit=CHUNK,
    )
    return (reader, writer), upstream


async def _connection(access: previews.Access, service: dict[str, Any]) -> Connection:
    key = (access.sandbox.pk, service["url"])
    pool = _idle.get(key, [])
    while pool:
        conn = pool.pop()
        if conn.reader.at_eof() or time.monotonic() - conn.idle_since > IDLE_SECONDS:
            conn.close()
            continue
        return conn
    (reader, writer), _ = await _open(access, service)
    return Connection(reader, writer)


_pruned_at = 0.0


def _prune() -> None:
    """Close kept connections unused for longer than IDLE_SECONDS (services of sandboxes
    that are no longer visited hold none for long)."""
    global _pruned_at
    now = time.monotonic()
    if now - _pruned_at < IDLE_SECONDS:
        return
    _pruned_at = now
    for key in list(_idle):
        kept = []
        for conn in _idle[key]:
            if now - conn.idle_since > IDLE_SECONDS or conn.reader.at_eof():
                conn.close()
            else:
                kept.append(conn)
        if kept:
            _idle[key] = kept
        else:
            del _idle[key]


def _give_back(key: tuple[str, str], conn: Connection) -> None:
    _prune()
    if not conn.reusable():
        conn.close()
        return
    conn.h11.start_next_cycle()
    conn.idle_since = time.monotonic()
    conn.used = True
    pool = _idle.setdefault(key, [])
    if len(pool) >= MAX_IDLE:
        conn.close()
        return
    pool.append(conn)


def _connect_error(exc: BaseException, service: dict[str, Any]) -> tuple[int, str, str]:
    refused = transport.refusal(exc)
    if refused is not None:
        log.warning("preview %s: %s", service["name"], refused)
        return 502, "bad_gateway", "the service is at an address the proxy may not connect to"
    if isinstance(exc, TimeoutError):
        return 504, "gateway_timeout", "the service did not answer in time"
    return 502, "bad_gateway", "the service did not answer"


# --- HTTP


async def _http(scope: Scope, receive: Receive, send: Send, port: int, sandbox_id: str) -> None:
    if scope["path"] == previews.EXCHANGE_PATH:
        await _exchange(scope, send, port, sandbox_id)
        return
    access = await _access(scope, send, port, sandbox_id)
    if access is not None:
        await Exchange(scope, receive, send, access).run()


class Exchange:
    """One request passed on to the service and its answer passed back."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, access: previews.Access):
        self.scope, self.receive, self.send = scope, receive, send
        self.access = access
        self.service = access.service
        self.body_started = False
        self.consumed = False
        self.disconnected = asyncio.Event()

    def _request(self) -> h11.Request:
        headers = _upstream_headers(self.scope)
        headers.insert(0, (b"host", _header(self.scope, b"host").encode("latin-1")))
        length = _header(self.scope, b"content-length")
        if length:
            headers.append((b"content-length", length.encode()))
        elif "chunked" in _header(self.scope, b"transfer-encoding").lower():
            headers.append((b"transfer-encoding", b"chunked"))
        target = _path_and_query(self.scope).encode("latin-1")
        base = urlsplit(self.service["url"]).path.rstrip("/")
        if base:
            target = base.encode("latin-1") + target
        return h11.Request(method=self.scope["method"], target=target, headers=headers)

    async def run(self) -> None:
        key = (self.access.sandbox.pk, self.service["url"])
        timeout = float(settings.SANDBOX_PROXY_TIMEOUT_SECONDS)
        request = self._request()
        response = None
        for attempt in range(3):
            try:
                conn = await _connection(self.access, self.service)
            except Exception as exc:  # any failure to connect is a 502 or 504
                if (
                    attempt == 0
                    and not isinstance(exc, TimeoutError)
                    and (transport.refusal(exc) is None)
                ):
                    moved = await in_thread(
                        previews.moved_service, sandbox=self.access.sandbox, service=self.service
                    )
                    if moved is not None:
                        self.service = moved
                        key = (self.access.sandbox.pk, moved["url"])
                        continue
                log.info("preview %s/%s: %r", self.access.sandbox.pk, self.service["name"], exc)
                await _answer(self.send, *_connect_error(exc, self.service))
                return
            try:
                await conn.send(request)
                await self._send_body(conn)
                response = await self._response_head(conn, timeout)
                break
            except TimeoutError:  # an OSError too: first
                conn.close()
                await _answer(
                    self.send, 504, "gateway_timeout", "the service did not answer in time"
                )
                return
            except (OSError, h11.ProtocolError, asyncio.IncompleteReadError) as exc:
                conn.close()
                if conn.used and not self.body_started and attempt < 2:
                    continue  # a kept connection the service had closed: once more, anew
                log.info("preview %s: %r", self.service["name"], exc)
                await _answer(self.send, 502, "bad_gateway", "the service did not answer")
                return
        if response is None:
            return
        await self._pass_back(conn, response, key, timeout)

    async def _send_body(self, conn: Connection) -> None:
        while not self.consumed:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                raise OSError("the client went away")
            body = message.get("body", b"")
            if not message.get("more_body", False):
                self.consumed = True
            if body:
                self.body_started = True
                await conn.send(h11.Data(data=body))
        await conn.send(h11.EndOfMessage())

    async def _response_head(self, conn: Connection, timeout: float) -> h11.Response:
        while True:
            event = await conn.next_event(timeout)
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                return event
            raise h11.RemoteProtocolError("no answer")

    async def _watch(self) -> None:
        while not self.disconnected.is_set():
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()

    async def _pass_back(
        self, conn: Connection, response: h11.Response, key: tuple[str, str], timeout: float
    ) -> None:
        origins = transport.origins(self.service["url"])
        await self.send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": _response_headers(list(response.headers), origins),
            }
        )
        watcher = asyncio.ensure_future(self._watch())
        complete = False
        try:
            while not self.disconnected.is_set():
                event = await conn.next_event(timeout)
                if isinstance(event, h11.Data):
                    await self.send(
                        {"type": "http.response.body", "body": bytes(event.data), "more_body": True}
                    )
                elif isinstance(event, h11.EndOfMessage):
                    complete = True
                    break
                else:
                    break
        except (OSError, TimeoutError, h11.ProtocolError) as exc:
            log.info("preview %s: the body broke off: %r", self.service["name"], exc)
        finally:
            watcher.cancel()
        if complete:
            _give_back(key, conn)
        else:
            conn.close()
        if not self.disconnected.is_set():
            # Short of complete: the server ends the answer short, as the service did.
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})


# --- websockets


async def _websocket(
    scope: Scope, receive: Receive, send: Send, port: int, sandbox_id: str
) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    access = await _access(scope, None, port, sandbox_id)
    if access is None:
        await send({"type": "websocket.close", "code": 1008})
        return
    try:
        upstream = await _open_websocket(scope, access)
    except InvalidStatus as exc:
        log.info("preview websocket refused upstream: %s", exc)
        await send({"type": "websocket.close", "code": 1008})
        return
    except Exception as exc:  # any other failure to reach it (InvalidHandshake, OSError)
        log.info("preview websocket: %r", exc)
        await send({"type": "websocket.close", "code": 1011})
        return
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
    await _relay(receive, send, upstream)


async def _open_websocket(scope: Scope, access: previews.Access) -> ClientConnection:
    upstream = await in_thread(
        transport.connect,
        sandbox=access.sandbox,
        url=access.service["url"],
        timeout=CONNECT_TIMEOUT,
    )
    headers = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in _upstream_headers(scope)
        if k not in (b"origin", b"user-agent")
    ]
    scheme = "wss" if upstream.tls_host else "ws"
    base = urlsplit(access.service["url"]).path.rstrip("/")
    uri = f"{scheme}://{_header(scope, b'host')}{base}{_path_and_query(scope)}"
    try:
        return await connect(
            uri,
            sock=upstream.sock,
            additional_headers=headers,
            origin=_header(scope, b"origin") or None,
            user_agent_header=_header(scope, b"user-agent") or None,
            subprotocols=scope.get("subprotocols") or None,
            compression=None,
            max_size=None,
            ping_interval=None,
            open_timeout=CONNECT_TIMEOUT,
            ssl=ssl.create_default_context() if upstream.tls_host else None,
            server_hostname=upstream.tls_host,
            proxy=None,
        )
    except BaseException:
        upstream.sock.close()
        raise


async def _relay(receive: Receive, send: Send, upstream: ClientConnection) -> None:
    async def to_upstream() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                await upstream.close(message.get("code", 1000))
                return
            if message.get("bytes") is not None:
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                await upstream.send(message["text"])

    async def to_client() -> None:
        try:
            async for data in upstream:
                if isinstance(data, str):
                    await send({"type": "websocket.send", "text": data})
                else:
                    await send({"type": "websocket.send", "bytes": data})
        except ConnectionClosed:
            pass
        code = upstream.close_code or 1000
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code if code != 1005 else 1000})

    tasks = [asyncio.ensure_future(to_upstream()), asyncio.ensure_future(to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await upstream.close()
