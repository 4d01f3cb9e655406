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

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar
from urllib.parse import urlparse

import httpx
from morphcloud import api as morph_api
from morphcloud.api import Instance as SdkInstance
from morphcloud.api import InstanceStatus as SdkStatus
from morphcloud.api import MorphCloudClient
from morphcloud.api import SnapshotStatus as SdkSnapshotStatus

from providers.addresses import AddressRule
from providers.base import (
    META_SANDBOX_ID,
    Capabilities,
    Health,
    InstanceSpec,
    Provider,
)
from providers.errors import Conflict, NotFound, OperationFailed, ProviderError, Timeout
from providers.morph.errors import morph_call, redact
from providers.morph.instance import MorphInstance
from providers.settings import int_setting, number_setting

DEFAULT_BASE_URL = "https://cloud.morph.so/api"


@contextlib.contextmanager
def _one_transport() -> Iterator[None]:
    """Make the SDK build one HTTP transport instead of 32 sync + 32 async shards.

    Each shard builds its own TLS context (seconds on a busy machine); a control plane
    making a few calls at a time needs one connection pool. The SDK only offers an
    environment variable for this, read at construction, so the builders are swapped for
    the duration of the construction instead.
    """
    saved = morph_api.build_http_transport, morph_api.build_async_http_transport
    morph_api.build_http_transport = httpx.HTTPTransport
    morph_api.build_async_http_transport = httpx.AsyncHTTPTransport
    try:
        yield
    finally:
        morph_api.build_http_transport, morph_api.build_async_http_transport = saved


_construct_lock = threading.Lock()


def _make_client(
    api_key: str,
    base_url: str,
    http_timeout: float,
    ssh_hostname: str | None = None,
    ssh_port: int | None = None,
) -> MorphCloudClient:
    with _construct_lock, _one_transport():
        client = MorphCloudClient(
            api_key=api_key, base_url=base_url, ssh_hostname=ssh_hostname, ssh_port=ssh_port
        )
    # The SDK's HTTP client waits forever by default; a hung API must not hang a worker.
    client._http_client.timeout = httpx.Timeout(http_timeout, connect=10.0)
    return client


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


class MorphProvider(Provider):
    name: ClassVar[str] = "morph"

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
        self._client: MorphCloudClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> MorphCloudClient:
        """The SDK client, made on first use (making one is not free: see below)."""
        with self._lock:
            if self._client is None:
                self._client = _make_client(
                    self._secret,
                    self.base_url,
                    self.http_timeout,
                    self.ssh_hostname,
                    self.ssh_port,
                )
            return self._client

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
        )

    # --- plumbing shared with MorphInstance ---------------------------------------------

    def call(self, what: str, fn: Callable[[], Any], *, ref: str | None = None) -> Any:
        """Call the SDK; anything it raises comes out as a typed error without the key."""
        with morph_call(what, secret=self._secret, ref=ref):
            return fn()

    def redact(self, text: str) -> str:
        return redact(text, self._secret)

    def fetch(self, ref: str) -> SdkInstance:
        return self.call(f"get instance {ref}", lambda: self.client.instances.get(ref), ref=ref)

    def wait_for(self, ref: str, wanted: set[str], *, what: str) -> SdkInstance:
        """Poll until the instance's Morph status is one of ``wanted``."""
        deadline = time.monotonic() + self.boot_timeout
        delay = self.poll_interval
        while True:
            current = self.fetch(ref)
            if current.status in wanted:
                return current
            if current.status == SdkStatus.ERROR:
                raise OperationFailed(f"Morph instance {ref} went into error while {what}")
            if time.monotonic() > deadline:
                raise Timeout(f"Morph instance {ref} still {current.status} after {what}", ref=ref)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def destroy(self, ref: str) -> None:
        """Delete an instance; an instance that is already gone is fine."""
        try:
            self.call(f"delete instance {ref}", lambda: self.client.instances.stop(ref), ref=ref)
        except NotFound:
            return

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
            return MorphInstance(self, existing[0])
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
        return MorphInstance(self, ready)

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
        return MorphInstance(self, self.fetch(ref))

    def list(self) -> list[MorphInstance]:
        listed = self.call("list instances", lambda: self.client.instances.list())
        return [MorphInstance(self, i) for i in listed if META_SANDBOX_ID in i.metadata]

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
