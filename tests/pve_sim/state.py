"""The simulated cluster's state: nodes, storages, guests, snapshots, locks and tasks.

Everything is guarded by one lock. Tasks finish lazily: every request first calls
``tick()``, which applies the effect of each task whose time has come, so what a client
observes is exactly what a timer would have produced, without a background thread.
"""

from __future__ import annotations

import itertools
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.pve_sim.schema import ApiError

LXC, QEMU = "lxc", "qemu"


@dataclass
class Node:
    name: str
    maxcpu: int = 16
    maxmem: int = 64 * 1024**3
    online: bool = True


@dataclass
class Storage:
    id: str
    plugintype: str = "lvmthin"
    shared: bool = False


@dataclass
class Guest:
    vmid: int
    kind: str  # lxc | qemu
    node: str
    config: dict[str, str]
    disk: Path
    status: str = "stopped"
    qmpstatus: str = "running"
    #: The template this is a linked clone of (its disk refers to the base volume).
    base: int | None = None
    snapshots: dict[str, Path] = field(default_factory=dict)
    started_at: float = 0.0
    ip: str = ""
    #: When set, the addresses the running guest reports on eth0 (CT interfaces, QEMU
    #: guest agent) instead of ``ip``: a guest lying about its address. Never served on.
    reported: list[str] | None = None
    agent: object | None = None  # LXC: the exec agent serving this CT while it runs
    owner: str = ""  # who made it (for the tests: "foreign" guests made "in PVE's UI")

    @property
    def label(self) -> str:
        return "CT" if self.kind == LXC else "VM"

    @property
    def is_template(self) -> bool:
        return self.config.get("template") == "1"

    @property
    def disk_key(self) -> str:
        return "rootfs" if self.kind == LXC else "scsi0"

    @property
    def memory_bytes(self) -> int:
        return int(self.config.get("memory", "512")) * 1024**2

    def volume(self) -> tuple[str, int]:
        """(volume id, size in GiB) of the root disk."""
        value = self.config[self.disk_key]
        volume = value.split(",")[0]
        match = re.search(r"size=(\d+)G", value)
        return volume, int(match.group(1)) if match else 0

    def set_volume(self, volume: str, size_gb: int) -> None:
        self.config[self.disk_key] = f"{volume},size={size_gb}G"

    def check_lock(self) -> None:
        lock = self.config.get("lock")
        if lock:
            raise ApiError(500, f"{self.label} is locked ({lock})")

    def config_path(self) -> str:
        folder = "lxc" if self.kind == LXC else "qemu-server"
        return f"nodes/{self.node}/{folder}/{self.vmid}.conf"


@dataclass
class Task:
    upid: str
    node: str
    type: str
    id: str
    user: str
    starttime: int
    pid: int
    pstart: int
    finish_at: float
    on_ok: Callable[[], None] | None = None
    on_fail: Callable[[], None] | None = None
    #: Set by fault injection: the task ends with this exit status instead of OK.
    fail_message: str | None = None
    status: str = "running"
    exitstatus: str | None = None
    created: float = 0.0  # wall-clock time the task began (benchmarks measure against it)

    def as_json(self) -> dict:
        data = {
            "upid": self.upid,
            "node": self.node,
            "pid": self.pid,
            "pstart": self.pstart,
            "starttime": self.starttime,
            "type": self.type,
            "id": self.id,
            "user": self.user,
            "status": self.status,
        }
        if self.exitstatus is not None:
            data["exitstatus"] = self.exitstatus
        return data


