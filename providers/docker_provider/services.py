"""Exposed HTTP services of Docker sandboxes, published on the Docker host's loopback.

A sandbox starts with no network at all. Publishing a port needs a network, and Docker
ignores published ports on ``internal`` networks, so the first exposed service:

1. moves the sandbox from ``none`` onto its own internal network ``sbx-net-<id>`` (no
   route out, no other members but its forwarders, and no address of the host's on the
   bridge: the host is not reachable from it either), under the alias ``sandbox``;
2. starts a forwarder container (the base image's busybox ``nc``) on the shared
   ``sandboxes-edge`` bridge with the port published on ``127.0.0.1:<random>``, and on the
   sandbox's network: it relays each connection to ``sandbox:<port>``.

The sandbox never joins the edge network, so it still has no way out; the forwarders
only relay inbound connections. Every forwarder is labelled with its sandbox (so
listings rebuild the service list and delete removes them) and restarts with the daemon.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from providers.base import HttpService
from providers.docker_provider import labels
from providers.docker_provider.errors import docker_call
from providers.errors import NotFound, ProviderError

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

EDGE_NETWORK = "sandboxes-edge"
SANDBOX_ALIAS = "sandbox"
_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


def network_name(container_id: str) -> str:
    return f"sbx-net-{container_id[:12]}"


def forwarder_name(container_id: str, service: str) -> str:
    return f"sbx-fwd-{container_id[:12]}-{service}"


def _forwarders(client: docker.DockerClient, owner: str | None = None) -> list[Container]:
    wanted = [f"{labels.ROLE}={labels.ROLE_FORWARDER}"]
    if owner:
        wanted.append(f"{labels.OWNER}={owner}")
    with docker_call("list service forwarders"):
        return client.containers.list(all=True, filters={"label": wanted})


def _service(forwarder: Container) -> HttpService:
    port = int(forwarder.labels[labels.SERVICE_PORT])
    bindings = (forwarder.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    published = [b for b in bindings.get(f"{port}/tcp") or [] if b.get("HostIp") == "127.0.0.1"]
    host_port = published[0]["HostPort"] if published else "0"
    url = f"http://127.0.0.1:{host_port}/"
    return HttpService(forwarder.labels[labels.SERVICE_NAME], port, url)


def services_of(client: docker.DockerClient, owner: str) -> list[HttpService]:
    return sorted((_service(f) for f in _forwarders(client, owner)), key=lambda s: s.name)


def services_by_owner(client: docker.DockerClient) -> dict[str, list[HttpService]]:
    grouped: dict[str, list[HttpService]] = {}
    for forwarder in _forwarders(client):
        grouped.setdefault(forwarder.labels.get(labels.OWNER, ""), []).append(_service(forwarder))
    return {owner: sorted(found, key=lambda s: s.name) for owner, found in grouped.items()}


def _ensure_network(client: docker.DockerClient, name: str, *, internal: bool, owner: str = ""):
    with docker_call(f"get network {name}"):
        found = client.networks.list(names=[name])
    exact = [n for n in found if n.name == name]
    if exact:
        return exact[0]
    marks = {labels.ROLE: labels.ROLE_NETWORK}
    if owner:
        marks[labels.OWNER] = owner
    # An internal bridge still gets the gateway address on the host, which would let the
    # sandbox reach host services; without it the gateway is an address nobody holds.
    options = {"com.docker.network.bridge.inhibit_ipv4": "true"} if internal else {}
    with docker_call(f"create network {name}"):
        return client.networks.create(
            name, driver="bridge", internal=internal, labels=marks, options=options
        )


def ensure_policy_network(client: docker.DockerClient, name: str):
    """The bridge network of an outbound policy: containers on it do not reach each
    other (``enable_icc`` off); what they reach beyond is the rules' to decide."""
    with docker_call(f"get network {name}"):
        found = client.networks.list(names=[name])
    for network in found:
        if network.name == name:
            return network
    with docker_call(f"create network {name}"):
        try:
            return client.networks.create(
                name,
                driver="bridge",
                options={"com.docker.network.bridge.enable_icc": "false"},
                labels={labels.ROLE: labels.ROLE_NETWORK},
            )
        except docker_errors().APIError:
            found = client.networks.list(names=[name])  # another create won the race
            if not found:
                raise
            return found[0]


def _attach_sandbox(client: docker.DockerClient, container: Container):
    network = _ensure_network(client, network_name(container.id), internal=True, owner=container.id)
    attached = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    if network.name in attached:
        return network
    with docker_call(f"connect container {container.id[:12]} to {network.name}"):
        if "none" in attached:
            client.networks.get("none").disconnect(container)
        network.connect(container, aliases=[SANDBOX_ALIAS])
    return network


def expose(
    client: docker.DockerClient, container: Container, image: str, name: str, port: int
) -> HttpService:
    if not _SERVICE_NAME.fullmatch(name):
        raise ValueError("a service name is 1-40 lowercase letters, digits and dashes")
    if not 1 <= port <= 65535:
        raise ValueError("a port is within 1..65535")
    for existing in _forwarders(client, container.id):
        if existing.labels.get(labels.SERVICE_NAME) != name:
            continue
        if int(existing.labels[labels.SERVICE_PORT]) == port and existing.status == "running":
            return _service(existing)
        _remove(existing)
    network = _attach_sandbox(client, container)
    edge = _ensure_network(client, EDGE_NETWORK, internal=False)
    with docker_call(f"create the forwarder for {name}"):
        forwarder = client.containers.create(
            image,
            ["nc", "-ll", "-p", str(port), "-e", "nc", SANDBOX_ALIAS, str(port)],
            name=forwarder_name(container.id, name),
            labels={
                labels.ROLE: labels.ROLE_FORWARDER,
                labels.OWNER: container.id,
                labels.SERVICE_NAME: name,
                labels.SERVICE_PORT: str(port),
            },
            network=edge.name,
            ports={f"{port}/tcp": ("127.0.0.1", None)},
            restart_policy={"Name": "unless-stopped"},
            init=True,
            mem_limit="32m",
            pids_limit=64,
        )
    try:
        with docker_call(f"start the forwarder for {name}"):
            network.connect(forwarder)
            forwarder.start()
            forwarder.reload()
    except ProviderError:
        _remove(forwarder)
        raise
    return _service(forwarder)


def _remove(forwarder: Container) -> None:
    try:
        with docker_call(f"remove forwarder {forwarder.name}"):
            forwarder.remove(force=True)
    except NotFound:
        return


def hide(client: docker.DockerClient, owner: str, name: str) -> None:
    for forwarder in _forwarders(client, owner):
        if forwarder.labels.get(labels.SERVICE_NAME) == name:
            _remove(forwarder)


def remove_all(client: docker.DockerClient, owner: str) -> None:
    for forwarder in _forwarders(client, owner):
        _remove(forwarder)


def remove_network(client: docker.DockerClient, owner: str) -> None:
    name = network_name(owner)
    with docker_call(f"list networks {name}"):
        found: Iterable = client.networks.list(names=[name])
    for network in found:
        if network.name != name:
            continue
        try:
            with docker_call(f"remove network {name}"):
                network.remove()
        except NotFound:
            continue


def docker_errors():
    """The SDK's errors module, imported where it is used (see engine.py)."""
    from docker import errors

    return errors
