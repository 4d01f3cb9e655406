"""The handle the control plane holds on one local sandbox (see provider.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import quote

from providers.base import (
    Capabilities,
    ExecResult,
    HttpService,
    Instance,
    InstanceStatus,
    MetricSample,
    Networking,
    ProcessSession,
    SnapshotResult,
    TerminalSession,
)
from providers.local.state import SandboxState, Store


class SandboxOps(Protocol):
    """What a local instance needs: the store and the operations on one sandbox by id.

    The local provider implements them (they share its cgroups, layers and locks), but an
    instance is typed to this and nothing else of the provider, and this module imports
    no provider: ``provider -> instance``, never back."""

    store: Store

    @property
    def capabilities(self) -> Capabilities: ...

    def status_of(self, state: SandboxState) -> InstanceStatus: ...
    def get(self, ref: str) -> Instance: ...
    def exec(
        self,
        sandbox_id: str,
        command: str | Sequence[str],
        timeout: float,
        env: Mapping[str, str] | None,
    ) -> ExecResult: ...
    def open_terminal(
        self,
        sandbox_id: str,
        command: str | Sequence[str] | None,
        cols: int,
        rows: int,
        env: Mapping[str, str] | None,
    ) -> TerminalSession: ...
    def open_process(
        self, sandbox_id: str, command: str | Sequence[str], env: Mapping[str, str] | None
    ) -> ProcessSession: ...
    def relabel(self, sandbox_id: str, metadata: Mapping[str, str]) -> None: ...
    def start(self, sandbox_id: str) -> None: ...
    def stop(self, sandbox_id: str) -> None: ...
    def pause(self, sandbox_id: str) -> None: ...
    def resume(self, sandbox_id: str) -> None: ...
    def delete(self, sandbox_id: str) -> None: ...
    def expose(self, sandbox_id: str, name: str, port: int) -> str: ...
    def hide(self, sandbox_id: str, name: str) -> None: ...
    def set_wake_on(self, sandbox_id: str, http: bool, ssh: bool) -> None: ...
    def snapshot(self, sandbox_id: str) -> SnapshotResult: ...
    def metrics(self, sandbox_id: str) -> list[MetricSample]: ...


def service_url(store: Store, sandbox_id: str, name: str) -> str:
    """``http+unix://<socket path, percent-encoded>/`` (see providers/unix_http.py, which
    the control plane sends requests with): only the control plane's user can connect."""
    return f"http+unix://{quote(str(store.service_socket(sandbox_id, name)), safe='')}/"


class LocalInstance(Instance):
    """A handle on one sandbox, read from its state file when it was made."""

    def __init__(self, provider: SandboxOps, state: SandboxState) -> None:
        self._provider = provider
        self.id = state.id
        self.status = provider.status_of(state)
        self.metadata = dict(state.metadata)
        self.networking = Networking(
            tuple(
                HttpService(name, entry.port, service_url(provider.store, state.id, name))
                for name, entry in sorted(state.services.items())
            )
        )
        touched = provider.store.last_activity(state.id)
        self.last_activity = datetime.fromtimestamp(touched, UTC) if touched else None

    def __repr__(self) -> str:
        return f"<LocalInstance {self.id} {self.status}>"

    def _refresh(self) -> None:
        state = self._provider.store.load(self.id)
        if state is not None:
            fresh = LocalInstance(self._provider, state)
            self.status, self.networking = fresh.status, fresh.networking
            self.last_activity = fresh.last_activity

    def exec(
        self,
        command: str | Sequence[str],
        timeout: float = 60.0,
        *,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        return self._provider.exec(self.id, command, timeout, env)

    def open_terminal(
        self,
        command: str | Sequence[str] | None = None,
        *,
        cols: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
    ) -> TerminalSession:
        return self._provider.open_terminal(self.id, command, cols, rows, env)

    def open_process(
        self, command: str | Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> ProcessSession:
        return self._provider.open_process(self.id, command, env)

    def start(self) -> None:
        self._provider.start(self.id)
        self._refresh()

    def stop(self) -> None:
        self._provider.stop(self.id)
        self._refresh()

    def pause(self) -> None:
        self._provider.pause(self.id)
        self._refresh()

    def resume(self) -> None:
        self._provider.resume(self.id)
        self._refresh()

    def hibernate(self) -> None:
        self._provider.get(self.id)  # NotFound once deleted
        self._provider.capabilities.require("supports_hibernate", provider="local")

    def delete(self) -> None:
        self._provider.delete(self.id)

    def expose_http_service(self, name: str, port: int) -> str:
        url = self._provider.expose(self.id, name, port)
        self._refresh()
        return url

    def hide_http_service(self, name: str) -> None:
        self._provider.hide(self.id, name)
        self._refresh()

    def set_wake_on(self, http: bool, ssh: bool) -> None:
        self._provider.set_wake_on(self.id, http, ssh)

    def snapshot(self) -> SnapshotResult:
        return self._provider.snapshot(self.id)

    def relabel(self, metadata: Mapping[str, str]) -> None:
        self._provider.relabel(self.id, metadata)
        self.metadata = {str(k): str(v) for k, v in metadata.items()}

    def metrics(self) -> list[MetricSample]:
        return self._provider.metrics(self.id)
