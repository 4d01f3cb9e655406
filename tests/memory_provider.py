"""An in-memory provider for testing the service layer before (and beside) real ones.

It is registered only by the test suite and never offered to users. Instances keep their
files in a real directory per instance and ``exec`` runs a real ``/bin/sh`` there (no
isolation: this is a test double), so the contract's file-keeping rules can be checked.

Faults are injected per step: ``MemoryProvider.fail("start", Unavailable("boom"))`` makes
the next call of that step raise. Steps: ``create`` (before anything is made),
``create.after`` (after the instance was made: create must roll it back), ``start``,
``stop``, ``pause``, ``resume``, ``hibernate``, ``delete``, ``exec``, ``snapshot``,
``delete_snapshot``, ``get``, ``list``, ``metrics``, ``terminal``.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from providers.base import (
    META_SANDBOX_ID,
    Capabilities,
    ExecResult,
    Health,
    HttpService,
    Instance,
    InstanceSpec,
    InstanceStatus,
    MetricSample,
    Networking,
    Provider,
    SnapshotResult,
    TerminalSession,
)
from providers.errors import Conflict, InvalidState, NotFound, ProviderError, Unsupported
from tests.host_exec import open_host_terminal, run_in

NAME = "memory"


@dataclass
class _Record:
    ref: str
    spec: InstanceSpec
    snapshot_ref: str
    metadata: dict[str, str]
    workdir: Path
    status: InstanceStatus = InstanceStatus.STOPPED
    services: dict[str, HttpService] = field(default_factory=dict)
    wake_on: tuple[bool, bool] = (False, False)
    #: What the back end observed as the last use (tests set it to play traffic).
    last_activity: datetime | None = None


class _Store:
    """All state of the fake back end, shared by every provider object (like a server)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.root = Path(tempfile.mkdtemp(prefix="memory-provider-"))
        self.instances: dict[str, _Record] = {}
        self.snapshots: dict[str, Path] = {}
        self.faults: dict[str, list[ProviderError | None]] = {}
        self.calls: list[str] = []
        #: Capabilities to switch off ("supports_pause", ...), to test refusals.
        self.disabled: set[str] = set()
        #: Capabilities off by default that a test switches on ("supports_metrics").
        self.enabled: set[str] = set()
        #: Metric samples per instance ref, as a back end that measures would report them.
        self.samples: dict[str, list[MetricSample]] = {}
        self.ids = itertools.count(1)
        self.snapshots["base"] = self._new_dir("snap-base")

    def _new_dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True)
        return path

    def step(self, name: str) -> None:
        self.calls.append(name)
        pending = self.faults.get(name)
        if pending:
            error = pending.pop(0)  # None: this call succeeds, a later one fails
            if error is not None:
                raise error

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


STORE = _Store()


def reset() -> _Store:
    """Forget every instance and snapshot; return the fresh store."""
    global STORE
    STORE.close()
    STORE = _Store()
    return STORE


