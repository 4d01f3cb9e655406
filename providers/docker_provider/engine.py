"""The Docker daemon as the provider's instances and terminals use it: the client (made
on first use), the settings they need, and the few operations they share with the
provider (find a sandbox's container, build the base image, load a container's outbound
policy). Instances hold this, never the provider, so the modules form a tree:
``provider -> instance -> engine``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from providers import netfilter
from providers.docker_provider import base_image, labels
from providers.docker_provider.errors import docker_call
from providers.errors import NotFound, OperationFailed
from providers.network import NetworkPolicy

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container


class DockerEngine:
    def __init__(
        self,
        host: str,
        *,
        base_image_ref: str,
        timeout: int,
        net_namespace: str | None,
        net_deny: tuple,
    ) -> None:
        self.host = host
        self.base_image_ref = base_image_ref
        self.timeout = timeout
        self.net_namespace = net_namespace
        self.net_deny = net_deny
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()
        self._base_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DockerEngine(host={self.host!r})"

    @property
    def client(self) -> docker.DockerClient:
        """Connected on first use: a daemon that is down must not stop the app starting."""
        with self._lock:
            if self._client is None:
                import docker  # where it is used: reading config_keys needs no SDK

                with docker_call("connect"):
                    self._client = docker.DockerClient(base_url=self.host, timeout=self.timeout)
            return self._client

    def exec_api(self, timeout: float) -> docker.APIClient:
        """A low-level client whose reads wait ``timeout`` seconds (exec streams)."""
        import docker

        return docker.APIClient(
            base_url=self.host, version=self.client.api.api_version, timeout=timeout
        )

    def container(self, ref: str) -> Container:
        with docker_call(f"get container {ref}", ref=ref):
            found = self.client.containers.get(ref)
        if found.labels.get(labels.ROLE) != labels.ROLE_SANDBOX:
            raise NotFound(f"container {ref} is not a sandbox", ref=ref)
        return found

    def ensure_base_image(self) -> str:
        """Build the built-in base image if it is missing; return its reference."""
        with self._base_lock:
            try:
                with docker_call("inspect the base image"):
                    self.client.images.get(self.base_image_ref)
                return self.base_image_ref
            except NotFound:
                pass
            try:
                busybox = base_image.find_static_busybox()
            except base_image.BaseImageError as exc:
                raise OperationFailed(f"cannot build {self.base_image_ref}: {exc}") from None
            with docker_call("import the base image"):
                base_image.import_base_image(self.client.api, self.base_image_ref, busybox)
            return self.base_image_ref

    def enforce_network(self, container: Container) -> None:
        """Load the container's outbound policy into its network namespace (see
        providers/netfilter.py); stop it and raise OperationFailed when that fails."""
        policy = NetworkPolicy.from_dict(labels.network_of(container.labels))
        if not policy.networked:
            return
        pid = (container.attrs.get("State") or {}).get("Pid") or 0
        try:
            if not pid:
                raise OSError("the container has no process")
            netfilter.enforce(
                f"/proc/{pid}/ns/net",
                policy,
                upstream=self.net_namespace,
                deny=self.net_deny,
                whole=False,  # Docker's embedded DNS has its rules there
            )
        except OSError as exc:
            with contextlib.suppress(Exception):
                container.kill()
            raise OperationFailed(
                f"could not enforce the {policy.mode} policy of container "
                f"{container.id[:12]}: {exc}",
                ref=container.id,
            ) from exc

    # --- relabel records (labels.ROLE_RELABEL): who owns a container made for a pool ---

    def relabel_records(self) -> dict[str, dict[str, str]]:
        wanted = [f"{labels.ROLE}={labels.ROLE_RELABEL}"]
        with docker_call("list relabel records"):
            found = self.client.volumes.list(filters={"label": wanted})
        return {
            (v.attrs.get("Labels") or {}).get(labels.OWNER, ""): labels.metadata_of(
                v.attrs.get("Labels") or {}
            )
            for v in found
        }

    def relabel_record(self, container_id: str) -> dict[str, str] | None:
        try:
            with docker_call("read relabel record"):
                volume = self.client.volumes.get(labels.relabel_name(container_id))
        except NotFound:
            return None
        found = volume.attrs.get("Labels") or {}
        if found.get(labels.OWNER) != container_id:
            return None
        return labels.metadata_of(found)

    def write_relabel_record(self, container: Container, metadata: Mapping[str, str]) -> None:
        """Replace the record (volumes cannot be relabelled either): remove, then make."""
        self.drop_relabel_record(container.id)
        record = {
            labels.ROLE: labels.ROLE_RELABEL,
            labels.OWNER: container.id,
            labels.METADATA: json.dumps(dict(metadata), sort_keys=True),
        }
        with docker_call("write relabel record"):
            self.client.volumes.create(name=labels.relabel_name(container.id), labels=record)

    def drop_relabel_record(self, container_id: str) -> None:
        with contextlib.suppress(NotFound), docker_call("remove relabel record"):
            self.client.volumes.get(labels.relabel_name(container_id)).remove(force=True)
