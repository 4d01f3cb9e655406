"""Websockets on the ASGI application: the web terminal (``/ws/sandboxes/<id>/terminal/``).

``config/asgi.py`` hands every ``websocket`` scope here (HTTP goes to Django); see
docs/architecture.md ("Serving") for why a small handler rather than Django Channels.

The handshake is refused (HTTP 403, nothing accepted) unless all of these hold:

* the ``Origin`` is this site's: the ``Host`` (one of ``ALLOWED_HOSTS``) with the
  request's scheme, or one of ``CSRF_TRUSTED_ORIGINS``. Browsers send cookies with a
  websocket handshake from any page, so without this any site could drive a signed-in
  user's terminal (cross-site websocket hijacking); the same-origin policy does not apply
  to websockets.
* the Django session cookie names a signed-in user (the same session as the dashboard's:
  a password change ends it, as it ends the dashboard's);
* the sandbox is in the user's current team (as every dashboard URL; others look like a
  missing sandbox), and the user may write there: viewers are refused by the terminals
  service, which audits the refusal. API tokens are never accepted here.

Then: ``?session=<id>`` attaches to that session again (the scrollback replays first), or
without it a new session opens (``?cols=&rows=`` its size). Messages:

* client to server: binary frames are typed input (bytes, as they are); text frames are
  JSON: ``{"type": "resize", "cols": C, "rows": R}`` or ``{"type": "close"}`` (end the
  session now).
* server to client: binary frames are terminal output; text frames are JSON:
  ``{"type": "attached", "session": id, "resumed": bool}`` first, then possibly
  ``{"type": "exit", "code": n}`` (the session ended; the socket closes),
  ``{"type": "displaced"}`` (another client attached to the session),
  ``{"type": "gone", "message": ...}`` (no such session here) or
  ``{"type": "error", "message": ...}``.

Bytes go to and from the provider's session in threads (``terminal_hub``), never on the
event loop; output is batched per send and held back (the reader waits) while more than
``terminal_hub.MAX_IN_FLIGHT`` bytes wait for a slow client.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.contrib.auth import get_user
from django.db import connections
from django.http import HttpRequest
from django.http.cookie import parse_cookie
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain
from django.utils.module_loading import import_string

from sandboxes import selectors
from sandboxes.current_team import team_context
from sandboxes.models import Sandbox
from sandboxes.services import terminal_hub
from sandboxes.services.actors import Actor
from sandboxes.services.errors import InvalidInput, NotAllowed, ServiceError

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
T = TypeVar("T")

TERMINAL_PATH = re.compile(r"/ws/sandboxes/(?P<sandbox_id>[A-Za-z0-9_-]{1,64})/terminal/")
#: Close codes the page acts on (4000-4999 are the application's).
CLOSE_NORMAL = 1000
CLOSE_DISPLACED = 4001
CLOSE_GONE = 4004
CLOSE_REFUSED = 4003
CLOSE_FAILED = 4011
#: A control message (resize, close) is a few dozen bytes.
MAX_CONTROL_MESSAGE = 1024

#: Writes into terminals block while a terminal's input is full, so they get threads of
#: their own rather than the loop's default executor (which other work shares). At most
#: one write per connection runs at a time; threads are made only when needed.
_writers = ThreadPoolExecutor(max_workers=256, thread_name_prefix="terminal-write")


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a thread, with that thread's database connections closed
    after it (nothing here is a request, so Django would not close them)."""

    def call() -> T:
        try:
            return function(*args)
        finally:
            connections.close_all()

    return await asyncio.get_running_loop().run_in_executor(None, call)


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    """Every websocket connection of the site."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    match = TERMINAL_PATH.fullmatch(scope["path"])
    if match is None:
        await send({"type": "websocket.close", "code": 1008})
        return
    await TerminalSocket(scope, receive, send, match["sandbox_id"]).run()


# --- the handshake's checks


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return ""


def is_secure(scope: Scope) -> bool:
    """As ``HttpRequest.is_secure``: wss, or the TLS proxy's header where one is trusted."""
    if scope.get("scheme") == "wss":
        return True
    header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if header:
        name, expected = header
        wanted = name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin-1")
        return _header(scope, wanted).split(",")[0].strip() == expected
    return False


