"""Morph Cloud as the provider's instances use it: the SDK client (made on first use),
the API key (only to redact it from messages) and the timings, with the calls instances
share with the provider. Instances hold this, never the provider, so the modules form a
tree: ``provider -> instance -> session``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from providers.errors import NotFound, OperationFailed, Timeout
from providers.morph.errors import morph_call, redact

if TYPE_CHECKING:
    from morphcloud.api import Instance as SdkInstance
    from morphcloud.api import MorphCloudClient


class SdkStatus:
    """Morph's instance statuses (the values of ``morphcloud.api.InstanceStatus``, a
    StrEnum, so they compare equal): here, so that reading the provider's config_keys
    needs no SDK. tests/providers/test_morph.py checks they match the SDK's."""

    PENDING = "pending"
    READY = "ready"
    PAUSED = "paused"
    SAVING = "saving"
    ERROR = "error"


class SdkSnapshotStatus:
    """Morph's snapshot statuses (``morphcloud.api.SnapshotStatus``), likewise."""

    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"
    DELETING = "deleting"
    DELETED = "deleted"


@contextlib.contextmanager
def _one_transport() -> Iterator[None]:
    """Make the SDK build one HTTP transport instead of 32 sync + 32 async shards.

    Each shard builds its own TLS context (seconds on a busy machine); a control plane
    making a few calls at a time needs one connection pool. The SDK only offers an
    environment variable for this, read at construction, so the builders are swapped for
    the duration of the construction instead.
    """
    import httpx
    from morphcloud import api as morph_api

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
    import httpx
    from morphcloud.api import MorphCloudClient

    with _construct_lock, _one_transport():
        client = MorphCloudClient(
            api_key=api_key, base_url=base_url, ssh_hostname=ssh_hostname, ssh_port=ssh_port
        )
    # The SDK's HTTP client waits forever by default; a hung API must not hang a worker.
    client._http_client.timeout = httpx.Timeout(http_timeout, connect=10.0)
    return client


class MorphSession:
    def __init__(
        self,
        api_key: str,
        base_url: str,
        *,
        boot_timeout: float,
        http_timeout: float,
        poll_interval: float,
        ssh_hostname: str | None,
        ssh_port: int | None,
    ) -> None:
        self._secret = api_key
        self.base_url = base_url
        self.boot_timeout = boot_timeout
        self.http_timeout = http_timeout
        self.poll_interval = poll_interval
        self.ssh_hostname = ssh_hostname
        self.ssh_port = ssh_port
        self._client: MorphCloudClient | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MorphSession(base_url={self.base_url!r})"

    @property
    def client(self) -> MorphCloudClient:
        """The SDK client, made on first use (making one is not free: see above)."""
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
