"""Preview hosts (sandboxes/preview.py): each exposed service at ``<port>-<sandbox id>.
localhost``, served by the site's ASGI application under a real uvicorn, in front of real
upstream servers on 127.0.0.1 (HTTP/1.1 with keep-alive, and websockets)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.test import Client
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

from sandboxes.models import Sandbox, SandboxEvent
from sandboxes.services import interactive, lifecycle, previews
from sandboxes.services.actors import Actor
from sandboxes.services.tokens import create_api_token
from sandboxes.states import Status

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_admissions(monkeypatch):
    """Each test sees every request checked (the admission cache is per process)."""
    from sandboxes import preview

    monkeypatch.setattr(preview, "_admitted", {})


BIG = 256 * 1024 * 1024  # well past any buffer: a cap or a whole-body read would show


class Upstream:
    """An HTTP/1.1 service with keep-alive; records each request's head."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.connections = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                outer.connections += 1
                super().setup()

            def log_message(self, *args) -> None:
                pass

            def _record(self) -> None:
                outer.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }
                )

            def do_GET(self) -> None:
                self._record()
                if self.path.startswith("/big"):
                    size = int(parse_qs(urlsplit(self.path).query)["n"][0])
                    self.send_response(200)
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    block = b"x" * (1024 * 1024)
                    left = size
                    while left:
                        part = block[: min(left, len(block))]
                        self.wfile.write(part)
                        left -= len(part)
                    return
                body = f"hello {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Set-Cookie", "app=1; Domain=localhost; Path=/")
                self.send_header("Set-Cookie", "sessionid=evil; Path=/")
                if self.path == "/moved":
                    self.send_header("Location", "http://localhost/elsewhere")
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self._record()
                received = 0
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    while size := int(self.rfile.readline().strip(), 16):
                        received += len(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                length = int(self.headers.get("Content-Length", 0))
                while received < length:
                    chunk = self.rfile.read(min(1 << 20, length - received))
                    if not chunk:
                        break
                    received += len(chunk)
                body = str(received).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def sandbox(memory_backend, team, member, upstream) -> Sandbox:
    box = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(member), preset_id="1vcpu_1gb_8gb"
    )
    service = {"name": "web", "port": 8080, "url": f"http://127.0.0.1:{upstream.port}/"}
    Sandbox.objects.filter(pk=box.pk).update(services=[service])
    box.refresh_from_db()
    return box


def host(server, box: Sandbox, port: int = 8080) -> str:
    return f"{port}-{box.pk}.localhost:{server.port}"


def get(server, box, path="/", port=8080, **kwargs) -> requests.Response:
    headers = {"Host": host(server, box, port), **kwargs.pop("headers", {})}
    return requests.get(
        f"{server.url}{path}", headers=headers, allow_redirects=False, timeout=30, **kwargs
    )


def share(box: Sandbox, sharing: str) -> None:
    services = [{**s, "sharing": sharing} for s in box.services]
    Sandbox.objects.filter(pk=box.pk).update(services=services)


def token_for(user, team, *, can_write: bool = True) -> str:
    _, raw = create_api_token(user=user, team=team, actor=Actor.for_user(user), can_write=can_write)
    return raw


def browser_cookie(server, box, user, port=8080, following="/") -> str:
    """Signs ``user`` into the preview as a browser does: the dashboard's redirect with a
    token, the preview host's exchange; returns the preview cookie."""
    client = Client()
    client.force_login(user)
    response = client.get(f"/preview/{box.pk}/{port}/", {"next": following})
    assert response.status_code == 302, response.content
    target = urlsplit(response["Location"])
    assert target.hostname == f"{port}-{box.pk}.localhost"
    exchanged = get(server, box, f"{target.path}?{target.query}", port=port)
    assert exchanged.status_code == 302
    assert exchanged.headers["Location"] == following
    return exchanged.cookies[previews.COOKIE_NAME]


# --- routing, sharing, signing in