def origin_allowed(scope: Scope) -> bool:
    """Whether the handshake comes from a page of this site (see the module)."""
    origin = _header(scope, b"origin")
    host = _header(scope, b"host")
    if not origin or origin == "null" or not host:
        return False
    domain, _port = split_domain_port(host)
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]  # as Django's get_host
    if not domain or not validate_host(domain, allowed_hosts):
        return False
    scheme = "https" if is_secure(scope) else "http"
    if origin == f"{scheme}://{host}":
        return True
    # CSRF_TRUSTED_ORIGINS, as Django's CSRF check reads them (a "*." wildcard included).
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    parsed = urlsplit(origin)
    return any(
        "*" in trusted
        and urlsplit(trusted).scheme == parsed.scheme
        and is_same_domain(parsed.netloc, urlsplit(trusted).netloc.replace("*", "", 1))
        for trusted in settings.CSRF_TRUSTED_ORIGINS
    )


@dataclass
class Person:
    """Who is on the other end, and the sandbox they asked for."""

    actor: Actor
    sandbox: Sandbox


def authenticate(scope: Scope, sandbox_id: str) -> Person | None:
    """The signed-in user of the session cookie and the sandbox in their current team;
    None when there is no such user or no such sandbox for them (runs in a thread)."""
    cookies = parse_cookie(_header(scope, b"cookie"))
    key = cookies.get(settings.SESSION_COOKIE_NAME)
    if not key:
        return None
    request = HttpRequest()
    request.META = {"REMOTE_ADDR": (scope.get("client") or ("", 0))[0]}
    engine = import_string(settings.SESSION_ENGINE + ".SessionStore")
    request.session = engine(key)
    user = get_user(request)  # checks the session's auth hash: a changed password is out
    if not user.is_authenticated:
        return None
    request.user = user
    context = team_context(request)
    if context is None:
        return None
    try:
        sandbox = selectors.get_sandbox(team=context.team, sandbox_id=sandbox_id)
    except Sandbox.DoesNotExist:
        return None
    return Person(Actor.for_user(user), sandbox)


def _size(query: dict[str, list[str]]) -> tuple[int, int]:
    try:
        return int(query.get("cols", ["80"])[0]), int(query.get("rows", ["24"])[0])
    except ValueError:
        raise InvalidInput("cols and rows are whole numbers") from None


# --- the connection


