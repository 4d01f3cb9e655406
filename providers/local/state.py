"""What the local provider keeps on disk, under ``LOCAL_SANDBOX_ROOT``.

    <root>/sandboxes/<id>/state.json   the sandbox: spec, metadata, layers, runtime, services
    <root>/sandboxes/<id>/disk.img     its disk, mounted at disk/ (see disk.py)
    <root>/sandboxes/<id>/disk/upper/<part> its writable layer (one directory per part)
    <root>/sandboxes/<id>/disk/work/<part>  overlayfs work directories
    <root>/sandboxes/<id>/lock         flock taken by every state-changing operation
    <root>/sandboxes/<id>/activity     mtime = last exec or exposed-service traffic
    <root>/sandboxes/<id>/services/<name>.sock   an exposed service (0600, directory 0700)
    <root>/snapshots/<ref>/            immutable snapshot layers (see layers.py)
    <root>/base/                       the built-in base layer

State files are the provider's memory: any process (web, worker, a new one after a
restart) rebuilds everything from them, so sandboxes outlive the processes that made them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

from providers.errors import Conflict, NotFound, QuotaExceeded

SANDBOX_ID_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
STATE_VERSION = 1


@dataclass
class Runtime:
    """The running sandbox's processes: enough to find them again after a restart."""

    #: Host pid of the sandbox's init (pid 1 inside), and its start time in clock ticks
    #: since boot, so a recycled pid is never mistaken for it.
    pid: int
    start_ticks: int
    boot_id: str
    #: The bwrap process supervising the init (reaped by whoever started it).
    supervisor: int
    #: Whether the init is sbx-init, serving exec on ``<sandbox dir>/exec.sock``.
    exec_socket: bool = False
    #: The sandbox's pasta (user-mode network), when its policy is not ``none``; it lives
    #: in the sandbox's cgroups, so stopping the sandbox ends it too.
    network_pid: int | None = None


@dataclass
class ServiceEntry:
    """An exposed service: the port inside the sandbox. The forwarder serves it on
    ``<sandbox dir>/services/<name>.sock`` (earlier versions used a host loopback port,
    ``host_port``: state files that still name one load, and the field is dropped)."""

    port: int

    @classmethod
    def from_dict(cls, data: dict) -> ServiceEntry:
        return cls(port=int(data["port"]))


@dataclass
class SandboxState:
    id: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    preset_id: str
    metadata: dict[str, str]
    snapshot_ref: str
    #: Snapshot refs from the sandbox's own snapshot down to the base (top first).
    chain: list[str]
    #: Overlay parts: mount point inside the sandbox -> part name ("/" -> "root").
    parts: dict[str, str]
    created_at: float
    runtime: Runtime | None = None
    services: dict[str, ServiceEntry] = field(default_factory=dict)
    #: Unused: a local sandbox wakes on HTTP through the control plane's service proxy
    #: only (never by a connection to its socket). Kept so state files written with it load.
    wake_on_http: bool = False
    #: The sandbox's slot of host ids (see idmap.py), assigned at its first start.
    id_slot: int | None = None
    #: The outbound policy given at create (``providers.network.NetworkPolicy.as_dict``);
    #: None (state files from before policies): ``none``.
    network: dict | None = None
    #: The image configuration of a sandbox made from an imported image (see
    #: layers.import_image): env, working_dir, uid, gid, home, exposed_ports. None: the base.
    image: dict | None = None
    version: int = STATE_VERSION

    def to_json(self) -> str:
        """The state file's text. The same text ``dataclasses.asdict`` gave, without its
        deep copy of every value (hundreds of recursive calls on each write)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["runtime"] = None if self.runtime is None else _shallow_dict(self.runtime)
        data["services"] = {name: _shallow_dict(entry) for name, entry in self.services.items()}
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SandboxState:
        data = json.loads(text)
        runtime = data.pop("runtime", None)
        services = data.pop("services", {}) or {}
        state = cls(**data)
        state.runtime = Runtime(**runtime) if runtime else None
        state.services = {name: ServiceEntry.from_dict(s) for name, s in services.items()}
        return state


def _shallow_dict(obj: Runtime | ServiceEntry) -> dict:
    """A dataclass of plain values as a dict (what ``asdict`` gives for it, shallowly)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise_disk_full(exc, path)
        raise


