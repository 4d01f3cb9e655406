"""The Docker provider beyond the shared contract, against a real dockerd."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import socket
import struct
import time
import urllib.request

import docker
import pytest

from providers.base import InstanceSpec, InstanceStatus
from providers.docker_provider import DockerProvider, labels, services
from providers.errors import Conflict, NotFound, Unavailable, Unsupported
from providers.registry import ProviderConfigError, build_providers

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def daemon():
    from tests.docker_daemon import daemon as shared

    return shared()


@pytest.fixture
def provider(daemon):
    provider = DockerProvider(daemon.host)
    made = []
    provider.made = made
    yield provider
    for instance in made:
        instance.delete()


def running(provider: DockerProvider, **overrides):
    sandbox_id = f"sbx-docker{next(_ids):04d}"
    values = {"sandbox_id": sandbox_id, "preset_id": "2vcpu_1gb_8gb", "vcpus": 2}
    values.update({"memory_mb": 1024, "disk_gb": 8}, **overrides)
    spec = InstanceSpec(**values)
    metadata = {"sandbox_id": spec.sandbox_id, "team": "acme", "preset": spec.preset_id}
    instance = provider.create(spec, provider.ensure_base_image(), metadata)
    provider.made.append(instance)
    instance.start()
    return provider.get(instance.id)


def route_table(instance) -> list[str]:
    lines = instance.exec("cat /proc/net/route", timeout=10).stdout.splitlines()[1:]
    return [line.split()[1] for line in lines if line.strip()]


def ipv4_of(interface: str) -> bytes:
    """The interface's IPv4 address (SIOCGIFADDR); OSError when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("256s", interface.encode()[:15])
        return fcntl.ioctl(sock.fileno(), 0x8915, request)[20:24]


def test_settings_switch_it_on_and_are_checked():
    assert DockerProvider.configured({"DOCKER_HOST": "unix:///run/docker.sock"})
    assert not DockerProvider.configured({})
    with pytest.raises(ProviderConfigError, match="DOCKER_HOST"):
        build_providers({"SANDBOX_PROVIDERS": "docker", "DOCKER_HOST": "nonsense"})
    with pytest.raises(ProviderConfigError, match="DOCKER_PIDS_LIMIT"):
        build_providers({"SANDBOX_PROVIDERS": "docker", "DOCKER_PIDS_LIMIT": "lots"})


def test_a_daemon_that_is_down_does_not_stop_the_app(tmp_path):
    # Building the provider does not connect; using it says the daemon is unavailable.
    built = build_providers(
        {"SANDBOX_PROVIDERS": "docker", "DOCKER_HOST": f"unix://{tmp_path}/none.sock"}
    )
    provider = built["docker"]
    assert not provider.health().reachable
    with pytest.raises(Unavailable):
        provider.get("abc")


def test_a_container_gets_the_preset_limits_labels_and_no_network(provider):
    instance = running(provider, vcpus=2, memory_mb=1024)
    inspected = provider.client.api.inspect_container(instance.id)
    host = inspected["HostConfig"]
    assert host["NanoCpus"] == 2_000_000_000
    assert host["Memory"] == host["MemorySwap"] == 1024 * 1024 * 1024
    assert host["PidsLimit"] == 1024
    assert host["NetworkMode"] == "none"
    assert inspected["Name"] == f"/sbx-{instance.metadata['sandbox_id']}"
    assert inspected["Config"]["Labels"][labels.SANDBOX_ID] == instance.metadata["sandbox_id"]
    assert route_table(instance) == []  # loopback only: no route anywhere
    assert instance.exec("pwd", timeout=10).stdout == "/workspace\n"


