"""The web terminal's websocket, through a real uvicorn serving ``config.asgi`` on loopback.

Who gets a terminal (a signed-in writer of the sandbox's team, from a page of this site),
the messages, reattaching with the scrollback replayed, and the end of a session nobody
came back to, with its audit row. The in-memory provider's terminal is a real pty on the
host; the browser test (tests/browser/test_terminal_e2e.py) uses the local provider.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from django.test import Client
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from sandboxes.models import Membership, Outcome, Sandbox, SandboxEvent
from sandboxes.services import lifecycle, terminal_hub
from sandboxes.services.actors import Actor
from sandboxes.services.errors import NotAllowed

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 30  # seconds: how long a test waits for something that must happen (not a timing)


@pytest.fixture
def server(asgi_live_server, settings):
    # Whatever a test leaves open ends with the server (its lifespan shutdown).
    settings.SANDBOX_TERMINAL_DETACH_SECONDS = 300
    return asgi_live_server


@pytest.fixture
def sandbox(memory_backend, team, member) -> Sandbox:
    created = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(member), preset_id="1vcpu_1gb_8gb"
    )
    created.refresh_from_db()
    assert created.status == "running"
    return created


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def open_socket(
    server, sandbox_id: str, cookie: str | None, *, origin: str | None = "", query: str = ""
) -> ClientConnection:
    headers = {"Cookie": cookie} if cookie else {}
    return connect(
        f"{server.ws_url}/ws/sandboxes/{sandbox_id}/terminal/{query}",
        origin=server.url if origin == "" else origin,
        additional_headers=headers,
        open_timeout=WAIT,
    )


def refused(server, sandbox_id: str, cookie: str | None, **kwargs) -> int:
    """The HTTP status the handshake was answered with (it must not be accepted)."""
    with pytest.raises(InvalidStatus) as refusal:
        open_socket(server, sandbox_id, cookie, **kwargs).close()
    return refusal.value.response.status_code


class Screen:
    """What one connection received: output bytes and control messages, in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.output = b""
        self.controls: list[dict] = []

    def next(self) -> str | bytes:
        frame = self.ws.recv(timeout=WAIT)
        if isinstance(frame, bytes):
            self.output += frame
        else:
            self.controls.append(json.loads(frame))
        return frame

    def control(self, kind: str) -> dict:
        while True:
            for message in self.controls:
                if message["type"] == kind:
                    return message
            self.next()

    def until(self, pattern: bytes) -> bytes:
        while not re.search(pattern, self.output):
            self.next()
        return self.output

    def closed(self) -> int:
        """Read to the end; the close code."""
        while True:
            try:
                self.next()
            except ConnectionClosed as end:
                return end.rcvd.code if end.rcvd else -1


def terminal_events(sandbox: Sandbox) -> list[SandboxEvent]:
    return list(
        SandboxEvent.objects.filter(sandbox=sandbox, action__startswith="terminal_").order_by("id")
    )


def wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT
    while not (found := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {WAIT} s for {what}")
        time.sleep(0.05)
    return found


def test_a_member_types_sees_the_output_and_the_session_is_audited(server, sandbox, member):
    with open_socket(server, sandbox.pk, session_cookie(member), query="?cols=90&rows=20") as ws:
        screen = Screen(ws)
        attached = screen.control("attached")
        assert attached["resumed"] is False
        ws.send(b"stty size; echo sbx-$((6*7))\n")
        screen.until(rb"20 90\r\n")
        screen.until(rb"sbx-42")
        ws.send(json.dumps({"type": "close"}))
        assert screen.control("exit")["type"] == "exit"
        assert screen.closed() == 1000
    opened, closed = terminal_events(sandbox)
    assert (opened.action, opened.outcome, opened.actor_user) == (
        "terminal_open",
        Outcome.SUCCEEDED,
        member,
    )
    assert opened.data["session"] == attached["session"]
    assert (closed.action, closed.data["reason"]) == ("terminal_close", "closed by the user")
    assert closed.data["duration_seconds"] > 0
    assert terminal_hub.sessions() == []


def test_the_handshake_needs_a_signed_in_user(server, sandbox, member):
    assert refused(server, sandbox.pk, None) == 403
    assert refused(server, sandbox.pk, "sessionid=not-a-session") == 403
    cookie = session_cookie(member)
    member.set_password("changed-password")  # a password change ends every session
    member.save()
    assert refused(server, sandbox.pk, cookie) == 403
    assert terminal_events(sandbox) == []


def test_another_teams_sandbox_is_refused_as_if_missing(server, sandbox, outsider):
    assert refused(server, sandbox.pk, session_cookie(outsider)) == 403
    assert refused(server, "sbx-doesnotexist", session_cookie(outsider)) == 403
    assert terminal_events(sandbox) == []


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://127.0.0.1.evil.example",
        "https://127.0.0.1",  # another scheme is another origin
        "null",  # a sandboxed iframe, a file: page
        None,  # no Origin at all: not a browser page of this site
    ],
)
def test_a_foreign_origin_is_refused(server, sandbox, member, origin):
    # A page elsewhere cannot drive a signed-in user's terminal with their cookie.
    assert refused(server, sandbox.pk, session_cookie(member), origin=origin) == 403
    assert terminal_events(sandbox) == []