def raise_disk_full(exc: OSError, where: Path) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise QuotaExceeded(
            f"no space left on the disk holding {where}: free space there or point "
            "LOCAL_SANDBOX_ROOT at a larger file system"
        ) from exc


@contextlib.contextmanager
def locked(path: Path, *, timeout: float = 60.0, shared: bool = False) -> Iterator[None]:
    """Hold an flock on ``path`` (created if needed); Conflict after ``timeout`` seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Conflict(
                        f"{path.parent.name} is busy with another operation; try again"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        yield
    finally:
        os.close(fd)


@functools.cache
def boot_id() -> str:
    """This boot's id; it cannot change while a process lives, so it is read once."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None when the process is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after = text.rpartition(")")[2].split()
    if len(after) < 20 or after[0] in {"Z", "X"}:
        return None
    return int(after[19])


def runtime_alive(runtime: Runtime | None) -> bool:
    """Whether the recorded init still runs (false after a crash or a host reboot)."""
    if runtime is None or runtime.boot_id != boot_id():
        return False
    return process_start_ticks(runtime.pid) == runtime.start_ticks


class Store:
    """Paths under the root and reading/writing sandbox state."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sandboxes = root / "sandboxes"
        self.snapshots = root / "snapshots"
        self.base = root / "base"
        #: Host id ranges held by sandboxes (see idmap.py).
        self.slots = root / "slots"

    @contextlib.contextmanager
    def locked_state(self, sandbox_id: str, timeout: float = 60.0) -> Iterator[SandboxState]:
        """A sandbox's state under its lock (every change to a sandbox holds it);
        NotFound when there is no such sandbox."""
        try:
            with locked(self.sandbox_dir(sandbox_id) / "lock", timeout=timeout):
                state = self.load(sandbox_id)
                if state is None:
                    raise NotFound(f"instance {sandbox_id} does not exist", ref=sandbox_id)
                yield state
        except FileNotFoundError:
            raise NotFound(f"instance {sandbox_id} does not exist", ref=sandbox_id) from None

    def ensure_dirs(self) -> None:
        for directory in (self.root, self.sandboxes, self.snapshots):
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise_disk_full(exc, directory)
                raise
        # Exec sockets and writable layers live below: only the provider's user may enter.
        if self.sandboxes.stat().st_mode & 0o077:
            os.chmod(self.sandboxes, 0o700)

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.sandboxes / sandbox_id

    def service_socket(self, sandbox_id: str, name: str) -> Path:
        return self.sandbox_dir(sandbox_id) / "services" / f"{name}.sock"

    def state_path(self, sandbox_id: str) -> Path:
        return self.sandbox_dir(sandbox_id) / "state.json"

    def load(self, sandbox_id: str) -> SandboxState | None:
        try:
            text = self.state_path(sandbox_id).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return SandboxState.from_json(text)

    def save(self, state: SandboxState) -> None:
        atomic_write(self.state_path(state.id), state.to_json())

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.sandboxes)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if SANDBOX_ID_RE.fullmatch(n))

    def touch_activity(self, sandbox_id: str) -> None:
        path = self.sandbox_dir(sandbox_id) / "activity"
        try:
            os.utime(path)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                path.touch()
        except OSError:
            pass

    # --- memory committed to running and paused sandboxes (see LocalProvider.capacity)
    #
    # One empty file per sandbox, ``<root>/committed/<boot id>/<sandbox id>=<MB>``: the
    # sum is one directory listing, however many sandboxes exist, and a host reboot (a new
    # boot id) leaves nothing committed. ``list()`` corrects what a crash left.

    def commitments_dir(self) -> Path:
        return self.root / "committed" / boot_id()

    def commitments(self) -> dict[str, int]:
        found = {}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.commitments_dir()):
                sandbox_id, _, megabytes = name.partition("=")
                if SANDBOX_ID_RE.fullmatch(sandbox_id) and megabytes.isdigit():
                    found[sandbox_id] = int(megabytes)
        return found

    def commit(self, sandbox_id: str, memory_mb: int) -> None:
        self.uncommit(sandbox_id)
        directory = self.commitments_dir()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (directory / f"{sandbox_id}={int(memory_mb)}").touch()

    def uncommit(self, sandbox_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.commitments_dir()):
                if name.partition("=")[0] == sandbox_id:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.commitments_dir() / name)

    def last_activity(self, sandbox_id: str) -> float | None:
        try:
            return (self.sandbox_dir(sandbox_id) / "activity").stat().st_mtime
        except OSError:
            return None
