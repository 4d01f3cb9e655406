"""Whatever an upstream service does wrong, the proxy answers 502 or 504, never a 500.

Each upstream is a raw-socket server on 127.0.0.1 that sends exactly the bytes a case
needs; the sandbox comes from the in-memory provider, its service row points there.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import pytest

from sandboxes.models import Sandbox
from sandboxes.services import lifecycle
from sandboxes.services.actors import Actor
from tests.tcp_server import TcpServer

pytestmark = pytest.mark.django_db(transaction=True)


class RawUpstream(TcpServer):
    """Answers every connection with ``behave(conn)`` after reading the request head."""

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        self.behave = behave
        super().__init__(serve=self._answer)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            self.behave(conn)
        except OSError:
            pass
        finally:
            conn.close()


def send(data: bytes) -> Callable[[socket.socket], None]:
    return lambda conn: conn.sendall(data)


def reset_after(data: bytes) -> Callable[[socket.socket], None]:
    def behave(conn: socket.socket) -> None:
        conn.sendall(data)
        time.sleep(0.05)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return behave


def hang(conn: socket.socket) -> None:
    time.sleep(3)


BIG = b"x" * (100 * 1024)
CASES = {
    "bad status line": (send(b"HTTP/1.1 abc Nope\r\n\r\n"), 502),
    "not http at all": (send(b"SSH-2.0-OpenSSH_9.6\r\n"), 502),
    "status 999": (send(b"HTTP/1.1 999 Weird\r\nContent-Length: 0\r\n\r\n"), 502),
    "status 600": (send(b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n"), 502),
    "status 101 unasked": (send(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"), 502),
    "malformed header line": (
        send(b"HTTP/1.1 200 OK\r\nGood: yes\r\nthis is no header\r\nContent-Length: 2\r\n\r\nhi"),
        502,
    ),
    "header continuation garbage": (
        send(b"HTTP/1.1 200 OK\r\n : folded\r\nContent-Length: 0\r\n\r\n"),
        502,
    ),
    "reset mid-headers": (reset_after(b"HTTP/1.1 200 OK\r\nX-Partial: "), 502),
    "closed mid-status-line": (send(b"HTTP/1.1 20"), 502),
    "closed before answering": (send(b""), 502),
    "100 KB header line": (send(b"HTTP/1.1 200 OK\r\nX-Big: " + BIG + b"\r\n\r\n"), 502),
    "100 KB of headers": (
        send(
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-H%d: " % i + b"y" * 2000 + b"\r\n" for i in range(50))
            + b"Content-Length: 0\r\n\r\n"
        ),
        502,
    ),
    "too many headers": (
        send(
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-H%d: z\r\n" % i for i in range(300))
            + b"Content-Length: 0\r\n\r\n"
        ),
        502,
    ),
    "no answer in time": (hang, 504),
}


@pytest.fixture
def sandbox(memory_backend, team, member, settings):
    settings.SANDBOX_PROXY_TIMEOUT_SECONDS = 1
    made = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(member), preset_id="1vcpu_1gb_8gb"
    )
    made.refresh_from_db()
    return made


def point_at(sandbox: Sandbox, port: int) -> None:
    service = {"name": "web", "port": 8080, "url": f"http://127.0.0.1:{port}/"}
    Sandbox.objects.filter(pk=sandbox.pk).update(services=[service])


@pytest.mark.parametrize("case", CASES)
def test_upstream_misbehaviour_is_a_bad_gateway_or_a_timeout(sandbox, client, member, case):
    behave, status = CASES[case]
    upstream = RawUpstream(behave)
    try:
        point_at(sandbox, upstream.port)
        client.force_login(member)
        started = time.monotonic()
        response = client.get(f"/s/{sandbox.pk}/web/page")
        assert response.status_code == status
        code = "gateway_timeout" if status == 504 else "bad_gateway"
        assert response.json()["error"]["code"] == code
        assert upstream.connections >= 1
        assert time.monotonic() - started < 10
    finally:
        upstream.close()


def test_a_body_that_breaks_off_ends_the_answer_short(sandbox, client, member):
    upstream = RawUpstream(reset_after(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten.."))
    try:
        point_at(sandbox, upstream.port)
        client.force_login(member)
        response = client.get(f"/s/{sandbox.pk}/web/")
        assert response.status_code == 200  # sent before the body broke off
        assert b"only ten..".startswith(b"".join(response.streaming_content))
    finally:
        upstream.close()


def test_a_well_behaved_upstream_still_works(sandbox, client, member):
    upstream = RawUpstream(
        send(b"HTTP/1.1 299 Fine\r\nX-Ok: yes\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    )
    try:
        point_at(sandbox, upstream.port)
        client.force_login(member)
        response = client.get(f"/s/{sandbox.pk}/web/")
        assert response.status_code == 299
        assert response["X-Ok"] == "yes"
        assert b"".join(response.streaming_content) == b"ok"
    finally:
        upstream.close()