class Cluster:
    """A small PVE cluster in memory. Disks are real directories under ``root``."""

    def __init__(self, root: Path, *, task_delay: float = 0.02) -> None:
        self.lock = threading.RLock()
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.task_delay = task_delay
        #: Task type -> delay in seconds, overriding ``task_delay`` (e.g. slow clones).
        self.delays: dict[str, float] = {}
        self.nodes: dict[str, Node] = {}
        self.storages: dict[str, Storage] = {}
        self.guests: dict[int, Guest] = {}
        self.tasks: dict[str, Task] = {}
        self._pids = itertools.count(0x1000)
        self._disks = itertools.count(1)
        self.start_hooks: list[Callable[[Guest], None]] = []
        self.stop_hooks: list[Callable[[Guest], None]] = []
        #: What runs inside the guests (tests.pve_sim.guests.GuestRuntime), if anything.
        self.runtime: object | None = None

    # --- building --------------------------------------------------------------------

    def add_node(self, name: str, **kwargs) -> Node:
        self.nodes[name] = Node(name, **kwargs)
        return self.nodes[name]

    def add_storage(self, storage_id: str, **kwargs) -> Storage:
        self.storages[storage_id] = Storage(storage_id, **kwargs)
        return self.storages[storage_id]

    def new_disk(self, source: Path | None = None) -> Path:
        path = self.root / f"disk-{next(self._disks)}"
        if source is not None and source.exists():
            shutil.copytree(source, path, symlinks=True)
        else:
            path.mkdir()
        return path

    def add_template(
        self,
        vmid: int,
        kind: str,
        node: str,
        *,
        storage: str = "local-lvm",
        size_gb: int = 4,
        files: dict[str, str] | None = None,
        name: str = "",
    ) -> Guest:
        disk = self.new_disk()
        for rel, text in (files or {}).items():
            (disk / rel).write_text(text)
        config = {
            "cores": "1",
            "memory": "512",
            "template": "1",
            "description": "base image",
        }
        if kind == LXC:
            config |= {"hostname": name or f"tpl-{vmid}", "ostype": "debian", "arch": "amd64"}
            config["net0"] = "name=eth0,bridge=vmbr0,ip=dhcp"
        else:
            config |= {"name": name or f"tpl-{vmid}", "ostype": "l26", "agent": "1"}
            config["net0"] = "virtio=BC:24:11:00:00:01,bridge=vmbr0"
        guest = Guest(vmid, kind, node, config, disk, owner="operator")
        guest.set_volume(f"{storage}:base-{vmid}-disk-0", size_gb)
        self.guests[vmid] = guest
        return guest

    # --- lookups ---------------------------------------------------------------------

    def node(self, name: str) -> Node:
        node = self.nodes.get(name)
        if node is None:
            raise ApiError(
                500,
                f"hostname lookup '{name}' failed - failed to get address info for: "
                f"{name}: Name or service not known",
            )
        if not node.online:
            raise ApiError(595, f"no such cluster node '{name}' (node is offline)")
        return node

    def guest(self, node: str, kind: str, vmid: int) -> Guest:
        self.node(node)
        guest = self.guests.get(vmid)
        if guest is None or guest.node != node or guest.kind != kind:
            folder = "lxc" if kind == LXC else "qemu-server"
            raise ApiError(
                500, f"Configuration file 'nodes/{node}/{folder}/{vmid}.conf' does not exist"
            )
        return guest

    def linked_clones(self, template: int) -> list[Guest]:
        return [g for g in self.guests.values() if g.base == template]

    def used_memory(self, node: str) -> int:
        running = [g for g in self.guests.values() if g.node == node and g.status == "running"]
        return 2 * 1024**3 + sum(g.memory_bytes for g in running)

    # --- tasks -----------------------------------------------------------------------

    def task(
        self,
        node: str,
        type_: str,
        id_: str,
        user: str,
        *,
        on_ok: Callable[[], None] | None = None,
        on_fail: Callable[[], None] | None = None,
    ) -> Task:
        now = time.time()
        pid = next(self._pids)
        starttime = int(now)
        pstart = int(time.monotonic() * 100) & 0xFFFFFFFF
        upid = f"UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{type_}:{id_}:{user}:"
        delay = self.delays.get(type_, self.task_delay)
        task = Task(
            upid, node, type_, id_, user, starttime, pid, pstart, now + delay, on_ok, on_fail
        )
        task.created = now
        self.tasks[upid] = task
        return task

    def tick(self) -> None:
        """Finish every task whose time has come, in the order they were due."""
        with self.lock:
            now = time.time()
            due = sorted(
                (t for t in self.tasks.values() if t.status == "running" and t.finish_at <= now),
                key=lambda t: t.finish_at,
            )
            for task in due:
                self._finish(task)

    def _finish(self, task: Task) -> None:
        task.status = "stopped"
        if task.fail_message is not None:
            task.exitstatus = task.fail_message
            if task.on_fail:
                task.on_fail()
            return
        try:
            if task.on_ok:
                task.on_ok()
            task.exitstatus = "OK"
        except ApiError as exc:
            task.exitstatus = exc.message
            if task.on_fail:
                task.on_fail()

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until no task is running (tests: before looking at what is left)."""
        deadline = time.time() + timeout
        while True:
            self.tick()
            with self.lock:
                pending = [t.finish_at for t in self.tasks.values() if t.status == "running"]
            if not pending:
                return
            if time.time() > deadline:
                raise TimeoutError(f"{len(pending)} simulated task(s) still running")
            time.sleep(max(0.005, min(pending) - time.time()))

    # --- guest lifecycle helpers used by the handlers ---------------------------------

    def boot(self, guest: Guest) -> None:
        guest.status = "running"
        guest.qmpstatus = "running"
        guest.started_at = time.time()
        for hook in self.start_hooks:
            hook(guest)

    def halt(self, guest: Guest) -> None:
        guest.status = "stopped"
        guest.qmpstatus = "stopped"
        guest.started_at = 0.0
        for hook in self.stop_hooks:
            hook(guest)

    def remove(self, guest: Guest) -> None:
        if guest.status == "running":
            self.halt(guest)
        self.guests.pop(guest.vmid, None)
        shutil.rmtree(guest.disk, ignore_errors=True)
        for path in guest.snapshots.values():
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        with self.lock:
            for guest in list(self.guests.values()):
                if guest.status == "running":
                    self.halt(guest)
        shutil.rmtree(self.root, ignore_errors=True)


def mac_address() -> str:
    return "BC:24:11:" + ":".join(f"{b:02X}" for b in secrets.token_bytes(3))