def test_the_ports_origin_must_match_too_and_trusted_origins_are_allowed(
    server, sandbox, member, settings
):
    other_port = f"http://127.0.0.1:{server.port + 1}"
    assert refused(server, sandbox.pk, session_cookie(member), origin=other_port) == 403
    settings.CSRF_TRUSTED_ORIGINS = ["https://*.proxy.example"]
    with open_socket(
        server, sandbox.pk, session_cookie(member), origin="https://dash.proxy.example"
    ) as ws:
        Screen(ws).control("attached")


def test_a_viewer_gets_nothing_and_the_attempt_is_audited(server, sandbox, viewer):
    assert refused(server, sandbox.pk, session_cookie(viewer)) == 403
    [event] = terminal_events(sandbox)
    assert (event.action, event.outcome, event.actor_user) == (
        "terminal_open",
        Outcome.REFUSED,
        viewer,
    )
    assert terminal_hub.sessions() == []


def test_reattaching_replays_the_scrollback_and_keeps_the_shell(server, sandbox, member):
    cookie = session_cookie(member)
    with open_socket(server, sandbox.pk, cookie) as ws:
        first = Screen(ws)
        session = first.control("attached")["session"]
        ws.send(b"MARK=kept; echo before-$((6*7))\n")
        first.until(rb"before-42")
    # The connection dropped (a reload): the session waits for its client.
    [live] = wait_for(lambda: [s for s in terminal_hub.sessions() if not s.attached], "detach")
    assert live.id == session
    with open_socket(server, sandbox.pk, cookie, query=f"?session={session}") as ws:
        again = Screen(ws)
        assert again.control("attached") == {
            "type": "attached",
            "session": session,
            "resumed": True,
        }
        again.until(rb"before-42")  # the scrollback, replayed first
        ws.send(b"echo after-$MARK\n")  # the same shell: its variable is still set
        again.until(rb"after-kept")
    assert [e.action for e in terminal_events(sandbox)] == ["terminal_open"]


def test_a_session_is_found_only_by_its_owner(server, sandbox, member, team, django_user_model):
    colleague = django_user_model.objects.create_user(username="bob", password="pw-bob")
    Membership.objects.create(user=colleague, team=team, role="member")
    with open_socket(server, sandbox.pk, session_cookie(member)) as ws:
        session = Screen(ws).control("attached")["session"]
        with open_socket(
            server, sandbox.pk, session_cookie(colleague), query=f"?session={session}"
        ) as theirs:
            screen = Screen(theirs)
            assert screen.control("gone")["type"] == "gone"
            assert screen.closed() == 4004
        ws.send(b"echo still-mine\n")
        Screen(ws).until(rb"still-mine")


def test_a_new_client_takes_the_session_over(server, sandbox, member):
    cookie = session_cookie(member)
    with open_socket(server, sandbox.pk, cookie) as ws:
        first = Screen(ws)
        session = first.control("attached")["session"]
        with open_socket(server, sandbox.pk, cookie, query=f"?session={session}") as ws2:
            Screen(ws2).control("attached")
            assert first.control("displaced")["type"] == "displaced"
            assert first.closed() == 4001
            ws2.send(b"echo second-$((1+1))\n")
            Screen(ws2).until(rb"second-2")


def test_a_detached_session_ends_after_the_timeout_and_is_audited(
    server, sandbox, member, settings
):
    settings.SANDBOX_TERMINAL_DETACH_SECONDS = 1
    cookie = session_cookie(member)
    with open_socket(server, sandbox.pk, cookie) as ws:
        session = Screen(ws).control("attached")["session"]
    closed = wait_for(
        lambda: SandboxEvent.objects.filter(sandbox=sandbox, action="terminal_close").first(),
        "the detached session's end",
    )
    assert closed.outcome == Outcome.SUCCEEDED
    assert closed.actor_user == member
    assert (closed.data["session"], closed.data["reason"]) == (session, "detached for 1 s")
    assert closed.data["duration_seconds"] >= 1
    assert terminal_hub.sessions() == []
    with open_socket(server, sandbox.pk, cookie, query=f"?session={session}") as ws:
        screen = Screen(ws)
        assert "ended" in screen.control("gone")["message"]
        assert screen.closed() == 4004


