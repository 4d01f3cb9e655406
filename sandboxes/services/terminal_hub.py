"""Reconnecting terminal sessions: the web terminal's sessions outlive their websocket.

A ``LiveTerminal`` wraps one audited session (``terminals.open_terminal``) with what a
browser needs to come back to it: a reader thread that drains the terminal as long as the
session lives (attached or not: a build keeps running while its tab reloads), a bounded
scrollback (the last ``SANDBOX_TERMINAL_SCROLLBACK_BYTES`` of output) replayed to the
client that attaches, and a timer that ends a session nobody came back to within
``SANDBOX_TERMINAL_DETACH_SECONDS``. One client is attached at a time; a new one (the
reloaded page, a second tab with the same session) takes over and the old one is told.

Sessions live in this process (they hold its file descriptors: a pty master or a socket),
in a registry keyed by the session id, and are found again only by the user who opened
them, in the same sandbox. A client that reconnects must therefore reach the same web
process; see docs/operations.md ("Web terminals").

Threads, not the event loop: a provider session's ``read`` blocks (a thread each, which
costs little memory while idle), and closing one writes an audit row (database calls,
which must stay off an event loop). Every thread here closes its database connections
when it is done with them: none of them is a request, so Django would not.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from typing import Protocol

from django.conf import settings
from django.db import connections

from sandboxes.models import Sandbox
from sandboxes.services.actors import Actor
from sandboxes.services.errors import NotAllowed, ServiceError
from sandboxes.services.terminals import AuditedTerminal, open_terminal

log = logging.getLogger(__name__)

#: Output waiting for an attached client beyond this holds the reader back (and so the
#: program in the sandbox, as a slow terminal would) instead of piling up in memory.
MAX_IN_FLIGHT = 1024 * 1024
#: When the scrollback is trimmed, the cut moves forward to the next line start if one is
#: this close, so a replay does not begin inside an escape sequence or a UTF-8 character.
_TRIM_SLACK = 4096


class Client(Protocol):
    """The attached end (the websocket). Called from the reader thread, under the
    session's lock, so none of these may block or call back into the session."""

    def output(self, data: bytes) -> None: ...

    def ended(self, exit_code: int | None) -> None: ...

    def displaced(self) -> None: ...

    def wait_for_room(self) -> None:
        """Block (in the reader thread, outside the lock) while too much output waits."""


class Gone(ServiceError):
    """The session ended (or is not this user's, or not in this process)."""

    code = "terminal_gone"


class LiveTerminal:
    """One terminal session as the web terminal holds it (see the module)."""

    def __init__(self, terminal: AuditedTerminal, *, user_id: int, sandbox_id: str) -> None:
        self.terminal = terminal
        self.id = terminal.session_id
        self.user_id = user_id
        self.sandbox_id = sandbox_id
        self.opened_at = time.monotonic()
        self._lock = threading.Lock()
        self._scrollback = bytearray()
        self._limit = settings.SANDBOX_TERMINAL_SCROLLBACK_BYTES
        self._client: Client | None = None
        self._timer: threading.Timer | None = None
        self._ended = False
        self._reader = threading.Thread(target=self._pump, name=f"terminal-{self.id}", daemon=True)

    def __repr__(self) -> str:
        return f"<LiveTerminal {self.id} in {self.sandbox_id} attached={self.attached}>"

    @property
    def attached(self) -> bool:
        return self._client is not None

    @property
    def ended(self) -> bool:
        return self._ended

    def scrollback(self) -> bytes:
        with self._lock:
            return bytes(self._scrollback)

    # --- clients

    def attach(self, client: Client) -> bytes:
        """Make ``client`` the attached one; returns the scrollback to replay first. Every
        output after it goes to ``client`` (the two are taken under one lock, so nothing
        is lost or sent twice in between). Raises ``Gone`` once the session ended."""
        with self._lock:
            if self._ended:
                raise Gone("the terminal session has ended")
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            previous, self._client = self._client, client
            replay = bytes(self._scrollback)
            if previous is not None:
                previous.displaced()
        return replay

    def detach(self, client: Client) -> None:
        """``client`` went away: the session waits ``SANDBOX_TERMINAL_DETACH_SECONDS`` for
        one to attach, then ends."""
        with self._lock:
            if self._client is not client:
                return  # displaced already: the newer client owns the session
            self._client = None
            if self._ended:
                return
            delay = settings.SANDBOX_TERMINAL_DETACH_SECONDS
            self._timer = threading.Timer(delay, self._expire, args=(delay,))
            self._timer.daemon = True
            self._timer.name = f"terminal-detached-{self.id}"
            self._timer.start()

    # --- input

    def write(self, data: bytes) -> None:
        """Typed input (blocks while the terminal's input is full: call it off the loop)."""
        try:
            self.terminal.write(data)
        finally:
            connections.close_all()  # a note of activity may have opened one

    def resize(self, cols: int, rows: int) -> None:
        self.terminal.resize(cols, rows)

    # --- the end

    def close(self, reason: str) -> None:
        """End the session now (its processes are killed) and audit why. Idempotent."""
        try:
            self.terminal.close(reason)
        finally:
            connections.close_all()
        self._finish()

    def _expire(self, delay: int) -> None:
        with self._lock:
            if self._client is not None or self._ended:
                return  # attached again just as the timer fired
        self.close(f"detached for {delay} s")

    def _finish(self) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            client, self._client = self._client, None
            if client is not None:
                client.ended(self.terminal.exit_code)
        _forget(self)

    # --- output

    def start(self) -> None:
        self._reader.start()

    def _keep(self, chunk: bytes) -> None:
        self._scrollback += chunk
        excess = len(self._scrollback) - self._limit
        if excess > 0:
            newline = self._scrollback.find(b"\n", excess, excess + _TRIM_SLACK)
            del self._scrollback[: excess if newline < 0 else newline + 1]

    def _pump(self) -> None:
        """The reader thread: output to the scrollback and the attached client, until the
        terminal's output ends (the process exited, or the session was closed)."""
        try:
            while True:
                try:
                    chunk = self.terminal.read()
                except Exception:  # a broken terminal ends its session like an exit
                    log.exception("terminal %s: reading failed", self.id)
                    chunk = b""
                if not chunk:
                    break
                with self._lock:
                    self._keep(chunk)
                    client = self._client
                    if client is not None:
                        client.output(chunk)
                if client is not None:
                    client.wait_for_room()
            # The output ended by itself: the exit status follows at once (the process
            # and everything holding the terminal are gone), then the row is written.
            with contextlib.suppress(Exception):
                self.terminal.wait(timeout=5)
            self.close("the process ended")  # a no-op when closed already: first reason wins
        finally:
            connections.close_all()


