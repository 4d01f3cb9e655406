"""A provider whose whole state lives in a directory, shared by every process using it.

The in-memory provider (``tests/memory_provider.py``) keeps its state in one process, so
it cannot stand behind real django-q2 worker processes. This one can: each instance is a
directory holding ``state.json`` and a working directory, every change happens under an
exclusive ``flock`` on the root, and ``exec`` runs a real ``/bin/sh`` in the working
directory (no isolation: a test double, registered only by the test suite). It meets the
provider contract (it is in the conformance suite).

Settings: ``SANDBOX_PROVIDER_FILESTORE_ROOT`` (the shared directory).

Test hooks, all files under the root so another process can drive them:

* ``faults/<step>``: the next call of that step raises ``OperationFailed`` with the file's
  text (the file is consumed);
* ``add_metric``/``set_last_activity``: what the back end "observed" (CPU samples, traffic);
* ``block/<step>``: the step writes ``entered/<step>.<pid>`` and waits until the block
  file is removed (a test then kills the process at that exact point). ``create.after``
  blocks after the instance was made, before ``create`` returns.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
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
)
from providers.errors import Conflict, InvalidState, NotFound, OperationFailed
from tests.host_exec import run_in

NAME = "filestore"
ROOT_KEY = "SANDBOX_PROVIDER_FILESTORE_ROOT"
BASE_SNAPSHOT = "base"


class Store:
    """The directory layout and its lock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("instances", "snapshots", "faults", "block", "entered"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "snapshots" / BASE_SNAPSHOT).mkdir(exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def instance_dir(self, ref: str) -> Path:
        return self.root / "instances" / ref

    def read(self, ref: str) -> dict | None:
        try:
            return json.loads((self.instance_dir(ref) / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write(self, ref: str, state: dict) -> None:
        path = self.instance_dir(ref) / "state.json"
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(state))
        scratch.replace(path)

    def refs(self) -> list[str]:
        return sorted(p.name for p in (self.root / "instances").iterdir() if p.is_dir())

    def step(self, name: str) -> None:
        """Apply the test hooks of a step: an injected fault, or a block."""
        fault = self.root / "faults" / name
        with contextlib.suppress(FileNotFoundError):
            message = fault.read_text()
            fault.unlink()
            raise OperationFailed(message or f"{name} failed (injected)")
        block = self.root / "block" / name
        if block.exists():
            (self.root / "entered" / f"{name}.{os.getpid()}").write_text("")
            while block.exists():
                time.sleep(0.05)

    # --- helpers for tests ---------------------------------------------------------------

    def fail(self, step: str, message: str) -> None:
        (self.root / "faults" / step).write_text(message)

    def block(self, step: str) -> None:
        (self.root / "block" / step).write_text("")

    def unblock(self, step: str) -> None:
        (self.root / "block" / step).unlink(missing_ok=True)

    def entered(self, step: str) -> list[int]:
        """Pids of the processes waiting in ``step``."""
        return [int(p.suffix[1:]) for p in (self.root / "entered").glob(f"{step}.*")]

    def add_metric(self, ref: str, when: datetime, cpu_fraction: float) -> None:
        with self.locked():
            state = self.read(ref)
            state.setdefault("metrics", []).append([when.isoformat(), cpu_fraction])
            self.write(ref, state)

    def set_last_activity(self, ref: str, when: datetime) -> None:
        with self.locked():
            state = self.read(ref)
            state["last_activity"] = when.isoformat()
            self.write(ref, state)


class FileStoreInstance(Instance):
    def __init__(self, store: Store, ref: str, state: dict) -> None:
        self._store = store
        self.id = ref
        self.status = InstanceStatus(state["status"])
        self.metadata = dict(state["metadata"])
        self.networking = Networking(tuple(HttpService(**s) for s in state["services"]))
        seen = state.get("last_activity")
        self.last_activity = datetime.fromisoformat(seen) if seen else None

    @property
    def workdir(self) -> Path:
        return self._store.instance_dir(self.id) / "work"

    def _state(self) -> dict:
        state = self._store.read(self.id)
        if state is None:
            raise NotFound(f"instance {self.id} does not exist", ref=self.id)
        return state

    def _change(self, step: str, allowed: set[str], to: InstanceStatus) -> None:
        self._store.step(step)
        with self._store.locked():
            state = self._state()
            if state["status"] == to:
                self.status = to
                return
            if state["status"] not in allowed:
                raise InvalidState(f"cannot {step} an instance that is {state['status']}")
            state["status"] = str(to)
            self._store.write(self.id, state)
        self.status = to

    def exec(
        self,
        command: str | Sequence[str],
        timeout: float = 60.0,
        *,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        self._store.step("exec")
        if self._state()["status"] != InstanceStatus.RUNNING:
            raise InvalidState(f"instance {self.id} is not running")
        return run_in(self.workdir, command, timeout, env)

    def start(self) -> None:
        self._change("start", {"stopped", "hibernated"}, InstanceStatus.RUNNING)

    def stop(self) -> None:
        self._change("stop", {s.value for s in InstanceStatus}, InstanceStatus.STOPPED)

    def pause(self) -> None:
        self._change("pause", {"running"}, InstanceStatus.PAUSED)

    def resume(self) -> None:
        self._change("resume", {"paused", "hibernated"}, InstanceStatus.RUNNING)

    def hibernate(self) -> None:
        self._change("hibernate", {"running", "paused"}, InstanceStatus.HIBERNATED)

    def delete(self) -> None:
        self._store.step("delete")
        with self._store.locked():
            shutil.rmtree(self._store.instance_dir(self.id), ignore_errors=True)

    def expose_http_service(self, name: str, port: int) -> str:
        with self._store.locked():
            state = self._state()
            url = f"http://127.0.0.1:{20000 + port}/{self.id}/{name}"
            services = [s for s in state["services"] if s["name"] != name]
            state["services"] = [*services, asdict(HttpService(name, port, url))]
            self._store.write(self.id, state)
        self.networking = Networking(tuple(HttpService(**s) for s in state["services"]))
        return url

    def hide_http_service(self, name: str) -> None:
        with self._store.locked():
            state = self._state()
            state["services"] = [s for s in state["services"] if s["name"] != name]
            self._store.write(self.id, state)
        self.networking = Networking(tuple(HttpService(**s) for s in state["services"]))

    def relabel(self, metadata: Mapping[str, str]) -> None:
        with self._store.locked():
            state = self._state()
            state["metadata"] = {str(k): str(v) for k, v in metadata.items()}
            self._store.write(self.id, state)
        self.metadata = dict(state["metadata"])

    def set_wake_on(self, http: bool, ssh: bool) -> None:
        with self._store.locked():
            state = self._state()
            state["wake_on"] = [http, ssh]
            self._store.write(self.id, state)

    def metrics(self) -> list[MetricSample]:
        return [
            MetricSample(time=datetime.fromisoformat(when), cpu_fraction=cpu)
            for when, cpu in self._state().get("metrics", [])
        ]

    def snapshot(self) -> SnapshotResult:
        self._store.step("snapshot")
        with self._store.locked():
            self._state()
            ref = f"snap-{uuid.uuid4().hex[:10]}"
            target = self._store.root / "snapshots" / ref
            shutil.copytree(self.workdir, target)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        return SnapshotResult(ref=ref, size_bytes=size)


class FileStoreProvider(Provider):
    name = NAME
    #: Declared so the control plane's settings pass it on (a worker's environment).
    config_keys = (ROOT_KEY,)

    def __init__(self, root: Path) -> None:
        self.store = Store(root)

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> FileStoreProvider:
        root = config.get(ROOT_KEY, "").strip()
        if not root:
            raise ValueError(f"{ROOT_KEY} must name a directory")
        return cls(Path(root))

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            supports_pause=True,
            supports_hibernate=True,
            supports_snapshots=True,
            supports_exec=True,
            supports_expose_http=True,
            supports_wake_on=True,
            supports_metrics=True,
            reasons={
                "supports_ssh": "the file-backed test provider has no SSH",
                "supports_resize": "the file-backed test provider cannot resize",
                "supports_terminal": "the file-backed test provider has no terminals",
            },
        )

    def _instance(self, ref: str) -> FileStoreInstance:
        state = self.store.read(ref)
        if state is None:
            raise NotFound(f"instance {ref} does not exist", ref=ref)
        return FileStoreInstance(self.store, ref, state)

    def create(
        self, spec: InstanceSpec, snapshot_ref: str, metadata: Mapping[str, str]
    ) -> FileStoreInstance:
        self.store.step("create")
        with self.store.locked():
            for ref in self.store.refs():
                state = self.store.read(ref)
                if state and state["metadata"].get(META_SANDBOX_ID) == spec.sandbox_id:
                    return FileStoreInstance(self.store, ref, state)
            source = self.store.root / "snapshots" / snapshot_ref
            if not snapshot_ref or "/" in snapshot_ref or not source.is_dir():
                raise NotFound(f"snapshot {snapshot_ref} does not exist", ref=snapshot_ref)
            ref = f"fs-{uuid.uuid4().hex[:10]}"
            home = self.store.instance_dir(ref)
            home.mkdir()
            shutil.copytree(source, home / "work")
            state = {
                "status": str(InstanceStatus.STOPPED),
                "metadata": dict(metadata),
                "services": [],
                "snapshot_ref": snapshot_ref,
                "spec": asdict(spec),
                "wake_on": [False, False],
                "last_activity": None,
            }
            self.store.write(ref, state)
        # Outside the lock: a test may hold a worker here and kill it.
        self.store.step("create.after")
        return FileStoreInstance(self.store, ref, state)

    def get(self, ref: str) -> FileStoreInstance:
        self.store.step("get")
        return self._instance(ref)

    def list(self) -> list[FileStoreInstance]:
        self.store.step("list")
        listed = []
        for ref in self.store.refs():
            state = self.store.read(ref)
            if state and META_SANDBOX_ID in state["metadata"]:
                listed.append(FileStoreInstance(self.store, ref, state))
        return listed

    def delete_snapshot(self, ref: str) -> None:
        with self.store.locked():
            for other in self.store.refs():
                state = self.store.read(other)
                if state and state["snapshot_ref"] == ref:
                    raise Conflict(f"snapshot {ref} is in use by instance {other}", ref=ref)
            shutil.rmtree(self.store.root / "snapshots" / ref, ignore_errors=True)

    def health(self) -> Health:
        started = time.perf_counter()
        reachable = self.store.root.is_dir()
        return Health(reachable=reachable, latency_ms=(time.perf_counter() - started) * 1000)