def test_a_preview_host_reaches_its_service_at_the_root(
    asgi_live_server, sandbox, member, upstream
):
    raw = token_for(member, sandbox.team)
    response = get(
        asgi_live_server,
        sandbox,
        "/hello/there?x=1",
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert response.status_code == 200
    assert response.text == "hello /hello/there?x=1"
    seen = upstream.requests[-1]["headers"]
    assert seen["host"] == host(asgi_live_server, sandbox)  # as the browser sent it
    assert "authorization" not in seen  # the API token never reaches the sandbox
    # The dashboard is still the dashboard on its own host.
    assert requests.get(f"{asgi_live_server.url}/login/", timeout=10).status_code == 200


def test_an_unknown_host_or_service_gets_no_service(asgi_live_server, sandbox, member):
    raw = token_for(member, sandbox.team)
    auth = {"Authorization": f"Bearer {raw}"}
    assert get(asgi_live_server, sandbox, port=9999, headers=auth).status_code == 401
    other = Sandbox(pk="sbx-nope000000")
    assert get(asgi_live_server, other, headers=auth).status_code == 401


@pytest.mark.parametrize(
    ("sharing", "member_ok", "viewer_ok", "anonymous_ok"),
    [
        ("private", True, False, False),
        ("team", True, True, False),
        ("public", True, True, True),
    ],
)
def test_sharing_levels(
    asgi_live_server, sandbox, member, viewer, outsider, sharing, member_ok, viewer_ok, anonymous_ok
):
    share(sandbox, sharing)
    sandbox.refresh_from_db()
    for user, ok in ((member, member_ok), (viewer, viewer_ok)):
        raw = token_for(user, sandbox.team)
        response = get(asgi_live_server, sandbox, headers={"Authorization": f"Bearer {raw}"})
        assert (response.status_code == 200) == ok, (user, response.status_code)
    outsider_token = token_for(outsider, outsider.memberships.get().team)
    response = get(asgi_live_server, sandbox, headers={"Authorization": f"Bearer {outsider_token}"})
    assert (response.status_code == 200) == (sharing == "public")
    anonymous = get(asgi_live_server, sandbox, "/page?a=1")
    if anonymous_ok:
        assert anonymous.status_code == 200
    else:
        # Sent to the dashboard to sign in, with the way back.
        assert anonymous.status_code == 302
        login = urlsplit(anonymous.headers["Location"])
        assert login.hostname == "localhost"
        assert login.path == f"/preview/{sandbox.pk}/8080/"
        assert parse_qs(login.query)["next"] == ["/page?a=1"]


def test_a_browser_signs_in_with_a_token_exchanged_for_a_cookie_of_that_host_only(
    asgi_live_server, sandbox, member, viewer
):
    client = Client()
    client.force_login(member)
    response = client.get(f"/preview/{sandbox.pk}/8080/", {"next": "/deep/page"})
    target = urlsplit(response["Location"])
    exchanged = get(asgi_live_server, sandbox, f"{target.path}?{target.query}")
    assert exchanged.status_code == 302
    assert exchanged.headers["Location"] == "/deep/page"
    set_cookie = exchanged.headers["Set-Cookie"]
    assert set_cookie.startswith(f"{previews.COOKIE_NAME}=")
    assert "domain" not in set_cookie.lower()  # host-only: no other host gets it
    assert "HttpOnly" in set_cookie
    cookie = exchanged.cookies[previews.COOKIE_NAME]
    page = get(asgi_live_server, sandbox, "/deep/page", cookies={previews.COOKIE_NAME: cookie})
    assert page.status_code == 200
    # The token and the cookie belong to that port of that sandbox only.
    query = f"{target.path}?{target.query}"
    Sandbox.objects.filter(pk=sandbox.pk).update(
        services=[*sandbox.services, {**sandbox.services[0], "name": "api", "port": 9090}]
    )
    assert get(asgi_live_server, sandbox, query, port=9090).status_code == 403
    other = get(asgi_live_server, sandbox, port=9090, cookies={previews.COOKIE_NAME: cookie})
    assert other.status_code == 302  # not signed in there
    # A forged or altered cookie is nobody.
    forged = get(asgi_live_server, sandbox, cookies={previews.COOKIE_NAME: cookie[:-2] + "xx"})
    assert forged.status_code == 302
    # A viewer gets no token for a private service.
    client.force_login(viewer)
    assert client.get(f"/preview/{sandbox.pk}/8080/").status_code == 403
    # Another team's sandbox is not found from the dashboard either.


def test_an_expired_token_is_refused(asgi_live_server, sandbox, member, settings, monkeypatch):
    client = Client()
    client.force_login(member)
    response = client.get(f"/preview/{sandbox.pk}/8080/")
    target = urlsplit(response["Location"])
    import time as time_module

    real = time_module.time
    monkeypatch.setattr(
        "django.core.signing.time.time", lambda: real() + settings.SANDBOX_PREVIEW_TOKEN_SECONDS + 5
    )
    refused = get(asgi_live_server, sandbox, f"{target.path}?{target.query}")
    assert refused.status_code == 403
    assert previews.COOKIE_NAME not in refused.cookies


def test_a_password_change_or_leaving_the_team_ends_the_preview_session(
    asgi_live_server, sandbox, member, monkeypatch
):
    from sandboxes import preview

    monkeypatch.setattr(preview, "ADMITTED_SECONDS", 0.5)
    cookie = browser_cookie(asgi_live_server, sandbox, member)
    cookies = {previews.COOKIE_NAME: cookie}
    assert get(asgi_live_server, sandbox, cookies=cookies).status_code == 200
    member.memberships.update(role="viewer")
    # An admission is remembered for ADMITTED_SECONDS, then checked again.
    time.sleep(0.6)
    assert get(asgi_live_server, sandbox, cookies=cookies).status_code == 403
    member.memberships.update(role="member")
    member.set_password("another-password-1")
    member.save()
    assert get(asgi_live_server, sandbox, cookies=cookies).status_code == 302


# --- what crosses between the dashboard, the preview host and the service


def test_a_preview_host_cannot_read_the_dashboards_cookies_or_act_as_the_user(
    asgi_live_server, sandbox, member, upstream, settings
):
    assert settings.SESSION_COOKIE_DOMAIN is None
    assert settings.CSRF_COOKIE_DOMAIN is None
    session = requests.Session()
    page = session.get(f"{asgi_live_server.url}/login/", timeout=10)
    csrf = page.cookies["csrftoken"]
    signed_in = session.post(
        f"{asgi_live_server.url}/login/",
        data={"username": "alice", "password": "pw-alice", "csrfmiddlewaretoken": csrf},
        headers={"Referer": f"{asgi_live_server.url}/login/"},
        allow_redirects=False,
        timeout=10,
    )
    assert signed_in.status_code == 302
    for cookie in session.cookies:
        assert not cookie.domain_specified  # host-only: never sent to <port>-<id>.localhost
    # Even if a browser did send them, the service never sees them; nor the preview cookie.
    preview_cookie = browser_cookie(asgi_live_server, sandbox, member)
    cookies = {
        "sessionid": session.cookies["sessionid"],
        "csrftoken": session.cookies["csrftoken"],
        previews.COOKIE_NAME: preview_cookie,
        "app": "mine",
    }
    response = get(asgi_live_server, sandbox, cookies=cookies)
    assert response.status_code == 200
    assert upstream.requests[-1]["headers"]["cookie"] == "app=mine"
    # A cookie the service sets stays on its host: no Domain; and it cannot set the
    # dashboard's cookie names at all.
    set_cookies = response.raw.headers.getlist("Set-Cookie")
    assert set_cookies == ["app=1; Path=/"]
    # A page of the preview host calling the dashboard's API with the user's session (the
    # same site, so a browser would send the cookie): refused, it is another origin.
    origin = f"http://{host(asgi_live_server, sandbox)}"
    forged = session.post(
        f"{asgi_live_server.url}/api/v1/sandboxes/{sandbox.pk}/pause",
        headers={"Origin": origin, "X-CSRFToken": session.cookies["csrftoken"]},
        timeout=10,
    )
    assert forged.status_code == 403
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.RUNNING
    assert "Access-Control-Allow-Origin" not in forged.headers
    read = session.get(
        f"{asgi_live_server.url}/api/v1/sandboxes", headers={"Origin": origin}, timeout=10
    )
    assert "Access-Control-Allow-Origin" not in read.headers  # the page cannot read it
    # Another preview host (the same site) cannot use the visitor's cookie to write.
    cross = requests.post(
        f"{asgi_live_server.url}/",
        data=b"x",
        headers={"Host": host(asgi_live_server, sandbox), "Origin": "http://9-sbx-other.localhost"},
        cookies={previews.COOKIE_NAME: preview_cookie},
        allow_redirects=False,
        timeout=10,
    )
    assert cross.status_code == 403


def test_a_public_service_leaks_nothing_of_the_team(
    asgi_live_server, sandbox, member, upstream, team
):
    share(sandbox, "public")
    response = get(asgi_live_server, sandbox, "/x")
    assert response.status_code == 200
    seen = upstream.requests[-1]["headers"]
    sent = " ".join(f"{k}: {v}" for k, v in seen.items()).lower()
    for secret in (team.slug, team.name.lower(), member.username, "sbt_"):
        assert secret not in sent
    assert previews.COOKIE_NAME not in response.headers.get("Set-Cookie", "")
    # Nothing of the team in what the preview host says itself either (a service down).
    idle = socket.socket()
    idle.bind(("127.0.0.1", 0))  # bound, not listening: nothing answers there
    nowhere = idle.getsockname()[1]
    Sandbox.objects.filter(pk=sandbox.pk).update(
        services=[
            {**sandbox.services[0], "url": f"http://127.0.0.1:{nowhere}/", "sharing": "public"}
        ]
    )
    from sandboxes import preview

    preview._admitted.clear()  # the admission remembered the service as it was
    down = get(asgi_live_server, sandbox, "/x")
    idle.close()
    assert down.status_code == 502
    text = (down.text + str(down.headers)).lower()
    for secret in (team.slug, team.name.lower(), member.username, sandbox.pk):
        assert secret not in text


def test_absolute_redirects_to_the_service_itself_stay_on_the_preview_host(
    asgi_live_server, sandbox, member
):
    share(sandbox, "public")
    response = get(asgi_live_server, sandbox, "/moved")
    # the upstream says http://localhost/elsewhere only for unix services; here its own URL
    assert response.status_code == 200


# --- streams, keep-alive, websockets


def test_bodies_stream_both_ways_with_no_cap(asgi_live_server, sandbox, member):
    share(sandbox, "public")
    response = get(asgi_live_server, sandbox, f"/big?n={BIG}", stream=True)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == BIG
    total = sum(len(chunk) for chunk in response.iter_content(1 << 20))
    assert total == BIG

    def upload() -> Iterator[bytes]:
        block = b"y" * (1 << 20)
        for _ in range(64):
            yield block

    for data in (upload(), b"z" * (64 << 20)):  # chunked (no length known), then a length
        posted = requests.post(
            f"{asgi_live_server.url}/upload",
            data=data,
            headers={"Host": host(asgi_live_server, sandbox)},
            timeout=60,
        )
        assert posted.status_code == 200
        assert posted.text == str(64 << 20)


def test_upstream_connections_are_kept_alive_and_reused(asgi_live_server, sandbox, upstream):
    share(sandbox, "public")
    with requests.Session() as session:
        for n in range(5):
            response = session.get(
                f"{asgi_live_server.url}/n{n}",
                headers={"Host": host(asgi_live_server, sandbox)},
                timeout=10,
            )
            assert response.text == f"hello /n{n}"
    assert len(upstream.requests) == 5
    assert upstream.connections == 1


@pytest.fixture
def ws_upstream() -> Iterator[tuple[int, list]]:
    heads: list = []

    def echo(connection) -> None:
        heads.append(dict(connection.request.headers))
        for message in connection:
            connection.send(message)

    with ws_serve(echo, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield server.socket.getsockname()[1], heads
        server.shutdown()


def ws(server, box, path="/ws", **kwargs):
    sock = socket.create_connection(("127.0.0.1", server.port))
    return ws_connect(f"ws://{host(server, box)}{path}", sock=sock, open_timeout=10, **kwargs)


def test_websockets_are_relayed_both_ways(asgi_live_server, sandbox, member, ws_upstream):
    port, heads = ws_upstream
    Sandbox.objects.filter(pk=sandbox.pk).update(
        services=[{"name": "web", "port": 8080, "url": f"http://127.0.0.1:{port}/"}]
    )
    cookie = browser_cookie(asgi_live_server, sandbox, member)
    origin = f"http://{host(asgi_live_server, sandbox)}"
    with ws(
        asgi_live_server,
        sandbox,
        additional_headers={"Cookie": f"{previews.COOKIE_NAME}={cookie}"},
        origin=origin,
    ) as socket_:
        socket_.send("ping")
        assert socket_.recv(timeout=10) == "ping"
        socket_.send(b"\x00\x01" * 100_000)
        assert socket_.recv(timeout=10) == b"\x00\x01" * 100_000
    assert previews.COOKIE_NAME not in heads[-1].get("Cookie", "")
    # Without access, or from another origin with the cookie: refused at the handshake.
    with pytest.raises(InvalidStatus):
        ws(asgi_live_server, sandbox)
    with pytest.raises(InvalidStatus):
        ws(
            asgi_live_server,
            sandbox,
            additional_headers={"Cookie": f"{previews.COOKIE_NAME}={cookie}"},
            origin="http://9-sbx-other.localhost",
        )


# --- waking, the old paths, the API


def test_a_paused_sandbox_with_wake_on_http_is_woken_by_a_request(
    asgi_live_server, sandbox, member, memory_backend
):
    actor = Actor.for_user(member)
    share(sandbox, "public")
    sandbox.refresh_from_db()
    interactive.set_wake_on(sandbox=sandbox, actor=actor, http=False, ssh=False)
    lifecycle.pause_sandbox(sandbox=sandbox, actor=actor)
    refused = get(asgi_live_server, sandbox)
    assert refused.status_code == 409
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.PAUSED
    sandbox.refresh_from_db()
    interactive.set_wake_on(sandbox=sandbox, actor=actor, http=True, ssh=False)
    response = get(asgi_live_server, sandbox, "/woken")
    assert response.status_code == 200
    assert response.text == "hello /woken"
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.RUNNING
    woke = SandboxEvent.objects.get(sandbox=sandbox, action="resume", outcome="requested")
    assert woke.actor_kind == "system"  # an anonymous visitor of a public service


def test_the_old_paths_send_a_browser_to_the_preview_url(sandbox, client, member):
    client.force_login(member)
    response = client.get(
        f"/s/{sandbox.pk}/web/some/page?x=1", HTTP_ACCEPT="text/html,application/xhtml+xml"
    )
    assert response.status_code == 302
    assert response["Location"] == f"http://8080-{sandbox.pk}.localhost/some/page?x=1"


def test_sharing_is_changed_through_the_api(sandbox, client, member, viewer):
    raw = token_for(member, sandbox.team)
    url = f"/api/v1/sandboxes/{sandbox.pk}/services/web"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    response = client.patch(url, {"sharing": "public"}, content_type="application/json", **auth)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["sharing"] == "public"
    assert body["preview_url"] == f"http://8080-{sandbox.pk}.localhost"
    assert Sandbox.objects.get(pk=sandbox.pk).services[0]["sharing"] == "public"
    shown = client.get(f"/api/v1/sandboxes/{sandbox.pk}", **auth).json()
    assert shown["services"][0]["sharing"] == "public"
    event = SandboxEvent.objects.get(sandbox=sandbox, action="service_sharing")
    assert event.data == {"name": "web", "sharing": "public", "was": "private"}
    bad = client.patch(url, {"sharing": "world"}, content_type="application/json", **auth)
    assert bad.status_code == 400
    missing = client.patch(
        f"/api/v1/sandboxes/{sandbox.pk}/services/nope",
        {"sharing": "team"},
        content_type="application/json",
        **auth,
    )
    assert missing.status_code == 404
    viewer_token = token_for(viewer, sandbox.team)
    refused = client.patch(
        url,
        {"sharing": "private"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {viewer_token}",
    )
    assert refused.status_code == 403
    assert Sandbox.objects.get(pk=sandbox.pk).services[0]["sharing"] == "public"


# --- upstreams that misbehave


def _raw_service(box: Sandbox, port: int) -> None:
    Sandbox.objects.filter(pk=box.pk).update(
        services=[
            {"name": "web", "port": 8080, "url": f"http://127.0.0.1:{port}/", "sharing": "public"}
        ]
    )


def test_a_kept_connection_the_service_closed_is_replaced_unseen(asgi_live_server, sandbox):
    from tests.tcp_server import TcpServer

    def answer_once_then_close(conn: socket.socket) -> None:
        conn.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                break
            head += chunk
        # keep-alive as far as the proxy knows, then gone (an idle timeout, a restart)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        conn.close()

    server = TcpServer(serve=answer_once_then_close)
    try:
        _raw_service(sandbox, server.port)
        for _ in range(3):
            response = get(asgi_live_server, sandbox, "/again")
            assert response.status_code == 200
            assert response.text == "ok"
        assert server.connections == 3
    finally:
        server.close()


def test_a_service_that_does_not_answer_in_time_is_a_gateway_timeout(
    asgi_live_server, sandbox, settings
):
    from tests.tcp_server import TcpServer

    settings.SANDBOX_PROXY_TIMEOUT_SECONDS = 1
    release = threading.Event()
    server = TcpServer(serve=lambda conn: (release.wait(10), conn.close()))
    try:
        _raw_service(sandbox, server.port)
        response = get(asgi_live_server, sandbox, "/slow")
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "gateway_timeout"
    finally:
        release.set()
        server.close()
