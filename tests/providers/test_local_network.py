"""Exposed services of local sandboxes: a URL on host loopback forwarding real HTTP."""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request

import pytest

from providers.base import InstanceStatus
from providers.errors import Unsupported
from providers.local import LocalProvider, forwarder
from tests.providers.conftest import sh, wait_for

PORT = 8080


def serve(box, body: str) -> None:
    sh(box, f"mkdir -p /workspace/site && echo {body} > /workspace/site/index.html")
    sh(
        box,
        f"cd /workspace/site && nohup python3 -m http.server {PORT} --bind 127.0.0.1 "
        ">/dev/null 2>&1 &",
    )


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our URL
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def answered(url: str) -> tuple[int, str] | None:
    try:
        status, body = get(url)
    except OSError:
        return None
    return (status, body) if status != 502 else None


@pytest.fixture
def site(local, sandboxes):
    box = sandboxes.running(local)
    body = f"hello-{secrets.token_hex(6)}"
    serve(box, body)
    return box, body


def test_an_exposed_service_answers_real_http_on_host_loopback(local, site):
    box, body = site
    url = box.expose_http_service("web", PORT)
    assert url.startswith("http://127.0.0.1:")
    status, text = wait_for(lambda: answered(url))
    assert (status, text.strip()) == (200, body)
    services = local.get(box.id).networking.http_services
    assert [(s.name, s.port, s.url) for s in services] == [("web", PORT, url)]
    # Exposing again gives the same URL; a new provider object (a restart) sees it too.
    assert box.expose_http_service("web", PORT) == url
    fresh = LocalProvider.from_config(local.config_mapping())
    assert [s.url for s in fresh.get(box.id).networking.http_services] == [url]


def test_traffic_through_the_forwarder_counts_as_activity(local, site):
    box, _ = site
    url = box.expose_http_service("web", PORT)
    wait_for(lambda: answered(url))
    before = local.get(box.id).last_activity
    for _ in range(3):
        get(url)
    wait_for(lambda: local.get(box.id).last_activity > before)


def test_hiding_a_service_closes_its_port(local, site):
    box, _ = site
    url = box.expose_http_service("web", PORT)
    wait_for(lambda: answered(url))
    box.hide_http_service("web")
    assert local.get(box.id).networking.http_services == ()
    with pytest.raises(urllib.error.URLError, match="refused"):
        get(url)
    box.hide_http_service("web")  # idempotent


def test_a_paused_sandbox_answers_503_unless_it_wakes_on_http(local, site):
    box, body = site
    url = box.expose_http_service("web", PORT)
    wait_for(lambda: answered(url))
    box.pause()
    status, text = get(url)
    assert status == 503
    assert "paused" in text
    box.set_wake_on(True, False)
    status, text = get(url)
    assert (status, text.strip()) == (200, body)
    assert local.get(box.id).status == InstanceStatus.RUNNING
    with pytest.raises(Unsupported):
        box.set_wake_on(True, True)  # no SSH in local sandboxes


def test_a_stopped_sandboxs_service_answers_503(local, site):
    box, _ = site
    url = box.expose_http_service("web", PORT)
    wait_for(lambda: answered(url))
    box.stop()
    status, text = get(url)
    assert status == 503
    assert "stopped" in text


def test_nothing_listening_inside_gives_502(local, sandboxes):
    box = sandboxes.running(local)
    url = box.expose_http_service("idle", 9999)
    status, _ = get(url)
    assert status == 502


def test_bad_service_names_and_ports_are_refused(local, sandboxes):
    box = sandboxes.running(local)
    for name, port in (("Bad Name", 80), ("web", 0), ("web", 70000)):
        with pytest.raises(ValueError, match=r"service name|port"):
            box.expose_http_service(name, port)
    assert local.get(box.id).networking.http_services == ()


def test_exposed_ports_come_back_when_the_forwarder_restarts(local, site):
    box, body = site
    url = box.expose_http_service("web", PORT)
    wait_for(lambda: answered(url))
    forwarder.stop(local.store.root)  # as after a crash or a host reboot
    wait_for(lambda: not (local.store.root / forwarder.SOCKET_NAME).exists())
    with pytest.raises(urllib.error.URLError, match="refused"):
        get(url)
    fresh = LocalProvider.from_config(local.config_mapping())
    assert box.id in {i.id for i in fresh.list()}  # reconciliation lists regularly
    status, text = wait_for(lambda: answered(url))
    assert (status, text.strip()) == (200, body)
