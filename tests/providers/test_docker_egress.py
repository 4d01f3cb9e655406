"""Outbound network policies of Docker sandboxes, against a test-built internet.

The test's own dockerd runs inside the fake host's network namespace
(tests/netns_world.py), with iptables, NAT and forwarding on there only: its bridges, its
NAT and every packet stay inside namespaces this module makes. Each defence is shown with
an attack that works when that defence alone is left out, then fails.
"""

from __future__ import annotations

import os
import shutil

import pytest
from docker.models.containers import ContainerCollection

from providers import netfilter
from providers.docker_provider import DockerProvider
from providers.errors import Unsupported
from providers.network import make_policy
from tests import docker_daemon
from tests import netns_world as w
from tests.providers.conftest import metadata, new_spec
from tests.system import require

INTERNET = make_policy("internet")


@pytest.fixture(scope="module")
def world():
    require("nft", shutil.which("nft") is not None, "apt-get install -y nftables")
    require("root", os.geteuid() == 0, "network namespaces need root")
    with w.World() as made:
        yield made


@pytest.fixture(scope="module")
def provider(world):
    daemon = docker_daemon.daemon_in(world.upstream_name)
    try:
        made = DockerProvider(daemon.host, net_namespace=world.upstream)
        base = made.ensure_base_image()
        yield made, base
    finally:
        daemon.stop()


@pytest.fixture
def boxes(provider):
    made = []

    def start(policy=INTERNET):
        docker, base = provider
        spec = new_spec(network=policy)
        box = docker.create(spec, base, metadata(spec))
        made.append(box)
        box.start()
        return box

    yield start
    for box in made:
        box.delete()


def fetch(box, target: str) -> str:
    """'open <body>' or 'blocked' (busybox's nc: its wget crashes with a timeout set)."""
    host, port = target.rsplit(":", 1)
    request = r'printf "GET / HTTP/1.0\r\n\r\n"'
    result = box.exec(f"{request} | nc -w 10 {host} {port}", timeout=60)
    body = result.stdout.split("\r\n\r\n", 1)[-1].strip()
    return f"open {body}" if result.exit_code == 0 and body else "blocked"


FORBIDDEN = {
    f"{w.HOST_PUBLIC}:{w.HOST_PORT}": f"open reached {w.HOST_PUBLIC}",
    f"{w.PRIVATE}:{w.WEB_PORT}": f"open reached {w.PRIVATE}",
    f"{w.SHARED}:{w.WEB_PORT}": f"open reached {w.SHARED}",
    f"{w.METADATA}:{w.WEB_PORT}": f"open reached {w.METADATA}",
}


def test_internet_reaches_public_hosts_and_nothing_else(boxes, world, monkeypatch):
    # Control: without the rules, the daemon's NAT carries every one of them.
    with monkeypatch.context() as patch:
        patch.setattr(netfilter, "ruleset", lambda *a, **k: "table inet sandbox {}\n")
        control = boxes()
        assert {t: fetch(control, t) for t in FORBIDDEN} == FORBIDDEN
    box = boxes()
    assert fetch(box, f"{w.PUBLIC}:{w.WEB_PORT}") == f"open reached {w.PUBLIC}"
    before = world.accepted.copy()
    assert {t: fetch(box, t) for t in FORBIDDEN} == dict.fromkeys(FORBIDDEN, "blocked")
    assert world.accepted == before


def test_allowlist_reaches_only_what_it_lists(boxes):
    box = boxes(make_policy("allowlist", ["1.1.1.0/24", f"{w.PUBLIC}"]))
    assert fetch(box, f"{w.PUBLIC}:{w.WEB_PORT}") == f"open reached {w.PUBLIC}"
    assert fetch(box, f"{w.PUBLIC_LISTED}:{w.WEB_PORT}") == f"open reached {w.PUBLIC_LISTED}"
    assert fetch(box, f"{w.PUBLIC_OTHER}:{w.WEB_PORT}") == "blocked"
    assert fetch(box, f"{w.PRIVATE}:{w.WEB_PORT}") == "blocked"


def test_root_in_the_container_cannot_lift_the_policy(boxes):
    box = boxes()
    for command in (
        f"ip route add {w.PRIVATE}/32 dev eth0",
        "ip addr add 10.9.9.1/24 dev eth0",
        "ip link set eth0 down",
    ):
        result = box.exec(command, timeout=30)
        assert result.exit_code != 0, command
        assert "not permitted" in (result.stderr + result.stdout).lower(), (command, result)
    assert fetch(box, f"{w.PRIVATE}:{w.WEB_PORT}") == "blocked"


def test_no_raw_sockets_in_a_networked_container(boxes, monkeypatch):
    # Control: Docker's default set includes NET_RAW; a raw socket works then.
    with monkeypatch.context() as patch:
        original = ContainerCollection.create

        def keep_raw(self, *args, **kwargs):
            kwargs.pop("cap_drop", None)
            return original(self, *args, **kwargs)

        patch.setattr(ContainerCollection, "create", keep_raw)
        control = boxes()
        assert control.exec(f"ping -c 1 -W 5 {w.PUBLIC}", timeout=30).exit_code == 0
    box = boxes()
    result = box.exec(f"ping -c 1 -W 5 {w.PUBLIC}", timeout=30)
    assert result.exit_code != 0
    assert "permission denied" in result.stderr.lower()


def test_stop_and_start_keeps_the_policy(boxes):
    box = boxes()
    box.stop()
    box.start()
    assert fetch(box, f"{w.PRIVATE}:{w.WEB_PORT}") == "blocked"
    assert fetch(box, f"{w.PUBLIC}:{w.WEB_PORT}") == f"open reached {w.PUBLIC}"


def test_a_remote_daemon_refuses_the_policies():
    remote = DockerProvider("tcp://docker.invalid:2375")
    assert not remote.capabilities.supports_network_internet
    with pytest.raises(Unsupported, match="unix:// DOCKER_HOST"):
        remote.capabilities.require_network(INTERNET, provider="docker")