_registry: dict[str, LiveTerminal] = {}
_registry_lock = threading.Lock()


def _forget(live: LiveTerminal) -> None:
    with _registry_lock:
        if _registry.get(live.id) is live:
            del _registry[live.id]


def sessions() -> list[LiveTerminal]:
    """Every live session of this process."""
    with _registry_lock:
        return list(_registry.values())


def open_session(*, sandbox: Sandbox, actor: Actor, cols: int = 80, rows: int = 24) -> LiveTerminal:
    """A new session (a login shell) for ``actor``, a user: the service's checks and audit
    apply (``terminals.open_terminal``). Beyond ``SANDBOX_TERMINAL_MAX_SESSIONS`` of the
    user's in this process, the oldest detached one is ended to make room; when every one
    is attached, the request is refused."""
    if actor.user is None or actor.token is not None:
        raise NotAllowed("web terminals are for signed-in people, not API tokens")
    mine = sorted((s for s in sessions() if s.user_id == actor.user.pk), key=lambda s: s.opened_at)
    excess = len(mine) + 1 - settings.SANDBOX_TERMINAL_MAX_SESSIONS
    if excess > 0:
        detached = [s for s in mine if not s.attached]
        if len(detached) < excess:
            raise NotAllowed(
                f"you have {len(mine)} terminal sessions open; close one first "
                f"(at most {settings.SANDBOX_TERMINAL_MAX_SESSIONS})"
            )
        for old in detached[:excess]:
            old.close("replaced by a newer session (too many open)")
    terminal = open_terminal(sandbox=sandbox, actor=actor, cols=cols, rows=rows)
    live = LiveTerminal(terminal, user_id=actor.user.pk, sandbox_id=sandbox.pk)
    with _registry_lock:
        _registry[live.id] = live
    live.start()
    return live


def find_session(session_id: str, *, sandbox: Sandbox, actor: Actor) -> LiveTerminal:
    """The live session ``session_id`` of ``actor`` in ``sandbox``, to attach to again.

    Raises ``Gone`` when there is none here (ended, another user's, another sandbox's,
    or opened by another web process: they are indistinguishable on purpose). A user who
    can no longer write in the team (made a viewer since) gets it ended instead."""
    with _registry_lock:
        live = _registry.get(session_id)
    if (
        live is None
        or actor.user is None
        or live.user_id != actor.user.pk
        or live.sandbox_id != sandbox.pk
    ):
        raise Gone("that terminal session has ended")
    if not actor.can_write(sandbox.team):
        live.close("the user may no longer open terminals here")
        raise NotAllowed("your role in this team cannot open a terminal")
    return live


def close_all(reason: str, *, only: Iterable[LiveTerminal] | None = None) -> int:
    """End every session of this process (at shutdown); how many there were."""
    chosen = list(sessions() if only is None else only)
    for live in chosen:
        try:
            live.close(reason)
        except Exception:  # one failing must not keep the others open
            log.exception("terminal %s: closing failed", live.id)
    return len(chosen)
