"""The service proxy keeps its connections to an upstream alive, and keeps no cookies.

Each web process shares one HTTP session per kind of upstream address among all its
requests (sandboxes/services/transport.py): a second request reuses the first one's
connection, and what one upstream sets as a cookie is never sent to an upstream again.
"""

from __future__ import annotations

import socket

import pytest

from sandboxes.models import Sandbox
from sandboxes.services import lifecycle
from sandboxes.services.actors import Actor
from tests.tcp_server import TcpServer

pytestmark = pytest.mark.django_db(transaction=True)


class KeepAliveUpstream(TcpServer):
    """HTTP/1.1 with keep-alive: answers every request on a connection, records the heads."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        super().__init__(serve=self._serve_connection)

    def _serve_connection(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        buffered = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffered:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffered += chunk
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                self.heads.append(head)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nSet-Cookie: upstream=secret; Path=/\r\n"
                    b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
                )
        except OSError:
            pass
        finally:
            conn.close()


@pytest.fixture
def boxes(memory_backend, team, member) -> list[Sandbox]:
    made = []
    for _ in range(2):
        box = lifecycle.create_sandbox(
            team=team, actor=Actor.for_user(member), preset_id="1vcpu_1gb_8gb"
        )
        made.append(box)
    return made


def test_requests_reuse_the_upstream_connection_and_carry_no_cookie_it_set(boxes, client, member):
    upstream = KeepAliveUpstream()
    try:
        service = {"name": "web", "port": 8080, "url": f"http://127.0.0.1:{upstream.port}/"}
        Sandbox.objects.filter(pk__in=[b.pk for b in boxes]).update(services=[service])
        client.force_login(member)
        for box in [*boxes, *boxes]:
            response = client.get(f"/s/{box.pk}/web/page")
            assert response.status_code == 200
            assert b"".join(response.streaming_content) == b"ok"
            assert "Set-Cookie" not in response  # never onto the dashboard's origin
        assert len(upstream.heads) == 4
        assert upstream.connections == 1  # kept alive, across sandboxes at one address
        for head in upstream.heads:
            assert b"\r\ncookie:" not in head.lower()  # not the caller's, not the upstream's
    finally:
        upstream.close()
