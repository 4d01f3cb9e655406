"""The ``docker`` provider, through the ``docker`` SDK.

How the contract maps onto Docker:

* A snapshot version is an image; its ref is the image id (or any reference the daemon
  resolves). The built-in base reference (``DOCKER_BASE_IMAGE``) is built on demand with
  ``docker import`` when missing (see ``base_image``).
* A sandbox is a container named ``sbx-<sandbox id>`` (Docker refuses a second one of the
  same name: create is idempotent even under races), labelled with its metadata, with
  CPU, memory and pids limits from the preset, no network (``network_mode=none``; an
  outbound policy: its Docker network and rules, see ``enforce_network``) and
  ``/workspace`` as its working directory. Its files live in the container's writable
  layer: kept by stop/start, captured by ``docker commit``.
* ``pause`` freezes the container's cgroup (memory kept); ``snapshot`` commits the
  container to a new image (the container is paused for the commit and keeps running).
* Exposed services: see ``services``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from providers.addresses import parse_networks
from providers.base import (
    META_SANDBOX_ID,
    Capabilities,
    Health,
    ImportResult,
    InstanceSpec,
    Provider,
)
from providers.docker_provider import base_image, labels, services
from providers.docker_provider.engine import DockerEngine
from providers.docker_provider.errors import docker_call
from providers.docker_provider.instance import KEEPALIVE, DockerInstance
from providers.errors import Conflict, NotFound, ProviderError, Unsupported
from providers.images import ImageSource
from providers.settings import int_setting

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

DEFAULT_HOST = "unix:///var/run/docker.sock"


#: The Docker network of each outbound policy (made on first use; see services).
POLICY_NETWORKS = {"internet": "sandboxes-internet", "allowlist": "sandboxes-allowlist"}
#: Where imported root filesystems go (tagged by their layer digest).
IMPORTED_REPOSITORY = "sandboxes-image"


class DockerProvider(Provider):
    name: ClassVar[str] = "docker"
    config_keys: ClassVar[tuple[str, ...]] = (
        "DOCKER_HOST",
        "DOCKER_BASE_IMAGE",
        "DOCKER_PIDS_LIMIT",
        "DOCKER_TIMEOUT",
        "DOCKER_NET_NAMESPACE",
        "DOCKER_NET_DENY",
    )

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        *,
        base_image_ref: str = base_image.DEFAULT_BASE_IMAGE,
        pids_limit: int = 1024,
        timeout: int = 60,
        net_namespace: str | None = None,
        net_deny: tuple = (),
    ) -> None:
        if "://" not in host:
            raise ValueError(
                f"DOCKER_HOST must look like unix:///path or tcp://host:port, not {host!r}"
            )
        self.host = host
        self.base_image_ref = base_image_ref
        self.pids_limit = pids_limit
        self.timeout = timeout
        #: The daemon's network namespace (its addresses are the host's, never reachable
        #: from a sandbox); None: the control plane's own.
        self.net_namespace = net_namespace
        self.net_deny = net_deny
        #: What instances and terminals hold: the daemon's client and settings.
        self.engine = DockerEngine(
            host,
            base_image_ref=base_image_ref,
            timeout=timeout,
            net_namespace=net_namespace,
            net_deny=net_deny,
        )
        #: (when asked, what ``docker info`` said) for ``_host_limits``.
        self._limits: tuple[float, dict] | None = None

    def __repr__(self) -> str:
        return f"DockerProvider(host={self.host!r})"

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> DockerProvider:
        return cls(
            config.get("DOCKER_HOST", "").strip() or DEFAULT_HOST,
            base_image_ref=config.get("DOCKER_BASE_IMAGE", "").strip()
            or base_image.DEFAULT_BASE_IMAGE,
            pids_limit=int_setting(config, "DOCKER_PIDS_LIMIT", 1024, high=4_194_304),
            timeout=int_setting(config, "DOCKER_TIMEOUT", 60, high=86_400),
            net_namespace=_namespace(config.get("DOCKER_NET_NAMESPACE", "").strip()),
            net_deny=parse_networks(config.get("DOCKER_NET_DENY", ""), "DOCKER_NET_DENY"),
        )

    @classmethod
    def configured(cls, config: Mapping[str, str]) -> bool:
        return bool(config.get("DOCKER_HOST", "").strip())

    # ``service_address_rule`` stays None: a service URL's host is always 127.0.0.1, written
    # by this provider (services.py); only the port comes from the daemon's published
    # binding, which the sandbox cannot choose.

    @property
    def capabilities(self) -> Capabilities:
        outbound = self._network_problem()
        return Capabilities(
            supports_pause=True,
            supports_snapshots=True,
            supports_exec=True,
            supports_expose_http=True,
            supports_terminal=True,
            supports_process=True,
            reasons={
                "supports_hibernate": "Docker's checkpoints (CRIU) are experimental; use "
                "pause (memory kept) or stop",
                "supports_wake_on": "nothing in front of a Docker sandbox wakes it on traffic",
                "supports_ssh": "Docker sandboxes run no SSH server; use exec",
                "supports_resize": "resizing a running container is not offered yet",
                "supports_metrics": "Docker stats are not collected yet",
                **dict.fromkeys(
                    ("supports_network_internet", "supports_network_allowlist"), outbound
                ),
            },
            supports_network_internet=not outbound,
            supports_network_allowlist=not outbound,
            **self._host_limits(),
        )

    def _host_limits(self) -> dict:
        """The largest container the daemon's host can run: its CPUs and memory (``docker
        info``; containers get no disk quota here, so disk is not limited). Asked once and
        kept; while the daemon cannot be reached, nothing is refused on size (a create then
        fails on the daemon anyway), and it is asked again a minute later."""
        cached = self._limits
        now = time.monotonic()
        if cached is None or (not cached[1] and now - cached[0] > 60):
            found: dict = {}
            try:
                with docker_call("info"):
                    info = self.client.info()
                found = {
                    "max_vcpus": int(info.get("NCPU") or 0) or None,
                    "max_memory_mb": int(info.get("MemTotal") or 0) // 1024**2 or None,
                    "limits_source": "the Docker host's CPUs and memory",
                }
            except (ProviderError, ValueError, TypeError):
                found = {}
            cached = self._limits = (now, found)
        return cached[1]

    def _network_problem(self) -> str:
        """Why this provider cannot enforce outbound policies ('' when it can)."""
        if not self.host.startswith("unix://"):
            return (
                "outbound policies need the Docker daemon on the control plane's machine "
                "(a unix:// DOCKER_HOST): its rules are loaded into each container's "
                "network namespace"
            )
        if os.geteuid() != 0:
            return "outbound policies need the control plane to run as root"
        if shutil.which("nft") is None:
            return "nft not found (apt-get install -y nftables)"
        if self.net_namespace and not os.path.exists(self.net_namespace):
            return f"DOCKER_NET_NAMESPACE {self.net_namespace} does not exist"
        return ""

    # --- plumbing: the engine's (instances hold the engine, never the provider) ------

    @property
    def client(self) -> docker.DockerClient:
        return self.engine.client

    def container(self, ref: str) -> Container:
        return self.engine.container(ref)

    def ensure_base_image(self) -> str:
        return self.engine.ensure_base_image()

    def _image_id(self, ref: str) -> str:
        try:
            with docker_call(f"inspect image {ref}", ref=ref):
                return self.client.images.get(ref).id
        except NotFound:
            if ref != self.base_image_ref:
                raise NotFound(f"Docker image {ref} does not exist", ref=ref) from None
        self.ensure_base_image()
        with docker_call(f"inspect image {ref}", ref=ref):
            return self.client.images.get(ref).id

    def _find(self, sandbox_id: str) -> list[Container]:
        wanted = [f"{labels.ROLE}={labels.ROLE_SANDBOX}", f"{labels.SANDBOX_ID}={sandbox_id}"]
        with docker_call(f"look up sandbox {sandbox_id}"):
            return self.client.containers.list(all=True, filters={"label": wanted})

    # --- the contract -----------------------------------------------------------------

    def create(
        self, spec: InstanceSpec, snapshot_ref: str, metadata: Mapping[str, str]
    ) -> DockerInstance:
        self.capabilities.require_network(spec.network, provider=self.name)
        existing = self._find(spec.sandbox_id)
        if existing:
            return DockerInstance(self.engine, existing[0])
        image_id = self._image_id(snapshot_ref)
        name = labels.container_name(spec.sandbox_id)
        options: dict[str, Any] = {
            "name": name,
            "entrypoint": KEEPALIVE[:1],
            "command": KEEPALIVE[1:],
            "labels": labels.sandbox_labels(spec.sandbox_id, metadata),
            "network_mode": "none",
            "working_dir": base_image.WORKDIR,
            "hostname": "sandbox",
            "init": True,
            "nano_cpus": spec.vcpus * 1_000_000_000,
            "mem_limit": f"{spec.memory_mb}m",
            "memswap_limit": f"{spec.memory_mb}m",
            "pids_limit": self.pids_limit,
        }
        if spec.network.networked:
            # A network per policy; no NET_RAW (a packet socket writes below the rules).
            options["network_mode"] = services.ensure_policy_network(
                self.client, POLICY_NETWORKS[spec.network.mode]
            ).name
            options["cap_drop"] = ["NET_RAW"]
            options["labels"][labels.NETWORK] = json.dumps(spec.network.as_dict())
        try:
            with docker_call(f"create container {name}"):
                made = self.client.containers.create(image_id, **options)
        except Conflict:
            return self._adopt(name, spec.sandbox_id)
        except ProviderError:
            self._remove_named(name)  # the answer may have been lost after the create
            raise
        try:
            return DockerInstance(self.engine, made)
        except ProviderError:
            self._remove_named(name)
            raise

    def _adopt(self, name: str, sandbox_id: str) -> DockerInstance:
        """Another create for this sandbox won the race for the name: use its container."""
        with docker_call(f"get container {name}"):
            other = self.client.containers.get(name)
        if other.labels.get(labels.SANDBOX_ID) != sandbox_id:
            raise Conflict(f"a container named {name} exists and is not this sandbox's")
        return DockerInstance(self.engine, other)

    def _remove_named(self, name: str) -> None:
        try:
            with docker_call(f"remove container {name}"):
                self.client.containers.get(name).remove(force=True, v=True)
        except ProviderError:
            return  # nothing there, or the daemon is down: the orphan collector retries

    def get(self, ref: str) -> DockerInstance:
        return DockerInstance(self.engine, self.container(ref))

    def list(self) -> list[DockerInstance]:
        wanted = [f"{labels.ROLE}={labels.ROLE_SANDBOX}"]
        with docker_call("list containers"):
            found = self.client.containers.list(all=True, filters={"label": wanted})
        by_owner = services.services_by_owner(self.client)
        records = self._relabel_records()
        return [
            DockerInstance(self.engine, c, by_owner.get(c.id, ()), records.get(c.id, {}))
            for c in found
            if META_SANDBOX_ID in labels.metadata_of(c.labels)
        ]

    # --- relabel records (labels.ROLE_RELABEL): the engine's, instances use them too ----

    def _relabel_records(self) -> dict[str, dict[str, str]]:
        return self.engine.relabel_records()

    def relabel_record(self, container_id: str) -> dict[str, str] | None:
        return self.engine.relabel_record(container_id)

    def write_relabel_record(self, container: Container, metadata: Mapping[str, str]) -> None:
        self.engine.write_relabel_record(container, metadata)

    def drop_relabel_record(self, container_id: str) -> None:
        self.engine.drop_relabel_record(container_id)

    def import_image(self, source: ImageSource) -> ImportResult:
        """``docker import`` of a one-layer image (a built root filesystem) with its
        configuration; the tag names the layer's digest, so importing it again reuses it."""
        if len(source.layers) != 1:
            raise Unsupported(
                "the docker provider imports one-layer root filesystems; load a layered "
                "image into the daemon (docker load, skopeo copy ... docker-daemon:NAME) "
                "and register it by name with import_snapshot",
                capability="import_image",
            )
        layer = source.layers[0]
        reference = f"{IMPORTED_REPOSITORY}:{layer.digest.partition(':')[2][:24]}"
        try:
            with docker_call(f"inspect image {reference}", ref=reference):
                self.client.images.get(reference)
            return ImportResult(
                ref=reference, size_bytes=layer.size, bytes_written=0, layers_reused=1
            )
        except NotFound:
            pass
        config = source.config
        changes = [f"ENV {key}={json.dumps(value)}" for key, value in config.env.items()]
        if config.working_dir:
            changes.append(f"WORKDIR {config.working_dir}")
        if config.user:
            changes.append(f"USER {config.user}")
        changes += [f"EXPOSE {port}" for port in config.exposed_ports]
        changes.append(f'LABEL {labels.ROLE}="image"')
        repository, _, tag = reference.partition(":")
        with docker_call(f"import image {reference}", ref=reference):
            self.client.api.import_image_from_file(
                str(layer.path), repository=repository, tag=tag, changes=changes
            )
        return ImportResult(ref=reference, size_bytes=layer.size, bytes_written=layer.size)

    def delete_snapshot(self, ref: str) -> None:
        try:
            with docker_call(f"inspect image {ref}", ref=ref):
                image = self.client.images.get(ref)
        except NotFound:
            return
        with docker_call("list containers"):
            users = self.client.containers.list(all=True, filters={"ancestor": image.id})
        if users:
            names = ", ".join(sorted(c.name for c in users)[:5])
            raise Conflict(f"Docker image {ref} is in use by container(s) {names}", ref=ref)
        try:
            with docker_call(f"remove image {ref}", ref=ref):
                self.client.images.remove(image.id, force=True)
        except NotFound:
            return

    def health(self) -> Health:
        started = time.perf_counter()
        try:
            with docker_call("ping"):
                self.client.ping()
        except ProviderError as exc:
            return Health(reachable=False, detail=exc.message)
        return Health(reachable=True, latency_ms=(time.perf_counter() - started) * 1000)


def _namespace(value: str) -> str | None:
    if not value:
        return None
    return value if value.startswith("/") else f"/run/netns/{value}"