class TerminalSocket:
    """One websocket connection: attached to one ``LiveTerminal`` (see the module)."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, sandbox_id: str) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.sandbox_id = sandbox_id
        self.loop = asyncio.get_running_loop()
        # What the reader thread hands over (output, the end), in order; appending to a
        # deque is thread-safe, and the event wakes the sender once per batch.
        self.outbox: collections.deque[tuple[str, Any]] = collections.deque()
        self.wake = asyncio.Event()
        self.live: terminal_hub.LiveTerminal | None = None
        # Flow control between the reader thread and the sender (see wait_for_room).
        self._room = threading.Condition()
        self._in_flight = 0
        self._gone = False

    # terminal_hub.Client: called from the session's reader thread, under its lock.

    def _post(self, item: tuple[str, Any]) -> None:
        self.outbox.append(item)
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody to tell
            self.loop.call_soon_threadsafe(self.wake.set)

    def output(self, data: bytes) -> None:
        with self._room:
            self._in_flight += len(data)
        self._post(("output", data))

    def ended(self, exit_code: int | None) -> None:
        self._post(("exit", exit_code))

    def displaced(self) -> None:
        self._post(("displaced", None))

    def wait_for_room(self) -> None:
        with self._room:
            self._room.wait_for(lambda: self._gone or self._in_flight <= terminal_hub.MAX_IN_FLIGHT)

    def _sent(self, count: int) -> None:
        with self._room:
            self._in_flight -= count
            self._room.notify_all()

    def _leave(self) -> None:
        with self._room:
            self._gone = True
            self._room.notify_all()

    # the connection's life

    async def refuse(self) -> None:
        """Before accepting: the server answers the handshake with 403."""
        await self.send({"type": "websocket.close", "code": CLOSE_REFUSED})

    async def send_json(self, payload: dict[str, Any]) -> None:
        await self.send({"type": "websocket.send", "text": json.dumps(payload)})

    async def end(self, code: int, payload: dict[str, Any] | None = None) -> None:
        if payload is not None:
            await self.send_json(payload)
        await self.send({"type": "websocket.close", "code": code})

    async def run(self) -> None:
        if not origin_allowed(self.scope):
            log.warning("terminal websocket refused: origin %r", _header(self.scope, b"origin"))
            await self.refuse()
            return
        person = await in_thread(authenticate, self.scope, self.sandbox_id)
        if person is None:
            await self.refuse()
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        wanted = query.get("session", [""])[0]
        try:
            if wanted:
                live = await in_thread(
                    lambda: terminal_hub.find_session(
                        wanted, sandbox=person.sandbox, actor=person.actor
                    )
                )
            else:
                cols, rows = _size(query)
                live = await in_thread(
                    lambda: terminal_hub.open_session(
                        sandbox=person.sandbox, actor=person.actor, cols=cols, rows=rows
                    )
                )
        except NotAllowed:
            await self.refuse()  # a viewer (audited by the service), or no longer a writer
            return
        except terminal_hub.Gone as gone:
            await self.send({"type": "websocket.accept"})
            await self.end(CLOSE_GONE, {"type": "gone", "message": gone.message})
            return
        except ServiceError as failed:  # not running, no terminal here, provider failure
            await self.send({"type": "websocket.accept"})
            await self.end(CLOSE_FAILED, {"type": "error", "message": failed.message})
            return
        try:
            # Attached before anything is sent: should the client vanish meanwhile, the
            # detach below still starts the session's countdown (it never leaks).
            replay = live.attach(self)
        except terminal_hub.Gone as gone:
            await self.send({"type": "websocket.accept"})
            await self.end(CLOSE_GONE, {"type": "gone", "message": gone.message})
            return
        self.live = live
        try:
            await self.send({"type": "websocket.accept"})
            await self.send_json({"type": "attached", "session": live.id, "resumed": bool(wanted)})
            if replay:
                await self.send({"type": "websocket.send", "bytes": replay})
            await self._converse(live)
        except OSError:
            pass  # the client went away (uvicorn's ClientDisconnected)
        finally:
            self._leave()
            live.detach(self)

    async def _converse(self, live: terminal_hub.LiveTerminal) -> None:
        """Input until the client leaves, output until the session ends: whichever first."""
        sender = asyncio.ensure_future(self._send_output())
        receiver = asyncio.ensure_future(self._receive_input(live))
        done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        for task in done:
            with contextlib.suppress(OSError):  # the client vanished mid-send
                task.result()

    async def _receive_input(self, live: terminal_hub.LiveTerminal) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data:
                try:
                    await self.loop.run_in_executor(_writers, live.write, data)
                except ServiceError:
                    return  # the session is closing; the sender reports how it ended
                except Exception:
                    log.exception("terminal %s: writing failed", live.id)
                    return
                continue
            text = message.get("text") or ""
            if not text or len(text) > MAX_CONTROL_MESSAGE:
                continue
            with contextlib.suppress(ValueError):
                await self._control(live, json.loads(text))

    async def _control(self, live: terminal_hub.LiveTerminal, command: Any) -> None:
        if not isinstance(command, dict):
            return
        if command.get("type") == "resize":
            try:
                await self.loop.run_in_executor(
                    _writers, live.resize, command.get("cols"), command.get("rows")
                )
            except InvalidInput as bad:
                await self.send_json({"type": "error", "message": bad.message})
            except ServiceError:
                pass  # closing: the sender reports the end
            except Exception:  # the provider's Conflict once the session is closed
                log.debug("terminal %s: resize after the end", live.id, exc_info=True)
        elif command.get("type") == "close":
            await in_thread(live.close, "closed by the user")

    async def _send_output(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            chunks: list[bytes] = []
            while self.outbox:
                kind, value = self.outbox.popleft()
                if kind == "output":
                    # Everything already handed over goes out as one frame: fewer, larger
                    # sends under a burst, and no added wait for one keystroke's echo.
                    chunks.append(value)
                    continue
                if chunks:
                    await self._send_bytes(chunks)
                    chunks = []
                if kind == "exit":
                    await self.end(CLOSE_NORMAL, {"type": "exit", "code": value})
                    return
                if kind == "displaced":
                    await self.end(
                        CLOSE_DISPLACED,
                        {"type": "displaced", "message": "the session was opened elsewhere"},
                    )
                    return
            if chunks:
                await self._send_bytes(chunks)

    async def _send_bytes(self, chunks: list[bytes]) -> None:
        data = b"".join(chunks)
        await self.send({"type": "websocket.send", "bytes": data})
        self._sent(len(data))