class MemoryInstance(Instance):
    def __init__(self, record: _Record) -> None:
        self._record = record
        self.id = record.ref
        self.status = record.status
        self.metadata = dict(record.metadata)
        self.networking = Networking(tuple(record.services.values()))
        self.last_activity = record.last_activity

    def _live(self) -> _Record:
        record = STORE.instances.get(self._record.ref)
        if record is None:
            raise NotFound(f"instance {self._record.ref} does not exist", ref=self._record.ref)
        return record

    def _set(self, status: InstanceStatus) -> None:
        self._live().status = status
        self.status = status

    def exec(
        self,
        command: str | Sequence[str],
        timeout: float = 60.0,
        *,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        with STORE.lock:
            STORE.step("exec")
            record = self._live()
            if record.status != InstanceStatus.RUNNING:
                raise InvalidState(f"instance {record.ref} is {record.status}, not running")
        return run_in(record.workdir, command, timeout, env)

    def open_terminal(
        self,
        command: str | Sequence[str] | None = None,
        *,
        cols: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
    ) -> TerminalSession:
        if "supports_terminal" in STORE.disabled:
            raise Unsupported("terminals are switched off", capability="supports_terminal")
        with STORE.lock:
            STORE.step("terminal")
            record = self._live()
            if record.status != InstanceStatus.RUNNING:
                raise InvalidState(f"instance {record.ref} is {record.status}, not running")
        return open_host_terminal(record.workdir, command, cols, rows, env)

    def _transition(self, step: str, allowed: set[InstanceStatus], to: InstanceStatus) -> None:
        capability = {"pause": "supports_pause", "hibernate": "supports_hibernate"}.get(step)
        if capability in STORE.disabled:
            raise Unsupported(f"{step} is switched off", capability=capability)
        with STORE.lock:
            STORE.step(step)
            record = self._live()
            if record.status == to:
                return
            if record.status not in allowed:
                raise InvalidState(f"cannot {step} an instance that is {record.status}")
            self._set(to)

    def start(self) -> None:
        stopped = {InstanceStatus.STOPPED, InstanceStatus.HIBERNATED}
        self._transition("start", stopped, InstanceStatus.RUNNING)

    def stop(self) -> None:
        self._transition("stop", set(InstanceStatus), InstanceStatus.STOPPED)

    def pause(self) -> None:
        self._transition("pause", {InstanceStatus.RUNNING}, InstanceStatus.PAUSED)

    def resume(self) -> None:
        paused = {InstanceStatus.PAUSED, InstanceStatus.HIBERNATED}
        self._transition("resume", paused, InstanceStatus.RUNNING)

    def hibernate(self) -> None:
        running = {InstanceStatus.RUNNING, InstanceStatus.PAUSED}
        self._transition("hibernate", running, InstanceStatus.HIBERNATED)

    def delete(self) -> None:
        with STORE.lock:
            STORE.step("delete")
            record = STORE.instances.pop(self._record.ref, None)
        if record is not None:
            shutil.rmtree(record.workdir, ignore_errors=True)

    def expose_http_service(self, name: str, port: int) -> str:
        with STORE.lock:
            STORE.step("expose")
            record = self._live()
            url = f"http://127.0.0.1:{20000 + port}/{record.ref}/{name}"
            record.services[name] = HttpService(name, port, url)
            self.networking = Networking(tuple(record.services.values()))
            return url

    def hide_http_service(self, name: str) -> None:
        with STORE.lock:
            STORE.step("hide")
            record = self._live()
            record.services.pop(name, None)
            self.networking = Networking(tuple(record.services.values()))

    def relabel(self, metadata: Mapping[str, str]) -> None:
        with STORE.lock:
            STORE.step("relabel")
            self._live().metadata = {str(k): str(v) for k, v in metadata.items()}
            self.metadata = dict(self._live().metadata)

    def set_wake_on(self, http: bool, ssh: bool) -> None:
        with STORE.lock:
            STORE.step("wake_on")
            self._live().wake_on = (http, ssh)

    def metrics(self) -> list[MetricSample]:
        with STORE.lock:
            STORE.step("metrics")
            return list(STORE.samples.get(self._live().ref, []))

    def snapshot(self) -> SnapshotResult:
        with STORE.lock:
            STORE.step("snapshot")
            record = self._live()
            ref = f"snap-{next(STORE.ids)}"
            target = STORE.root / ref
            shutil.copytree(record.workdir, target)
            STORE.snapshots[ref] = target
            size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
            return SnapshotResult(ref=ref, size_bytes=size)


class MemoryProvider(Provider):
    name = NAME

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> MemoryProvider:
        return cls()

    @property
    def capabilities(self) -> Capabilities:
        offered = {
            "supports_pause",
            "supports_hibernate",
            "supports_snapshots",
            "supports_exec",
            "supports_expose_http",
            "supports_wake_on",
            "supports_terminal",
            *STORE.enabled,
        } - STORE.disabled
        return Capabilities(
            **{name: True for name in offered},
            reasons={
                name: "switched off in the in-memory test provider"
                for name in Capabilities.names()
                if name not in offered
            },
        )

    @staticmethod
    def fail(step: str, error: ProviderError) -> None:
        STORE.faults.setdefault(step, []).append(error)

    @staticmethod
    def store() -> _Store:
        return STORE

    def create(
        self, spec: InstanceSpec, snapshot_ref: str, metadata: Mapping[str, str]
    ) -> MemoryInstance:
        with STORE.lock:
            STORE.step("create")
            for record in STORE.instances.values():
                if record.metadata.get(META_SANDBOX_ID) == spec.sandbox_id:
                    return MemoryInstance(record)
            source = STORE.snapshots.get(snapshot_ref)
            if source is None:
                raise NotFound(f"snapshot {snapshot_ref} does not exist", ref=snapshot_ref)
            ref = f"mem-{next(STORE.ids)}"
            workdir = STORE.root / ref
            shutil.copytree(source, workdir)
            STORE.instances[ref] = _Record(ref, spec, snapshot_ref, dict(metadata), workdir)
            try:
                STORE.step("create.after")
            except ProviderError:
                STORE.instances.pop(ref)
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            return MemoryInstance(STORE.instances[ref])

    def get(self, ref: str) -> MemoryInstance:
        with STORE.lock:
            STORE.step("get")
            record = STORE.instances.get(ref)
            if record is None:
                raise NotFound(f"instance {ref} does not exist", ref=ref)
            return MemoryInstance(record)

    def list(self) -> list[MemoryInstance]:
        with STORE.lock:
            STORE.step("list")
            return [
                MemoryInstance(r) for r in STORE.instances.values() if META_SANDBOX_ID in r.metadata
            ]

    def delete_snapshot(self, ref: str) -> None:
        with STORE.lock:
            STORE.step("delete_snapshot")
            if any(r.snapshot_ref == ref for r in STORE.instances.values()):
                raise Conflict(f"snapshot {ref} is in use by an instance", ref=ref)
            path = STORE.snapshots.pop(ref, None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    def health(self) -> Health:
        return Health(reachable=True, latency_ms=0.0)
