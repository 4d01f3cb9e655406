"""The fake Morph back end's state: instances, snapshots, and a real directory for each.

Every instance and snapshot owns a directory; ``exec`` runs the real command with that
directory as its working directory and ``$HOME`` (no isolation: a test double), so files
written through exec survive pause/resume and snapshots exactly as on a VM's disk.
"""

from __future__ import annotations

import itertools
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


class ApiFailure(Exception):
    """Becomes an HTTP error answer: ``status`` and a JSON ``{"detail": ...}`` body."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class FakeSnapshot:
    id: str
    directory: Path
    spec: dict
    image_id: str
    metadata: dict[str, str] = field(default_factory=dict)
    status: str = "ready"
    pending_polls: int = 0
    created: int = field(default_factory=lambda: int(time.time()))

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "object": "snapshot",
            "created": self.created,
            "status": self.status,
            "spec": self.spec,
            "refs": {"image_id": self.image_id},
            "digest": None,
            "metadata": self.metadata,
            "ttl": {"ttl_seconds": None, "ttl_expire_at": None},
        }


@dataclass
class FakeInstance:
    id: str
    directory: Path
    spec: dict
    snapshot_id: str
    image_id: str
    metadata: dict[str, str]
    status: str = "pending"
    pending_polls: int = 1
    services: list[dict] = field(default_factory=list)
    wake_on: dict = field(default_factory=lambda: {"wake_on_ssh": False, "wake_on_http": False})
    ttl: dict = field(
        default_factory=lambda: {"ttl_seconds": None, "ttl_expire_at": None, "ttl_action": "stop"}
    )
    created: int = field(default_factory=lambda: int(time.time()))

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "object": "instance",
            "created": self.created,
            "status": self.status,
            "spec": self.spec,
            "refs": {"snapshot_id": self.snapshot_id, "image_id": self.image_id},
            "networking": {"internal_ip": "10.0.0.2", "http_services": list(self.services)},
            "ttl": dict(self.ttl),
            "wake_on": dict(self.wake_on),
            "metadata": dict(self.metadata),
        }


class MorphState:
    """Everything the fake API knows. All methods hold the lock; exec runs outside it."""

    BASE_SNAPSHOT = "snapshot_base"
    BASE_IMAGE = "morphvm-minimal"

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.root = Path(tempfile.mkdtemp(prefix="fake-morph-"))
        self.instances: dict[str, FakeInstance] = {}
        self.snapshots: dict[str, FakeSnapshot] = {}
        self._ids = itertools.count(1)
        #: Fake clock offset (seconds) for TTL expiry; tests move it with ``advance``.
        self.clock_offset = 0.0
        #: How many GETs a new instance / snapshot stays pending for.
        self.boot_polls = 1
        self.snapshot_polls = 1
        #: What a pending instance / snapshot turns into: "ready", or "error" / "failed".
        self.boot_outcome = "ready"
        self.snapshot_outcome = "ready"
        base = self.root / self.BASE_SNAPSHOT
        base.mkdir()
        self.snapshots[self.BASE_SNAPSHOT] = FakeSnapshot(
            self.BASE_SNAPSHOT,
            base,
            {"vcpus": 1, "memory": 512, "disk_size": 4096},
            self.BASE_IMAGE,
        )

    def now(self) -> float:
        return time.time() + self.clock_offset

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}{secrets.token_hex(3)}"

    # --- lookups --------------------------------------------------------------------

    def instance(self, ref: str) -> FakeInstance:
        self.expire()
        found = self.instances.get(ref)
        if found is None:
            raise ApiFailure(404, f"Instance {ref} not found")
        return found

    def snapshot(self, ref: str) -> FakeSnapshot:
        found = self.snapshots.get(ref)
        if found is None:
            raise ApiFailure(404, f"Snapshot {ref} not found")
        return found

    def expire(self) -> None:
        """Apply TTL actions that are due on the fake clock."""
        for inst in list(self.instances.values()):
            due = inst.ttl.get("ttl_expire_at")
            if due is None or due > self.now():
                continue
            inst.ttl.update(ttl_seconds=None, ttl_expire_at=None)
            if inst.ttl.get("ttl_action") == "pause":
                inst.status = "paused"
            else:
                self.remove_instance(inst.id)

    # --- instances --------------------------------------------------------------------

    def boot(self, snapshot_id: str, body: dict) -> FakeInstance:
        snap = self.snapshot(snapshot_id)
        if snap.status != "ready":
            raise ApiFailure(409, f"Snapshot {snapshot_id} is {snap.status}")
        ref = self._new_id("morphvm")
        directory = self.root / ref
        shutil.copytree(snap.directory, directory)
        spec = {
            "vcpus": body.get("vcpus", snap.spec["vcpus"]),
            "memory": body.get("memory", snap.spec["memory"]),
            "disk_size": body.get("disk_size", snap.spec["disk_size"]),
        }
        inst = FakeInstance(
            ref, directory, spec, snapshot_id, snap.image_id, dict(body.get("metadata") or {})
        )
        inst.pending_polls = self.boot_polls
        if inst.pending_polls <= 0:
            inst.status = "ready"
        if body.get("ttl_seconds"):
            self.set_ttl(inst, body["ttl_seconds"], body.get("ttl_action"))
        self.instances[ref] = inst
        return inst

    def observe(self, inst: FakeInstance) -> dict:
        """A GET: a pending instance becomes ready after its pending polls."""
        if inst.status == "pending":
            inst.pending_polls -= 1
            if inst.pending_polls <= 0:
                inst.status = self.boot_outcome
        return inst.as_json()

    def remove_instance(self, ref: str) -> None:
        inst = self.instances.pop(ref, None)
        if inst is None:
            raise ApiFailure(404, f"Instance {ref} not found")
        shutil.rmtree(inst.directory, ignore_errors=True)

    def pause(self, inst: FakeInstance) -> None:
        if inst.status != "ready":
            raise ApiFailure(409, f"Instance {inst.id} is {inst.status}; only a ready one pauses")
        inst.status = "paused"

    def resume(self, inst: FakeInstance) -> None:
        if inst.status != "paused":
            raise ApiFailure(409, f"Instance {inst.id} is {inst.status}; only a paused one resumes")
        inst.status = "ready"

    def set_ttl(self, inst: FakeInstance, seconds: int | None, action: str | None) -> None:
        expire_at = int(self.now() + seconds) if seconds else None
        inst.ttl.update(ttl_seconds=seconds, ttl_expire_at=expire_at)
        if action:
            inst.ttl["ttl_action"] = action

    def expose(self, inst: FakeInstance, name: str, port: int) -> None:
        url = f"https://{name}-{inst.id.replace('_', '-')}.http.cloud.morph.so"
        inst.services = [s for s in inst.services if s["name"] != name]
        inst.services.append({"name": name, "port": port, "url": url})

    def hide(self, inst: FakeInstance, name: str) -> None:
        if all(s["name"] != name for s in inst.services):
            raise ApiFailure(404, f"Service {name} not found")
        inst.services = [s for s in inst.services if s["name"] != name]

    # --- snapshots --------------------------------------------------------------------

    def take_snapshot(self, inst: FakeInstance, metadata: dict[str, str]) -> FakeSnapshot:
        if inst.status not in ("ready", "paused"):
            raise ApiFailure(409, f"Instance {inst.id} is {inst.status}")
        ref = self._new_id("snapshot")
        directory = self.root / ref
        shutil.copytree(inst.directory, directory)
        snap = FakeSnapshot(ref, directory, dict(inst.spec), inst.image_id, dict(metadata))
        snap.pending_polls = self.snapshot_polls
        if snap.pending_polls > 0:
            snap.status = "pending"
        self.snapshots[ref] = snap
        return snap

    def observe_snapshot(self, snap: FakeSnapshot) -> dict:
        if snap.status == "pending":
            snap.pending_polls -= 1
            if snap.pending_polls <= 0:
                snap.status = self.snapshot_outcome
        return snap.as_json()

    def remove_snapshot(self, ref: str) -> None:
        snap = self.snapshot(ref)
        del self.snapshots[ref]
        shutil.rmtree(snap.directory, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def run_in(directory: Path, command: list[str], timeout: float | None) -> dict:
    """What Morph's exec answers: the command's exit code and output."""
    argv = ["/bin/sh", "-c", command[0]] if len(command) == 1 else list(command)
    env = {"HOME": str(directory), "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    try:
        done = subprocess.run(
            argv, cwd=directory, env=env, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ApiFailure(504, "command timed out") from None
    # Like a shell reports it: a command killed by signal N exits 128 + N.
    code = done.returncode if done.returncode >= 0 else 128 - done.returncode
    return {
        "exit_code": code,
        "stdout": done.stdout.decode("utf-8", "replace"),
        "stderr": done.stderr.decode("utf-8", "replace"),
    }
