"""The ``morph`` provider, through the ``morphcloud`` SDK.

How the contract maps onto Morph:

* ``create`` boots an instance from a snapshot with the preset's size and our marker
  metadata, and waits until it is ready; Morph has no "created but not booted" state, so
  ``start`` on it is a no-op. Before booting it looks the sandbox id up (idempotence);
  when the boot call fails it looks again and deletes whatever the lost answer made.
* Morph has no stopped state: ``stop`` pauses the instance and records ``sbx_power=off``
  in its metadata (``start`` resumes it and records ``on``). A paused instance therefore
  reads as ``stopped`` or ``paused`` depending on that key; both keep memory and disk.
  Wake-on flags are parked in metadata while stopped, so a stopped sandbox does not
  wake on traffic.
* ``delete`` is Morph's instance "stop" (it destroys the instance).
* ``snapshot`` makes a new Morph snapshot of the running instance (its id is the ref).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlparse

from providers.addresses import AddressRule
from providers.base import (
    META_SANDBOX_ID,
    Capabilities,
    Health,
    InstanceSpec,
    Provider,
)
from providers.errors import Conflict, NotFound, ProviderError
from providers.morph.instance import MorphInstance
from providers.morph.session import MorphSession, SdkSnapshotStatus, SdkStatus
from providers.settings import int_setting, number_setting

if TYPE_CHECKING:
    from morphcloud.api import Instance as SdkInstance
    from morphcloud.api import MorphCloudClient

DEFAULT_BASE_URL = "https://cloud.morph.so/api"


#: Why outbound policies are refused (docs/network.md, "morph").
MORPH_NETWORK = (
    "Morph Cloud gives its VMs their network and the provider cannot filter it (no deny "
    "list for your hosts or private ranges), so no policy beyond Morph's own is enforced"
)


def _hostname(value: str) -> str | None:
    """MORPH_SSH_HOSTNAME: a host name or address, nothing else ('' = the SDK's default)."""
    value = value.strip()
    if not value:
        return None
    if not re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", value) or value.startswith(("-", ".")):
        raise ValueError(f"MORPH_SSH_HOSTNAME: {value!r} is not a host name or address")
    return value


#: The largest instance this provider boots on Morph Cloud. Fixed here, not read from
#: Morph (its API publishes no ceiling): generous enough for every default preset, and a
#: larger preset is refused up front instead of failing at boot (docs/providers/morph.md).
MORPH_MAX_VCPUS = 16
MORPH_MAX_MEMORY_MB = 65536
MORPH_MAX_DISK_GB = 256


class MorphProvider(Provider):
    name: ClassVar[str] = "morph"
    config_keys: ClassVar[tuple[str, ...]] = (
        "MORPH_API_KEY",
        "MORPH_BASE_URL",
        "MORPH_BOOT_TIMEOUT",
        "MORPH_HTTP_TIMEOUT",
        "MORPH_SSH_HOSTNAME",
        "MORPH_SSH_PORT",
    )

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        boot_timeout: float = 600.0,
        http_timeout: float = 60.0,
        poll_interval: float = 0.05,
        ssh_hostname: str | None = None,
        ssh_port: int | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("MORPH_API_KEY is empty")
        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"MORPH_BASE_URL must be an http(s) URL, not {base_url!r}")
        self._secret = api_key
        self.base_url = base_url.rstrip("/")
        self.boot_timeout = boot_timeout
        self.http_timeout = http_timeout
        self.poll_interval = poll_interval
        #: Morph's SSH gateway (terminals, ``ssh_info``); None: the SDK's default.
        self.ssh_hostname = ssh_hostname or None
        self.ssh_port = ssh_port
        #: What instances hold: the SDK client, the key (to redact it) and the timings.
        self.session = MorphSession(
            api_key,
            self.base_url,
            boot_timeout=boot_timeout,
            http_timeout=http_timeout,
            poll_interval=poll_interval,
            ssh_hostname=self.ssh_hostname,
            ssh_port=ssh_port,
        )

    @property
    def client(self) -> MorphCloudClient:
        return self.session.client

    def __repr__(self) -> str:
        return f"MorphProvider(base_url={self.base_url!r})"

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> MorphProvider:
        api_key = config.get("MORPH_API_KEY", "").strip()
        if not api_key:
            raise ValueError("MORPH_API_KEY is not set")
        return cls(
            api_key,
            config.get("MORPH_BASE_URL", "").strip() or DEFAULT_BASE_URL,
            boot_timeout=number_setting(config, "MORPH_BOOT_TIMEOUT", 600.0, low=1, high=86_400),
            http_timeout=number_setting(config, "MORPH_HTTP_TIMEOUT", 60.0, low=0.1, high=3600),
            ssh_hostname=_hostname(config.get("MORPH_SSH_HOSTNAME", "")),
            ssh_port=(
                int_setting(config, "MORPH_SSH_PORT", 22, low=1, high=65535)
                if config.get("MORPH_SSH_PORT", "").strip()
                else None
            ),
        )

    @classmethod
    def configured(cls, config: Mapping[str, str]) -> bool:
        return bool(config.get("MORPH_API_KEY", "").strip())

    @property
    def service_address_rule(self) -> AddressRule:
        """Service URLs are whatever Morph's API names: their hosts must resolve to global
        or private unicast addresses when the proxy connects."""
        return AddressRule()

    @property
    def capabilities(self) -> Capabilities:
        # Morph's VMs get the network Morph gives them; see docs/network.md.
        return Capabilities(
            supports_pause=True,
            supports_snapshots=True,
            supports_exec=True,
            supports_expose_http=True,
            supports_wake_on=True,
            supports_ssh=True,
            supports_terminal=True,
            reasons={
                "supports_hibernate": "Morph's pause already saves memory; there is no "
                "separate hibernate (use pause)",
                "supports_resize": "resizing a Morph instance needs a reboot; not offered yet",
                "supports_metrics": "Morph reports no per-instance CPU or memory samples",
                "supports_process": "not wired to Morph's SSH yet: use Morph's own SSH "
                "(GET /api/v1/sandboxes/{id}/ssh) for scp and sftp",
                "supports_network_internet": MORPH_NETWORK,
                "supports_network_allowlist": MORPH_NETWORK,
            },
            max_vcpus=MORPH_MAX_VCPUS,
            max_memory_mb=MORPH_MAX_MEMORY_MB,
            max_disk_gb=MORPH_MAX_DISK_GB,
            limits_source="the sizes this provider offers on Morph Cloud",
        )

    # --- plumbing: the session's (instances hold the session, never the provider) --------

    def call(self, what: str, fn: Callable[[], Any], *, ref: str | None = None) -> Any:
        return self.session.call(what, fn, ref=ref)

    def redact(self, text: str) -> str:
        return self.session.redact(text)

    def fetch(self, ref: str) -> SdkInstance:
        return self.session.fetch(ref)

    def wait_for(self, ref: str, wanted: set[str], *, what: str) -> SdkInstance:
        return self.session.wait_for(ref, wanted, what=what)

    def destroy(self, ref: str) -> None:
        self.session.destroy(ref)

    # --- the contract -------------------------------------------------------------------

    def _find(self, sandbox_id: str) -> list[SdkInstance]:
        return self.call(
            f"look up sandbox {sandbox_id}",
            lambda: self.client.instances.list(metadata={META_SANDBOX_ID: sandbox_id}),
        )

    def create(
        self, spec: InstanceSpec, snapshot_ref: str, metadata: Mapping[str, str]
    ) -> MorphInstance:
        self.capabilities.require_network(spec.network, provider=self.name)
        existing = self._find(spec.sandbox_id)
        if existing:
            return MorphInstance(self.session, existing[0])
        marker = {**dict(metadata), META_SANDBOX_ID: spec.sandbox_id}
        try:
            booted = self.call(
                f"boot snapshot {snapshot_ref}",
                lambda: self.client.instances.boot(
                    snapshot_ref,
                    vcpus=spec.vcpus,
                    memory=spec.memory_mb,
                    disk_size=spec.disk_gb * 1024,
                    metadata=marker,
                ),
                ref=snapshot_ref,
            )
        except NotFound:
            raise NotFound(
                f"Morph snapshot {snapshot_ref} does not exist", ref=snapshot_ref
            ) from None
        except ProviderError:
            # The boot may have happened with its answer lost: remove what it made.
            self._remove_sandbox(spec.sandbox_id)
            raise
        try:
            ready = self.wait_for(booted.id, {SdkStatus.READY}, what="booting")
        except ProviderError:
            self._remove_sandbox(spec.sandbox_id, booted.id)
            raise
        return MorphInstance(self.session, ready)

    def _remove_sandbox(self, sandbox_id: str, *refs: str) -> None:
        """Best-effort roll-back of a failed create (the garbage collector retries)."""
        try:
            found = {i.id for i in self._find(sandbox_id)} | set(refs)
        except ProviderError:
            found = set(refs)
        for ref in found:
            try:
                self.destroy(ref)
            except ProviderError:
                continue

    def get(self, ref: str) -> MorphInstance:
        return MorphInstance(self.session, self.fetch(ref))

    def list(self) -> list[MorphInstance]:
        listed = self.call("list instances", lambda: self.client.instances.list())
        return [MorphInstance(self.session, i) for i in listed if META_SANDBOX_ID in i.metadata]

    def delete_snapshot(self, ref: str) -> None:
        listed = self.call("list instances", lambda: self.client.instances.list())
        users = sorted(i.id for i in listed if i.refs.snapshot_id == ref)
        if users:
            shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
            raise Conflict(f"Morph snapshot {ref} is in use by instance(s) {shown}", ref=ref)
        try:
            snapshot = self.call(
                f"get snapshot {ref}", lambda: self.client.snapshots.get(ref), ref=ref
            )
        except NotFound:
            return
        if snapshot.status in (SdkSnapshotStatus.DELETING, SdkSnapshotStatus.DELETED):
            return
        try:
            self.call(f"delete snapshot {ref}", snapshot.delete, ref=ref)
        except NotFound:
            return

    def health(self) -> Health:
        started = time.perf_counter()
        try:
            self.call("health check", lambda: self.client.instances.list_paginated(page=1, limit=1))
        except ProviderError as exc:
            return Health(reachable=False, detail=exc.message)
        return Health(reachable=True, latency_ms=(time.perf_counter() - started) * 1000)