def test_the_shell_exiting_ends_the_session(server, sandbox, member):
    with open_socket(server, sandbox.pk, session_cookie(member)) as ws:
        screen = Screen(ws)
        screen.control("attached")
        ws.send(b"exit 3\n")
        assert screen.control("exit")["code"] == 3
        assert screen.closed() == 1000
    closed = terminal_events(sandbox)[-1]
    assert (closed.action, closed.data["exit_code"]) == ("terminal_close", 3)
    assert closed.data["reason"] == "the process ended"


def test_resizing(server, sandbox, member):
    with open_socket(server, sandbox.pk, session_cookie(member)) as ws:
        screen = Screen(ws)
        screen.control("attached")
        ws.send(json.dumps({"type": "resize", "cols": 0, "rows": 5}))
        assert "columns and rows" in screen.control("error")["message"]
        ws.send(json.dumps({"type": "resize", "cols": 101, "rows": 33}))
        ws.send(b"stty size\n")
        screen.until(rb"33 101\r\n")


def test_a_sandbox_that_is_not_running_says_why(server, sandbox, member):
    lifecycle.pause_sandbox(sandbox=sandbox, actor=Actor.for_user(member))
    with open_socket(server, sandbox.pk, session_cookie(member)) as ws:
        screen = Screen(ws)
        assert "paused" in screen.control("error")["message"]
        assert screen.closed() == 4011
    assert terminal_hub.sessions() == []


def test_a_stopping_server_ends_its_sessions_with_their_audit_rows(sandbox, member):
    from tests.asgi_server import asgi_server

    with asgi_server() as server, open_socket(server, sandbox.pk, session_cookie(member)) as ws:
        Screen(ws).control("attached")
    closed = terminal_events(sandbox)[-1]
    assert (closed.action, closed.data["reason"]) == ("terminal_close", "the web server stopped")
    assert terminal_hub.sessions() == []


class Quiet:
    """A client that takes output and never pushes back (``terminal_hub.Client``)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def output(self, data: bytes) -> None:
        pass

    def ended(self, exit_code: int | None) -> None:
        self.events.append("ended")

    def displaced(self) -> None:
        self.events.append("displaced")

    def wait_for_room(self) -> None:
        pass


def test_the_scrollback_is_bounded_and_starts_at_a_line(sandbox, member, settings):
    settings.SANDBOX_TERMINAL_SCROLLBACK_BYTES = 4096
    live = terminal_hub.open_session(sandbox=sandbox, actor=Actor.for_user(member))
    try:
        live.write(b"seq 1 30000; echo done-$((6*7))\n")  # about 170 KB of output
        wait_for(lambda: b"done-42\r\n" in live.scrollback(), "the output")
        kept = live.scrollback()
        assert len(kept) <= 4096
        assert kept.split(b"\r\n", 1)[0].isdigit()  # a whole line first, not half of one
        assert b"29999\r\n30000\r\n" in kept  # the newest output is what is kept
    finally:
        live.close("test over")


def test_too_many_sessions_end_the_oldest_detached_one(sandbox, member, settings):
    settings.SANDBOX_TERMINAL_MAX_SESSIONS = 2
    actor = Actor.for_user(member)
    first = terminal_hub.open_session(sandbox=sandbox, actor=actor)
    second = terminal_hub.open_session(sandbox=sandbox, actor=actor)
    clients = [Quiet(), Quiet()]
    first.attach(clients[0])
    second.attach(clients[1])
    try:
        with pytest.raises(NotAllowed):  # every one is in use: refused
            terminal_hub.open_session(sandbox=sandbox, actor=actor)
        first.detach(clients[0])
        third = terminal_hub.open_session(sandbox=sandbox, actor=actor)
        assert first.ended
        assert not second.ended
        assert {s.id for s in terminal_hub.sessions()} == {second.id, third.id}
        closed = SandboxEvent.objects.get(action="terminal_close", data__session=first.id)
        assert closed.data["reason"] == "replaced by a newer session (too many open)"
    finally:
        terminal_hub.close_all("test over")
