"""Control groups for sandboxes, on cgroup v1, v2 or both (a "hybrid" host).

Each sandbox gets one directory per hierarchy it uses, ``<mount>/<parent>/<sandbox id>``.
A role (memory, cpu, pids limits; freezing; killing; accounting) is served by v2 when
the v2 tree offers it and by the v1 controller otherwise, so a hybrid host (v1
controllers plus a v2 ``unified`` tree with only core features) freezes and kills through
v2 and limits through v1. Whatever no hierarchy offers is reported by ``missing()``
so the provider's capabilities can say why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CPU_PERIOD_US = 100_000
LIMIT_ROLES = ("memory", "cpu", "pids")


@dataclass(frozen=True)
class Limits:
    vcpus: int
    memory_mb: int
    pids_max: int


@dataclass(frozen=True)
class Totals:
    """Caps on the sum of all sandboxes, set on the parent cgroup (0 = no cap)."""

    pids: int = 0
    memory_mb: int = 0


#: The host keeps at least this many pids (and a quarter of its pid space) for itself.
HOST_PIDS_RESERVE = 4096
#: ... and at least this much memory (and a tenth of it).
HOST_MEMORY_RESERVE_MB = 1024


def host_pid_space() -> int:
    """How many tasks the host can have at once: the lower of pid_max and threads-max."""
    values = [
        _read_int(Path("/proc/sys/kernel/pid_max")),
        _read_int(Path("/proc/sys/kernel/threads-max")),
    ]
    found = [v for v in values if v]
    return min(found) if found else 32768


def host_memory_mb() -> int:
    """MemTotal of /proc/meminfo, in MiB (0 when unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def default_total_pids(pid_space: int) -> int:
    """The pids all sandboxes together may use: 75% of the host's pid space.

    The host keeps max(4096, 25%) for its own services, the control plane and its workers
    (and an operator's shell): a sandbox at its own limit, or all of them together, can
    then never stop the host from forking. Never less than half of the pid space (hosts
    with a tiny pid_max).
    """
    reserve = min(max(HOST_PIDS_RESERVE, pid_space // 4), pid_space // 2)
    return max(1, pid_space - reserve)


def default_total_memory_mb(memory_mb: int) -> int:
    """The memory all sandboxes together may use: MemTotal less max(1 GiB, 10%).

    What is kept back serves the kernel, the page cache of the host's own services and
    the control plane. Never less than half of MemTotal (small hosts); 0 (no cap) when
    MemTotal is unknown."""
    if memory_mb <= 0:
        return 0
    reserve = min(max(HOST_MEMORY_RESERVE_MB, memory_mb // 10), memory_mb // 2)
    return max(1, memory_mb - reserve)


@dataclass(frozen=True)
class Layout:
    """Which cgroup hierarchies this host has mounted, and what they offer."""

    #: v1 controller name -> mount point (co-mounted controllers share one).
    v1: dict[str, Path] = field(default_factory=dict)
    v2: Path | None = None
    #: Controllers the v2 root can hand down.
    v2_controllers: frozenset[str] = frozenset()

    @classmethod
    def discover(cls, mountinfo: str | None = None) -> Layout:
        if mountinfo is None:
            try:
                mountinfo = Path("/proc/self/mountinfo").read_text()
            except OSError:
                mountinfo = ""
        v1: dict[str, Path] = {}
        v2: Path | None = None
        for line in mountinfo.splitlines():
            left, sep, right = line.partition(" - ")
            if not sep:
                continue
            fields, extra = left.split(), right.split()
            if len(fields) < 5 or len(extra) < 3:
                continue
            root, mount_point, fstype = fields[3], Path(fields[4]), extra[0]
            if root != "/":
                continue  # a sub-tree bind (container): its paths are not the host's
            if fstype == "cgroup2":
                v2 = mount_point
            elif fstype == "cgroup":
                for option in extra[2].split(","):
                    if option in {"memory", "cpu", "cpuacct", "pids", "freezer"}:
                        v1[option] = mount_point
        controllers: frozenset[str] = frozenset()
        if v2 is not None:
            with contextlib.suppress(OSError):
                controllers = frozenset((v2 / "cgroup.controllers").read_text().split())
        return cls(v1=v1, v2=v2, v2_controllers=controllers)

    def writable(self) -> bool:
        mounts = [*self.v1.values(), *([self.v2] if self.v2 else [])]
        return bool(mounts) and all(os.access(m, os.W_OK) for m in mounts)


class Cgroups:
    """Creates, limits, freezes, kills and removes the cgroups of sandboxes."""

    def __init__(self, layout: Layout, parent: str, totals: Totals | None = None) -> None:
        self.layout = layout
        self.parent = parent
        self.totals = totals or Totals()
        self.enabled = layout.writable()
        # role -> ("v1" | "v2", mount); a role missing here is not available.
        self.roles: dict[str, tuple[str, Path]] = {}
        if not self.enabled:
            return
        for role in LIMIT_ROLES:
            if layout.v2 is not None and role in layout.v2_controllers:
                self.roles[role] = ("v2", layout.v2)
            elif role in layout.v1:
                self.roles[role] = ("v1", layout.v1[role])
        v2_core = layout.v2 is not None and _kernel_at_least(5, 2)
        if v2_core:
            self.roles["freeze"] = ("v2", layout.v2)
        elif "freezer" in layout.v1:
            self.roles["freeze"] = ("v1", layout.v1["freezer"])
        if layout.v2 is not None and _kernel_at_least(5, 14):
            self.roles["kill"] = ("v2", layout.v2)
        if layout.v2 is not None:
            self.roles["accounting"] = ("v2", layout.v2)
        elif "cpuacct" in layout.v1:
            self.roles["accounting"] = ("v1", layout.v1["cpuacct"])

    # --- what is available

    def missing(self) -> dict[str, str]:
        """Role -> why it is unavailable on this host."""
        if not self.enabled:
            why = (
                "cgroups are not writable (run as root, or delegate a cgroup)"
                if self.layout.v1 or self.layout.v2
                else "no cgroup hierarchy is mounted"
            )
            return {role: why for role in (*LIMIT_ROLES, "freeze", "kill", "accounting")}
        missing = {}
        for role in (*LIMIT_ROLES, "freeze"):
            if role not in self.roles:
                missing[role] = f"no {'freezer' if role == 'freeze' else role} cgroup controller"
        return missing

    def _mounts(self) -> list[Path]:
        return sorted({mount for _, mount in self.roles.values()})

    def dirs(self, sandbox_id: str) -> list[Path]:
        return [mount / self.parent / sandbox_id for mount in self._mounts()]

    def _dir(self, role: str, sandbox_id: str) -> tuple[str, Path] | None:
        found = self.roles.get(role)
        if found is None:
            return None
        return found[0], found[1] / self.parent / sandbox_id

    def procs_files(self, sandbox_id: str) -> list[str]:
        """The ``cgroup.procs`` files a process writes "0" to in order to join."""
        return [str(d / "cgroup.procs") for d in self.dirs(sandbox_id)]

    # --- lifecycle

    def ensure(self, sandbox_id: str, limits: Limits, *, reapply: bool = True) -> None:
        """Create the sandbox's cgroups (idempotent) and apply its limits.

        With ``reapply=False`` cgroups that all exist are left as they are (a start right
        after create, which set them); after a reboot they are made again."""
        if not self.enabled:
            return
        if not reapply and all(d.is_dir() for d in self.dirs(sandbox_id)):
            self.apply_totals()  # a read each when they hold (an operator may lift them)
            return
        for mount in self._mounts():
            parent = mount / self.parent
            parent.mkdir(exist_ok=True)
            if mount == self.layout.v2:
                self._delegate_v2(mount, parent)
        self.apply_totals()
        for mount in self._mounts():
            (mount / self.parent / sandbox_id).mkdir(exist_ok=True)
        self._apply(sandbox_id, limits)

    def apply_totals(self) -> None:
        """Cap the parent cgroup: the pids and memory of all sandboxes together (idempotent).

        The kernel enforces a parent's limits on everything below it (cgroup v1's memory
        hierarchy is always on in kernels since 4.16+; v2 always), so however many
        sandboxes run at their own limits, the host keeps what the caps leave it."""
        if not self.enabled:
            return
        pids = self._parent_dir("pids")
        if pids and self.totals.pids:
            _write_if_changed(pids[1] / "pids.max", str(self.totals.pids))
        memory = self._parent_dir("memory")
        if memory and self.totals.memory_mb:
            name = "memory.max" if memory[0] == "v2" else "memory.limit_in_bytes"
            try:
                _write_if_changed(memory[1] / name, str(self.totals.memory_mb * 1024 * 1024))
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                # v1 refuses a limit below what the sandboxes use now.
                raise OSError(
                    exc.errno,
                    f"sandboxes use more memory than the {self.totals.memory_mb} MB "
                    "LOCAL_SANDBOX_TOTAL_MEMORY_MB allows them: stop some, or raise it",
                ) from exc
            if memory[0] == "v1":
                # Kernels before 4.16 let a v1 child escape its parent's limit without it.
                with contextlib.suppress(OSError):
                    _write_if_changed(memory[1] / "memory.use_hierarchy", "1")

    def _parent_dir(self, role: str) -> tuple[str, Path] | None:
        found = self.roles.get(role)
        if found is None or not (found[1] / self.parent).is_dir():
            return None
        return found[0], found[1] / self.parent

    def parent_limits(self) -> dict[str, int | None]:
        """The caps the kernel holds on the parent now: ``pids`` and ``memory_mb``
        (None when unset, unlimited, or the controller is missing)."""
        out: dict[str, int | None] = {"pids": None, "memory_mb": None}
        pids = self._parent_dir("pids")
        if pids:
            out["pids"] = _read_int(pids[1] / "pids.max")  # "max" reads as None
        memory = self._parent_dir("memory")
        if memory:
            name = "memory.max" if memory[0] == "v2" else "memory.limit_in_bytes"
            value = _read_int(memory[1] / name)
            # v1 reports "unlimited" as a huge page-aligned number.
            if value is not None and value < 1 << 60:
                out["memory_mb"] = value // (1024 * 1024)
        return out

    def total_pids_in_use(self) -> int | None:
        """pids.current of the parent: every task of every sandbox."""
        pids = self._parent_dir("pids")
        return _read_int(pids[1] / "pids.current") if pids else None

    def _delegate_v2(self, mount: Path, parent: Path) -> None:
        wanted = [r for r, (v, _) in self.roles.items() if v == "v2" and r in LIMIT_ROLES]
        for directory in (mount, parent):
            present = set((directory / "cgroup.subtree_control").read_text().split())
            for controller in wanted:
                if controller not in present:
                    (directory / "cgroup.subtree_control").write_text(f"+{controller}")

    def _apply(self, sandbox_id: str, limits: Limits) -> None:
        memory = self._dir("memory", sandbox_id)
        if memory:
            name = "memory.max" if memory[0] == "v2" else "memory.limit_in_bytes"
            _write(memory[1] / name, str(limits.memory_mb * 1024 * 1024))
        cpu = self._dir("cpu", sandbox_id)
        if cpu:
            quota = limits.vcpus * CPU_PERIOD_US
            if cpu[0] == "v2":
                _write(cpu[1] / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                _write(cpu[1] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(cpu[1] / "cpu.cfs_quota_us", str(quota))
        pids = self._dir("pids", sandbox_id)
        if pids:
            _write(pids[1] / "pids.max", str(limits.pids_max))

    def pids(self, sandbox_id: str) -> set[int]:
        found: set[int] = set()
        for directory in self.dirs(sandbox_id):
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        return found

    def has_processes(self, sandbox_id: str) -> bool:
        """Whether any process is in the sandbox's cgroups: one read, of the hierarchy a
        process joins first (see procs_files), so even one that joined no other counts."""
        dirs = self.dirs(sandbox_id)
        if not dirs:
            return False
        try:
            return bool((dirs[0] / "cgroup.procs").read_text().strip())
        except OSError:
            return False

    def exists(self, sandbox_id: str) -> bool:
        return any(d.is_dir() for d in self.dirs(sandbox_id))

    def remove(self, sandbox_id: str, *, wait: float = 3.0) -> bool:
        """Remove the sandbox's cgroups; False when one stays busy past ``wait`` seconds."""
        deadline = time.monotonic() + wait
        for directory in self.dirs(sandbox_id):
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        return False
                    time.sleep(0.02)
        return True

    def children(self) -> list[str]:
        """Sandbox ids that have a cgroup under the parent (for orphan sweeping)."""
        names: set[str] = set()
        for mount in self._mounts():
            with contextlib.suppress(OSError):
                names.update(p.name for p in (mount / self.parent).iterdir() if p.is_dir())
        return sorted(names)

    # --- making migrations cheap

    def prime_migrations(self) -> None:
        """Open an RCU grace period for cgroup migrations now, in the background.

        Moving a process between cgroups takes a global lock whose first writer waits a
        full RCU grace period (several milliseconds at HZ=250); writers arriving during
        or just after that period pass at once. A start calls this first, so the grace
        period runs while bubblewrap sets up and the sandbox's own migration is quick.
        The write moves this process into the cgroup it is already in: a no-op.
        """
        procs = self._own_procs_file()
        if procs is None:
            return

        def write() -> None:
            with contextlib.suppress(OSError):
                _write(procs, str(os.getpid()))

        threading.Thread(target=write, name="cgroup-prime", daemon=True).start()

    def _own_procs_file(self) -> Path | None:
        if not self.enabled or not self._mounts():
            return None
        mount = self._mounts()[0]
        try:
            lines = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            _, controllers, path = line.split(":", 2)
            names = set(controllers.split(",")) if controllers else set()
            if (mount == self.layout.v2 and not names) or any(
                self.layout.v1.get(name) == mount for name in names
            ):
                return mount / path.lstrip("/") / "cgroup.procs"
        return None

    # --- freezing

    def can_freeze(self) -> bool:
        return "freeze" in self.roles

    def freeze(self, sandbox_id: str, *, timeout: float = 5.0) -> None:
        self._set_frozen(sandbox_id, True, timeout)

    def thaw(self, sandbox_id: str, *, timeout: float = 5.0) -> None:
        self._set_frozen(sandbox_id, False, timeout)

    def _set_frozen(self, sandbox_id: str, frozen: bool, timeout: float) -> None:
        found = self._dir("freeze", sandbox_id)
        if found is None:
            raise OSError(errno.ENOTSUP, "no freezer cgroup on this host")
        version, directory = found
        if version == "v2":
            _write(directory / "cgroup.freeze", "1" if frozen else "0")
        else:
            _write(directory / "freezer.state", "FROZEN" if frozen else "THAWED")
        for pause in _backoff(timeout):
            if self.is_frozen(sandbox_id) == frozen:
                return
            pause()
        raise TimeoutError(f"cgroup did not {'freeze' if frozen else 'thaw'} in {timeout:g}s")

    def is_frozen(self, sandbox_id: str) -> bool:
        found = self._dir("freeze", sandbox_id)
        if found is None:
            return False
        version, directory = found
        try:
            if version == "v2":
                events = (directory / "cgroup.events").read_text()
                return "frozen 1" in events.splitlines()
            return (directory / "freezer.state").read_text().strip() == "FROZEN"
        except OSError:
            return False

    def freeze_requested(self, sandbox_id: str) -> bool:
        """Whether someone asked for a freeze (true while it is still in progress)."""
        found = self._dir("freeze", sandbox_id)
        if found is None:
            return False
        version, directory = found
        try:
            if version == "v2":
                return (directory / "cgroup.freeze").read_text().strip() == "1"
            return (directory / "freezer.state").read_text().strip() != "THAWED"
        except OSError:
            return False

    # --- killing

    def kill(self, sandbox_id: str, *, timeout: float = 5.0) -> bool:
        """SIGKILL every process in the sandbox's cgroups; True once they are all gone."""
        if not self.enabled:
            return True
        kill = self._dir("kill", sandbox_id)
        if kill and kill[1].is_dir():
            with contextlib.suppress(OSError):
                _write(kill[1] / "cgroup.kill", "1")
        for pause in _backoff(timeout):
            remaining = self.pids(sandbox_id)
            if not remaining:
                return True
            for pid in remaining:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            # A frozen task cannot die (v1) until it is thawed.
            if self.freeze_requested(sandbox_id):
                with contextlib.suppress(OSError, TimeoutError):
                    self.thaw(sandbox_id, timeout=0.5)
            pause()
        return not self.pids(sandbox_id)

    # --- accounting

    def memory_bytes(self, sandbox_id: str) -> int | None:
        found = self._dir("memory", sandbox_id)
        if found is None:
            return None
        name = "memory.current" if found[0] == "v2" else "memory.usage_in_bytes"
        return _read_int(found[1] / name)

    def cpu_usage_ns(self, sandbox_id: str) -> int | None:
        found = self._dir("accounting", sandbox_id)
        if found is None:
            return None
        version, directory = found
        if version == "v1":
            return _read_int(directory / "cpuacct.usage")
        try:
            for line in (directory / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) * 1000
        except (OSError, ValueError):
            return None
        return None


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _write_if_changed(path: Path, value: str) -> None:
    """Write ``value`` unless the file already holds it (v1 memory limits echo as bytes)."""
    with contextlib.suppress(OSError):
        if path.read_text().strip() == value:
            return
    _write(path, value)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _backoff(timeout: float) -> Iterator:
    """Yield a sleep callable with growing pauses (50 µs .. 20 ms) until ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.00005
    while True:
        yield lambda pause=delay: time.sleep(pause)
        if time.monotonic() > deadline:
            return
        delay = min(delay * 2, 0.02)


def _kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split("-")[0].split(".")
    try:
        return (int(release[0]), int(release[1])) >= (major, minor)
    except (ValueError, IndexError):
        return False
