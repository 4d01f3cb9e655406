"""One PVE API session: proxmoxer's https backend, timeouts, retries and typed errors.

* Timeouts are per operation: ordinary calls get ``PVE_HTTP_TIMEOUT``; calls that start
  slow work on the node (clone, destroy, template) get at least ``SLOW_CALL_TIMEOUT``.
* Lock errors ("CT is locked (...)", "can't lock file ... got timeout") are retried on
  every method with bounded exponential backoff (``PVE_LOCK_WAIT`` in total): nothing
  was done when PVE says so.
* Reads are retried a few times on connection errors, timeouts and server errors; writes
  are not (their outcome is unknown; the caller checks and rolls back).
* Every failure becomes a typed ``providers.errors`` error whose message names the call
  and never contains the token's secret.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from providers.errors import (
    Conflict,
    NotFound,
    OperationFailed,
    ProviderError,
    Timeout,
    Unavailable,
)
from providers.pve.settings import PveSettings

if TYPE_CHECKING:
    from proxmoxer import ProxmoxAPI
    from proxmoxer.core import ResourceException

SLOW_CALL_TIMEOUT = 120.0
READ_ATTEMPTS = 3
LOCK_MARKERS = ("is locked", "can't lock file", "got timeout while waiting for lock")
GONE_MARKERS = ("does not exist", "no such vm", "no such ct")


def is_lock_error(error: ProviderError) -> bool:
    return isinstance(error, Conflict) and any(m in error.message for m in LOCK_MARKERS)


def is_exists_error(error: ProviderError) -> bool:
    return isinstance(error, Conflict) and "already exists" in error.message


class PveClient:
    """Thread-safe: one requests session per timeout class, pooled for concurrency."""

    def __init__(self, settings: PveSettings) -> None:
        self.settings = settings
        self._apis: dict[float, ProxmoxAPI] = {}
        self._lock = threading.Lock()
        self._sent = 0
        #: node name -> (CPUs, memory in MB) of the online nodes the last full listing
        #: showed; the provider's size limits come from it without a call of their own.
        self.node_sizes: dict[str, tuple[int, int]] = {}

    @property
    def calls(self) -> int:
        """API requests sent so far (the benchmark counts them per start)."""
        return self._sent

    def __repr__(self) -> str:
        return f"PveClient({self.settings.host}, token {self.settings.token_id}=***)"

    # --- the four verbs --------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params)

    def post(self, path: str, *, slow: bool = False, **data: Any) -> Any:
        return self.call("POST", path, data, slow=slow)

    def put(self, path: str, **data: Any) -> Any:
        return self.call("PUT", path, data)

    def delete(self, path: str, *, slow: bool = True, **params: Any) -> Any:
        return self.call("DELETE", path, params, slow=slow)

    def call(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        *,
        slow: bool = False,
        lock_wait: float | None = None,
    ) -> Any:
        """One API call with the retries described in the module docstring."""
        lock_wait = self.settings.lock_wait if lock_wait is None else lock_wait
        deadline = time.monotonic() + lock_wait
        lock_delay = 0.1
        read_failures = 0
        while True:
            try:
                return self._once(method, path, params, slow=slow)
            except ProviderError as exc:
                if is_lock_error(exc) and time.monotonic() + lock_delay <= deadline:
                    time.sleep(lock_delay * (0.75 + random.random() / 2))  # noqa: S311 - jitter
                    lock_delay = min(lock_delay * 2, 2.0)
                    continue
                transient = isinstance(exc, Unavailable | Timeout)
                if method == "GET" and transient and read_failures < READ_ATTEMPTS - 1:
                    read_failures += 1
                    time.sleep(0.1 * 2**read_failures)
                    continue
                raise

    def _once(self, method: str, path: str, params: dict[str, Any], *, slow: bool) -> Any:
        timeout = max(self.settings.http_timeout, SLOW_CALL_TIMEOUT) if slow else None
        resource = self._api(timeout or self.settings.http_timeout)(path)
        params = {k: _wire(v) for k, v in params.items() if v is not None}
        with self._lock:
            self._sent += 1
        what = f"{method} {path}"
        # The SDK is imported where it is used: reading the provider's config_keys (the
        # registry does at start) must not need it (docs/providers/adding-a-provider.md).
        from proxmoxer.core import ResourceException

        try:
            verb: Callable[..., Any] = getattr(resource, method.lower())
            return verb(**params)
        except ResourceException as exc:
            raise self._typed(exc, what) from None
        except requests.exceptions.Timeout:
            raise Timeout(f"PVE did not answer {what} in time") from None
        except requests.exceptions.SSLError as exc:
            raise Unavailable(
                f"TLS with PVE failed for {what} ({_short(exc)}); check PVE_VERIFY_TLS"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise Unavailable(f"PVE connection failed during {what} ({_short(exc)})") from None

    def _api(self, timeout: float) -> ProxmoxAPI:
        from proxmoxer import ProxmoxAPI

        with self._lock:
            api = self._apis.get(timeout)
            if api is None:
                s = self.settings
                api = ProxmoxAPI(
                    s.host,
                    user=s.user,
                    token_name=s.token_name,
                    token_value=s.token_secret,
                    verify_ssl=s.verify_tls,
                    timeout=timeout,
                )
                # Enough pooled connections for many concurrent starts.
                session = api._store["session"]
                session.mount("https://", HTTPAdapter(pool_connections=4, pool_maxsize=64))
                self._apis[timeout] = api
            return api

    def _typed(self, exc: ResourceException, what: str) -> ProviderError:
        reason = self._scrub(str(exc.content or exc.status_message or "").strip())
        status = exc.status_code
        message = f"PVE refused {what}: {reason}"
        if status == 400:
            details = self._scrub("; ".join(f"{k}: {v}" for k, v in (exc.errors or {}).items()))
            return OperationFailed(f"PVE rejected the parameters of {what}: {details or reason}")
        if status in (401, 403):
            return OperationFailed(
                f"PVE refused the API token for {what} ({reason}); check PVE_API_TOKEN and "
                "the token's permissions"
            )
        lowered = reason.lower()
        if any(m in lowered for m in GONE_MARKERS):
            return NotFound(message)
        if any(m in lowered for m in LOCK_MARKERS) or "already exists" in lowered:
            return Conflict(message)
        if "not running" in lowered or "already running" in lowered or "is running" in lowered:
            return Conflict(message)
        if status >= 502 or "internal server error" in lowered:
            return Unavailable(message)
        return OperationFailed(message)

    def _scrub(self, text: str) -> str:
        secret = self.settings.token_secret
        return text.replace(secret, "***") if secret else text

    # --- helpers used everywhere -----------------------------------------------------------

    def resources(self, kind: str | None = None) -> list[dict]:
        rows = self.get("cluster/resources", type=kind) if kind else self.get("cluster/resources")
        if kind in (None, "node") and isinstance(rows, list):
            sizes = {
                str(row["node"]): (int(row.get("maxcpu") or 0), int(row.get("maxmem") or 0) >> 20)
                for row in rows
                if row.get("type") == "node" and row.get("status") == "online" and "node" in row
            }
            if sizes:
                self.node_sizes = sizes
        return rows

    @staticmethod
    def task_path(node: str, upid: str) -> str:
        return f"nodes/{node}/tasks/{quote(upid, safe='')}/status"


def _wire(value: Any) -> Any:
    """PVE takes booleans as 1/0 in form bodies."""
    if isinstance(value, bool):
        return int(value)
    return value


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."