def test_an_exposed_service_answers_on_loopback_and_the_sandbox_stays_cut_off(provider):
    instance = running(provider)
    script = "mkdir -p /www && echo hello > /www/index.html && httpd -p 8080 -h /www"
    assert instance.exec(script, timeout=10).exit_code == 0
    url = instance.expose_http_service("web", 8080)
    assert url.startswith("http://127.0.0.1:")
    body = b""
    for _ in range(50):  # the forwarder needs a moment to listen
        try:
            body = urllib.request.urlopen(url, timeout=5).read()  # noqa: S310 - http on loopback
            break
        except OSError:
            time.sleep(0.1)
    assert body == b"hello\n"
    # Its network is internal (no way out) and the host holds no address on it (the
    # sandbox cannot reach the host's services either).
    network = provider.client.networks.get(services.network_name(instance.id))
    assert network.attrs["Internal"] is True
    with pytest.raises(OSError, match="Cannot assign requested address"):
        ipv4_of(f"br-{network.id[:12]}")
    edge = provider.client.networks.get(services.EDGE_NETWORK)
    assert len(ipv4_of(f"br-{edge.id[:12]}")) == 4  # the check does see an address
    # The same port again is the same forwarder; a new port replaces it.
    assert instance.expose_http_service("web", 8080) == url
    instance.expose_http_service("web", 9090)
    assert [(s.name, s.port) for s in provider.get(instance.id).networking.http_services] == [
        ("web", 9090)
    ]
    with pytest.raises(ValueError, match="service name"):
        instance.expose_http_service("Bad Name", 80)
    instance.delete()
    leftovers = provider.client.containers.list(
        all=True, filters={"label": f"{labels.OWNER}={instance.id}"}
    )
    assert leftovers == []
    assert provider.client.networks.list(names=[services.network_name(instance.id)]) == []


def test_a_snapshot_image_does_not_pass_for_a_sandbox(provider):
    instance = running(provider)
    made = instance.snapshot()
    assert made.size_bytes
    assert made.size_bytes > 0
    by_hand = provider.client.containers.create(made.ref, ["true"])
    try:
        assert by_hand.id not in {i.id for i in provider.list()}
        with pytest.raises(NotFound):
            provider.get(by_hand.id)
        with pytest.raises(Conflict):
            provider.delete_snapshot(made.ref)
    finally:
        by_hand.remove(force=True)
    child = running(provider)
    assert child.metadata["sandbox_id"] != instance.metadata["sandbox_id"]
    child.delete()
    instance.delete()
    provider.delete_snapshot(made.ref)
    provider.delete_snapshot(made.ref)  # gone already: nothing to do


def test_the_base_image_is_built_when_missing(daemon):
    provider = DockerProvider(daemon.host, base_image_ref="sandboxes-base-test:rebuild")
    with contextlib.suppress(docker.errors.ImageNotFound):  # not there yet is what we want
        provider.client.images.remove("sandboxes-base-test:rebuild", force=True)
    first = provider.ensure_base_image()
    image_id = provider.client.images.get(first).id
    assert provider.ensure_base_image() == first
    assert provider.client.images.get(first).id == image_id  # not rebuilt
    provider.client.images.remove(first, force=True)


def test_pause_freezes_and_keeps_memory(provider):
    instance = running(provider)
    instance.exec("sh -c 'echo $$ > /tmp/pid; exec sleep 1000' >/dev/null 2>&1 &", timeout=10)
    pid = instance.exec("cat /tmp/pid", timeout=10).stdout.strip()
    instance.pause()
    assert provider.get(instance.id).status == InstanceStatus.PAUSED
    instance.resume()
    assert instance.exec(f"kill -0 {pid} && echo alive", timeout=10).stdout == "alive\n"


def test_a_relabel_lives_in_a_volume_the_container_takes_with_it(provider):
    """Labels cannot change on a container: a relabelled pool member's metadata is kept in
    the labels of a volume named after it (docs/pools.md), which its delete removes; a
    container not made for a pool never looks for one."""
    plain = running(provider)
    with pytest.raises(Unsupported):  # not made for a pool: its labels are its metadata
        plain.relabel({"sandbox_id": "sbx-claimed", "team": "acme"})
    assert provider.relabel_record(plain.id) is None
    pooled = provider.create(
        InstanceSpec(f"sbx-pooled{next(_ids):04d}", "2vcpu_1gb_8gb", 2, 1024, 8),
        provider.ensure_base_image(),
        {"sandbox_id": "sbx-pooled", "team": "", "preset": "2vcpu_1gb_8gb", "pool": "3"},
    )
    provider.made.append(pooled)
    claimed = {"sandbox_id": "sbx-claimed2", "team": "acme", "preset": "2vcpu_1gb_8gb"}
    pooled.relabel(claimed)
    volume = provider.client.volumes.get(labels.relabel_name(pooled.id))
    assert volume.attrs["Labels"][labels.OWNER] == pooled.id
    assert provider.get(pooled.id).metadata == claimed
    assert {i.id: i.metadata for i in provider.list()}[pooled.id] == claimed
    pooled.delete()
    names = {v.name for v in provider.client.volumes.list()}
    assert labels.relabel_name(pooled.id) not in names
