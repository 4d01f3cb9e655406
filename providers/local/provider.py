"""The ``local`` provider: isolated sandboxes on this machine (the embedded default).

Each sandbox is a bubblewrap process tree with its own pid, mount, network, ipc, uts and
cgroup namespaces, an overlayfs root (its writable layer over read-only snapshot layers
over the base), hostname = sandbox id, and cgroup limits from its preset. See
docs/providers/local.md for the operator's view and the modules of this package for the
mechanics: ``layers`` (root file systems), ``cgroups``, ``launch`` (starting), ``execute``
(exec), ``forwarder`` (exposed services) and ``state`` (what is kept on disk).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from providers.base import (
    META_SANDBOX_ID,
    Capabilities,
    Capacity,
    ExecResult,
    Health,
    ImportResult,
    InstanceSpec,
    InstanceStatus,
    MetricSample,
    Provider,
    SnapshotResult,
    as_argv,
    checked_env,
    terminal_argv,
    terminal_env,
)
from providers.errors import (
    Conflict,
    InvalidState,
    NotFound,
    OperationFailed,
    ProviderError,
    QuotaExceeded,
    Unavailable,
    Unsupported,
)
from providers.images import ImageError, ImageSource
from providers.local import (
    disk,
    execute,
    forwarder,
    host,
    idmap,
    initbin,
    launch,
    process,
    seccompbin,
    terminal,
)
from providers.local.cgroups import Cgroups, Layout, Limits, host_memory_mb
from providers.local.config import CONFIG_KEYS, LocalConfig
from providers.local.instance import LocalInstance, service_url
from providers.local.layers import PARTS, Layers, disk_usage, in_use_leftover, parts_for
from providers.local.network import NetworkSetup
from providers.local.state import (
    SANDBOX_ID_RE,
    SandboxState,
    ServiceEntry,
    Store,
    locked,
    process_start_ticks,
    raise_disk_full,
    runtime_alive,
)
from providers.network import NetworkPolicy

SERVICE_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: Leftover temporary directories older than this are swept by ``list()``.
STALE_SECONDS = 600
#: How long a probe of the host (bwrap installed...) is trusted.
PROBE_SECONDS = 5.0


class LocalProvider(Provider):
    name = "local"
    config_keys = CONFIG_KEYS

    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self.store = Store(config.root)
        self.layers = Layers(self.store, config.host_usr, config.max_layers)
        #: Caps on all sandboxes together (the parent cgroup's limits; admission of memory).
        self.totals = config.totals()
        self.cgroups = Cgroups(Layout.discover(), config.cgroup_parent, self.totals)
        self._init_problem: str | None = None
        self._init_path: Path | None = None
        self._probed: tuple[float, list[str]] = (0.0, [])
        #: (the probe it was made from, the capabilities) (see ``capabilities``).
        self._capabilities: tuple[float, Capabilities] | None = None
        self._spares = Spares(self)
        self._bwrap = config.bwrap

    def init_binary(self) -> Path | None:
        """The compiled sbx-init, or None when it cannot be built (``_init_problem`` says
        why): sandboxes need it as their pid 1 and to make their user namespace."""
        if self._init_path is not None and self._init_path.exists():
            return self._init_path
        try:
            self._init_path = initbin.ensure_binary(self.store.root)
            self._init_problem = None
        except (initbin.InitUnavailable, OSError) as exc:
            self._init_problem = str(exc)
            self._init_path = None
        return self._init_path

    def _problems(self) -> list[str]:
        """host.blocking_problems, re-probed at most every few seconds (it reads PATH,
        /proc and sysctls; create, start and capabilities all ask)."""
        probed_at, problems = self._probed
        if time.monotonic() - probed_at > PROBE_SECONDS:
            problems = host.blocking_problems(self.config.bwrap, self.config.root)
            self._bwrap = host.find_bwrap(self.config.bwrap) or self.config.bwrap
            self._probed = (time.monotonic(), problems)
        return list(problems)

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> LocalProvider:
        return cls(LocalConfig.from_mapping(config))

    @classmethod
    def configured(cls, config: Mapping[str, str]) -> bool:
        return True  # the embedded default: nothing to configure

    def config_mapping(self) -> dict[str, str]:
        """The settings again, for the forwarder daemon this provider starts."""
        c = self.config
        return {
            "LOCAL_SANDBOX_ROOT": str(c.root),
            "LOCAL_SANDBOX_CGROUP_PARENT": c.cgroup_parent,
            "LOCAL_SANDBOX_MAX_LAYERS": str(c.max_layers),
            "LOCAL_SANDBOX_PIDS_MAX": str(c.pids_max),
            "LOCAL_SANDBOX_TOTAL_PIDS": str(c.total_pids or ""),
            "LOCAL_SANDBOX_TOTAL_MEMORY_MB": str(c.total_memory_mb or ""),
            "LOCAL_SANDBOX_MIN_FREE_MB": str(c.min_free_mb),
            "LOCAL_SANDBOX_BWRAP": c.bwrap,
            "LOCAL_SANDBOX_HOST_USR": str(c.host_usr),
            # Empty: the default again (root's subordinate ranges may differ for gids).
            "LOCAL_SANDBOX_ID_RANGE": f"{c.id_range.uid_first}:{c.id_range.count}"
            if c.id_range.uid_first == c.id_range.gid_first
            else "",
            "LOCAL_SANDBOX_PASTA": c.network.pasta,
            "LOCAL_SANDBOX_DNS": ",".join(c.network.dns),
            "LOCAL_SANDBOX_NET_NAMESPACE": str(c.network.namespace or ""),
            "LOCAL_SANDBOX_NET_DENY": ",".join(map(str, c.network.deny)),
        }

    # --- capabilities and health

    @property
    def capabilities(self) -> Capabilities:
        """Worked out again when the host is probed again (``_problems``, every few
        seconds at most): every exec asks, and the tools on PATH, the cgroups and the
        host's sizes behind the answer do not change between two execs."""
        problems = self._problems()
        probed_at = self._probed[0]
        if self._capabilities is None or self._capabilities[0] != probed_at:
            self._capabilities = (probed_at, self._host_capabilities(problems))
        return self._capabilities[1]

    def _host_capabilities(self, problems: list[str]) -> Capabilities:
        missing = self.cgroups.missing()
        reasons = {
            "supports_hibernate": host.checkpoint_problem(),
            "supports_ssh": "local sandboxes run no SSH server; use exec",
            "supports_resize": "the local provider does not resize sandboxes; start one "
            "from a snapshot with another preset",
        }
        can_pause = "freeze" not in missing and not problems
        if not can_pause:
            reasons["supports_pause"] = (
                f"pausing needs the cgroup freezer: {missing['freeze']}"
                if "freeze" in missing
                else "; ".join(problems)
            )
        metrics = "memory" in self.cgroups.roles
        if not metrics:
            reasons["supports_metrics"] = "no memory cgroup accounting on this host"
        networking = not host.rootless()
        reasons["supports_wake_on"] = (
            "local sandboxes do not wake on traffic by themselves (their exposed services "
            "answer 503 while parked, and they run no SSH server); the control plane's "
            "service proxy wakes them on HTTP"
        )
        if not networking:
            reasons["supports_expose_http"] = (
                "exposing services needs root: the forwarder enters sandboxes' network "
                "namespaces (run the control plane as root)"
            )
        outbound = self._network_problem()
        if outbound:
            reasons["supports_network_internet"] = outbound
            reasons["supports_network_allowlist"] = outbound
        return Capabilities(
            supports_network_internet=not outbound,
            supports_network_allowlist=not outbound,
            supports_pause=can_pause,
            supports_hibernate=False,
            supports_snapshots=True,
            supports_exec=True,
            supports_expose_http=networking,
            supports_wake_on=False,
            supports_ssh=False,
            supports_resize=False,
            supports_metrics=metrics,
            supports_terminal=True,
            supports_process=True,
            reasons=reasons,
            **self._host_limits(),
        )

    def _host_limits(self) -> dict:
        """The largest sandbox this host can make: its CPUs, its memory (MemTotal) and the
        size of the file system sandboxes live on. A size beyond these is refused."""
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 0
        memory_mb = host_memory_mb()
        disk_gb = 0
        where = self.config.root
        while not where.exists() and where != where.parent:
            where = where.parent
        with contextlib.suppress(OSError):
            disk_gb = shutil.disk_usage(where).total // 1024**3
        return {
            "max_vcpus": cpus or None,
            "max_memory_mb": memory_mb or None,
            "max_disk_gb": disk_gb or None,
            "limits_source": "this host's CPUs, memory and disk",
        }

    def _network_problem(self) -> str:
        """Why sandboxes cannot have outbound networks here ('' when they can)."""
        if host.rootless():
            return "outbound networks need root (pasta joins sandboxes' namespaces)"
        if not self.cgroups.enabled:
            return "outbound networks need cgroups (pasta lives and dies with its sandbox)"
        return "; ".join(self.config.network.problems())

    def limitations(self) -> list[str]:
        """What this host lacks, in words (limits not enforced, pause unavailable...)."""
        found = self._problems()
        for role, why in self.cgroups.missing().items():
            if role in ("memory", "cpu", "pids"):
                found.append(f"{role} limits are not enforced: {why}")
            elif role == "freeze":
                found.append(f"pause is unavailable: {why}")
        if disk.problem():
            found.append(disk.problem())
        return found

    def health(self) -> Health:
        started = time.perf_counter()
        problems = host.blocking_problems(self.config.bwrap, self.config.root)
        try:
            if not problems:
                self.store.ensure_dirs()
                if not os.access(self.store.root, os.W_OK):
                    problems.append(f"{self.store.root} is not writable")
                self._check_space()
        except (OSError, QuotaExceeded) as exc:
            problems.append(str(exc))
        latency = (time.perf_counter() - started) * 1000
        detail = "; ".join(problems) or "; ".join(self.limitations()) or "ok"
        return Health(reachable=not problems, latency_ms=round(latency, 3), detail=detail)

    def capacity(self) -> Capacity | None:
        """Memory committed to running and paused sandboxes against the total all of them
        may have; None when the host's memory is unknown. A start asks this, so it is one
        directory listing (``Store.commitments``), not a read of every state file."""
        if not self.totals.memory_mb:
            return None
        committed = self.store.commitments()
        return Capacity(
            memory_mb_total=self.totals.memory_mb,
            memory_mb_used=sum(committed.values()),
            pids_total=self.totals.pids or None,
            pids_used=self.cgroups.total_pids_in_use(),
            sandboxes_running=len(committed),
            memory_setting="LOCAL_SANDBOX_TOTAL_MEMORY_MB",
        )

    def _check_fits(self, sandbox_id: str, memory_mb: int) -> None:
        """QuotaExceeded when the sandbox alone needs more memory than all may have."""
        total = self.totals.memory_mb
        if total and memory_mb > total:
            raise QuotaExceeded(
                f"sandbox {sandbox_id} needs {memory_mb} MB of memory, more than the {total} MB "
                "all local sandboxes may use together (LOCAL_SANDBOX_TOTAL_MEMORY_MB): choose "
                "a smaller preset",
                ref=sandbox_id,
            )

    def _check_capacity(self, sandbox_id: str, memory_mb: int) -> None:
        """QuotaExceeded when running this sandbox would commit more memory than the total
        (asked at start: a created sandbox commits nothing until it runs)."""
        self._check_fits(sandbox_id, memory_mb)
        capacity = self.capacity()
        if capacity is None:
            return
        total = capacity.memory_mb_total
        if capacity.memory_mb_used + memory_mb > total:
            raise QuotaExceeded(
                f"sandbox {sandbox_id} needs {memory_mb} MB of memory but only "
                f"{capacity.memory_mb_free} MB of {total} MB is free "
                f"({capacity.memory_mb_used} MB is committed to {capacity.sandboxes_running} "
                "running or paused sandboxes; LOCAL_SANDBOX_TOTAL_MEMORY_MB): stop a sandbox "
                "first",
                ref=sandbox_id,
            )

    def _require_runtime(self) -> None:
        problems = self._problems()
        if problems:
            raise Unavailable("local sandboxes cannot run here: " + "; ".join(problems))

    def _check_space(self, extra_bytes: int = 0) -> None:
        try:
            info = os.statvfs(self.store.root)
        except FileNotFoundError:
            return
        free = info.f_bavail * info.f_frsize
        needed = self.config.min_free_mb * 1024 * 1024 + extra_bytes
        if free < needed:
            raise QuotaExceeded(
                f"only {free // (1024 * 1024)} MB free on the disk holding {self.store.root} "
                f"(need {needed // (1024 * 1024)} MB, LOCAL_SANDBOX_MIN_FREE_MB="
                f"{self.config.min_free_mb}): free space there or point LOCAL_SANDBOX_ROOT "
                "at a larger file system"
            )

    # --- instances

    def create(
        self, spec: InstanceSpec, snapshot_ref: str, metadata: Mapping[str, str]
    ) -> LocalInstance:
        sandbox_id = metadata.get(META_SANDBOX_ID) or spec.sandbox_id
        _check_id(sandbox_id)
        self._require_runtime()
        self.store.ensure_dirs()
        existing = self.store.load(sandbox_id)
        if existing is not None:
            return LocalInstance(self, existing)
        self._check_fits(sandbox_id, spec.memory_mb)
        refusal = self.capabilities.network_refusal(spec.network)
        if refusal:
            raise Unsupported(refusal, capability=f"supports_network_{spec.network.mode}")
        with locked(self.store.root / "snapshots.lock", shared=True):
            chain = self.layers.chain(snapshot_ref)
            self._check_space()
            state = SandboxState(
                id=sandbox_id,
                vcpus=spec.vcpus,
                memory_mb=spec.memory_mb,
                disk_gb=spec.disk_gb,
                preset_id=spec.preset_id,
                metadata={str(k): str(v) for k, v in metadata.items()},
                snapshot_ref=snapshot_ref,
                chain=chain,
                parts=parts_for(chain),
                image=self.layers.image_config(chain),
                created_at=time.time(),
                id_slot=None if host.rootless() else self._claim_slot(sandbox_id),
                network=spec.network.as_dict() if spec.network.networked else None,
            )
            try:
                made = self._commit_new(state)
            finally:
                if not self.store.sandbox_dir(sandbox_id).exists():
                    idmap.release(self.store.slots, sandbox_id, state.id_slot)
            if not made:
                return LocalInstance(self, self.store.load(sandbox_id))
        try:
            self.cgroups.ensure(sandbox_id, self._limits(state))
        except BaseException as exc:
            self._destroy(sandbox_id)
            if isinstance(exc, OSError):
                raise OperationFailed(f"could not create cgroups for {sandbox_id}: {exc}") from exc
            raise
        return LocalInstance(self, state)

    def _commit_new(self, state: SandboxState) -> bool:
        """Write the sandbox's directory atomically; False when it appeared meanwhile."""
        tmp = self.store.sandboxes / f".tmp-{state.id}-{secrets.token_hex(4)}"
        # Every disk has the base's parts (an image's sandbox uses "root" only), so
        # spare disks fit any sandbox.
        parts = list(dict.fromkeys([*PARTS.values(), *state.parts.values()]))
        try:
            if disk.take_spare(self.store.sandboxes, state.disk_gb, tmp):
                self._spares.refill(state.disk_gb, parts)
            else:
                tmp.mkdir()
                disk.provision(tmp, state.disk_gb, parts, self._templates())
                self._spares.refill(state.disk_gb, parts)
            (tmp / "merged").mkdir()
            (tmp / "state.json").write_text(state.to_json())
            (tmp / "activity").touch()
            os.rename(tmp, self.store.sandbox_dir(state.id))
            return True
        except OSError as exc:
            _remove(tmp)
            if self.store.sandbox_dir(state.id).exists():
                return False
            raise_disk_full(exc, self.store.root)
            raise OperationFailed(f"could not create sandbox {state.id}: {exc}") from exc

    def _templates(self) -> Path:
        return self.store.root / "disk-templates"

    def _limits(self, state: SandboxState) -> Limits:
        return Limits(state.vcpus, state.memory_mb, self.config.pids_max)

    def get(self, ref: str) -> LocalInstance:
        if not isinstance(ref, str) or not SANDBOX_ID_RE.fullmatch(ref):
            raise NotFound(f"instance {str(ref)[:80]!r} does not exist", ref=str(ref)[:80])
        state = self.store.load(ref)
        if state is None:
            raise NotFound(f"instance {ref} does not exist", ref=ref)
        return LocalInstance(self, state)

    def list(self) -> list[LocalInstance]:
        self._sweep()
        launch.reap_finished()
        found = []
        services = False
        committed = self.store.commitments()
        for sandbox_id in self.store.ids():
            state = self.store.load(sandbox_id)
            if state is None:
                continue
            self._settle_commitment(state, committed.pop(sandbox_id, None))
            if META_SANDBOX_ID in state.metadata:
                found.append(LocalInstance(self, state))
                services = services or bool(state.services)
        for gone in committed:  # deleted by a process that crashed before uncommitting
            self.store.uncommit(gone)
        if services and not host.rootless():
            # After a host reboot nothing listens on exposed sockets until the forwarder runs
            # again; reconciliation lists regularly, so this brings it back.
            with contextlib.suppress(Unavailable):
                self._forwarder({"op": "ping"})
        return found

    def _settle_commitment(self, state: SandboxState, committed: int | None) -> None:
        """Make the sandbox's committed memory match what runs (after a crash, or a
        sandbox whose init died on its own)."""
        alive = runtime_alive(state.runtime)
        if alive and committed != state.memory_mb:
            self.store.commit(state.id, state.memory_mb)
        elif not alive and committed is not None:
            self.store.uncommit(state.id)

    def _sweep(self) -> None:
        """Remove what failed operations or crashes left behind (old temp dirs, cgroups)."""
        now = time.time()
        layers = self.store.root / "layers"  # an image import's half-unpacked layer
        for directory in (self.store.sandboxes, self.store.snapshots, self.store.root, layers):
            with contextlib.suppress(OSError):
                for entry in os.scandir(directory):
                    leftover = entry.name.startswith((".tmp-", ".trash-", ".base-tmp-"))
                    stale = leftover and now - entry.stat().st_mtime > STALE_SECONDS
                    if stale and not in_use_leftover(entry.name):
                        _remove(Path(entry.path))
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.store.commitments_dir().parent):
                if entry.name != self.store.commitments_dir().name:  # an earlier boot's
                    shutil.rmtree(entry.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.store.slots):
                # A slot whose sandbox is gone (a crash between claim and delete); fresh
                # ones may belong to a create in progress.
                owner = os.readlink(entry.path)
                old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS
                if old and not self.store.sandbox_dir(owner).exists():
                    os.unlink(entry.path)
        if self.cgroups.enabled:
            known = set(self.store.ids())
            for name in self.cgroups.children():
                if name not in known and not self.cgroups.pids(name):
                    self.cgroups.remove(name, wait=0)

    def wait_for_spares(self) -> None:
        """Wait until the spare disks being made in the background are made (benchmarks
        measure a host that is not busy writing them)."""
        self._spares.join()

    def purge(self) -> None:
        """Delete every sandbox, stop the forwarder and remove the cgroup parent.

        For tests, benchmarks and uninstalling; snapshots and the base stay on disk.
        """
        for sandbox_id in self.store.ids():
            with contextlib.suppress(ProviderError, OSError):
                self.delete(sandbox_id)
        self._spares.join()
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.store.sandboxes):
                if entry.name.startswith((disk.SPARE, ".tmp-")):
                    _remove(Path(entry.path))
        forwarder.stop(self.store.root)
        for name in self.cgroups.children():
            self.cgroups.kill(name, timeout=2)
            self.cgroups.remove(name, wait=2)
        for mount in {m for _, m in self.cgroups.roles.values()}:
            with contextlib.suppress(OSError):
                (mount / self.cgroups.parent).rmdir()

    def delete_snapshot(self, ref: str) -> None:
        self.store.ensure_dirs()
        with locked(self.store.root / "snapshots.lock"):
            chains = {}
            for sandbox_id in self.store.ids():
                state = self.store.load(sandbox_id)
                if state is not None:
                    chains[sandbox_id] = state.chain
            self.layers.delete(ref, chains)

    # --- operations on one sandbox (LocalInstance delegates here)

    def _locked_state(self, sandbox_id: str, timeout: float = 60.0):
        return self.store.locked_state(sandbox_id, timeout)

    def status_of(self, state: SandboxState) -> InstanceStatus:
        if not runtime_alive(state.runtime):
            return InstanceStatus.STOPPED
        if self.cgroups.freeze_requested(state.id):
            return InstanceStatus.PAUSED
        return InstanceStatus.RUNNING

    def start(self, sandbox_id: str) -> None:
        self._require_runtime()
        self.cgroups.prime_migrations()
        with self._locked_state(sandbox_id) as state:
            status = self.status_of(state)
            if status == InstanceStatus.RUNNING:
                return
            if status == InstanceStatus.PAUSED:
                raise Conflict(f"sandbox {sandbox_id} is paused; resume it", ref=sandbox_id)
            self._check_capacity(sandbox_id, state.memory_mb)
            stale = state.runtime is not None or self.cgroups.has_processes(sandbox_id)
            if stale or self.cgroups.freeze_requested(sandbox_id):
                self._kill(state)  # whatever a crash, a stale runtime or a pause left
            self._check_space()
            try:
                self.cgroups.ensure(sandbox_id, self._limits(state), reapply=False)
            except OSError as exc:
                raise OperationFailed(f"could not set up cgroups for {sandbox_id}: {exc}") from exc
            spec = self._launch_spec(state)
            self.store.commit(sandbox_id, state.memory_mb)
            try:
                state.runtime = launch.launch(spec)
            except BaseException:
                self.store.uncommit(sandbox_id)
                raise
            try:
                self.store.save(state)
            except BaseException:
                self._kill(state)
                raise
        if state.services:
            self._forwarder({"op": "ping"})

    def _launch_spec(self, state: SandboxState) -> launch.LaunchSpec:
        """How to start the sandbox: its layers, its disk, its ids, its init and filter."""
        sandbox_id = state.id
        layer = self._layer_dir(sandbox_id)
        mounts = [
            launch.Mount(
                target,
                self.layers.lowers(state.chain, part),
                layer / "upper" / part,
                layer / "work" / part,
            )
            for target, part in state.parts.items()
        ]
        init = self.init_binary()
        if init is None:
            raise Unavailable(f"local sandboxes need their init: {self._init_problem}")
        try:
            seccomp = seccompbin.ensure_filter(self.store.root)
        except (seccompbin.SeccompUnavailable, OSError) as exc:
            raise Unavailable(f"local sandboxes need their seccomp filter: {exc}") from exc
        rootless = host.rootless()
        directory = self.store.sandbox_dir(sandbox_id)
        policy = NetworkPolicy.from_dict(state.network)
        outbound = None
        if policy.networked:
            problem = self._network_problem()
            if problem:
                raise Unavailable(f"sandbox {sandbox_id} has the {policy.mode} policy: {problem}")
            outbound = NetworkSetup(policy, self.config.network, directory / "network.log")
        return launch.LaunchSpec(
            network=outbound,
            sandbox_id=sandbox_id,
            bwrap=self._bwrap,
            root=self.store.root,
            merged=directory / "merged",
            mounts=mounts,
            cgroup_procs=self.cgroups.procs_files(sandbox_id),
            log=directory / "bwrap.log",
            init_binary=init,
            exec_socket=directory / "exec.sock",
            idmap=None if rootless else self._idmap(state),
            idmapped=_idmapped_dirs(layer, mounts),
            seccomp=seccomp,
            rootless=rootless,
        )

    def _claim_slot(self, sandbox_id: str) -> int:
        try:
            return idmap.claim(self.store.slots, sandbox_id, self.config.id_range.slots)
        except LookupError:
            raise QuotaExceeded(
                f"all {self.config.id_range.slots} host id ranges for sandboxes are in use: "
                "delete sandboxes, or give LOCAL_SANDBOX_ID_RANGE (or root's range in "
                "/etc/subuid and /etc/subgid) more ids, 65536 per sandbox"
            ) from None

    def _idmap(self, state: SandboxState) -> launch.IdMap:
        """The sandbox's host id range: its own slot (see idmap.py), claimed at create;
        a sandbox made before slots existed claims one at its first start."""
        slot = state.id_slot
        if slot is None or slot >= self.config.id_range.slots:
            state.id_slot = self._claim_slot(state.id)
            self.store.save(state)
        elif not idmap.holds(self.store.slots, state.id, slot):
            try:
                os.symlink(state.id, self.store.slots / str(slot))  # lost (a sweep): again
            except FileExistsError:  # another sandbox holds it: never share a range
                state.id_slot = self._claim_slot(state.id)
                self.store.save(state)
        uid, gid = self.config.id_range.slot(state.id_slot)
        return launch.IdMap(uid=uid, gid=gid, count=idmap.SLOT)

    def _layer_dir(self, sandbox_id: str) -> Path:
        """The directory holding the sandbox's upper/ and work/, its disk mounted."""
        try:
            return disk.ensure_mounted(self.store.sandbox_dir(sandbox_id))
        except OSError as exc:
            raise OperationFailed(f"could not mount the disk of {sandbox_id}: {exc}") from exc

    def _kill(self, state: SandboxState) -> None:
        """End every process of the sandbox and wait until they are gone."""
        runtime = state.runtime
        if runtime is not None and runtime_alive(runtime):
            with contextlib.suppress(ProcessLookupError):
                pidfd = os.pidfd_open(runtime.pid)
                try:
                    if process_start_ticks(runtime.pid) == runtime.start_ticks:
                        # SIGKILL: a pid namespace's init ignores SIGTERM from outside,
                        # and its death takes every process of the namespace with it.
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                        # Let the supervisor reap it (else the host's pid 1 must, later).
                        _wait_gone(runtime.pid, timeout=2)
                finally:
                    os.close(pidfd)
        if runtime is not None:
            launch.reap(runtime.supervisor, timeout=2)
        if not self.cgroups.kill(state.id):
            raise OperationFailed(f"processes of sandbox {state.id} would not die")
        if self.cgroups.freeze_requested(state.id):
            # Stopped while paused: an empty cgroup stays frozen, and so would the next
            # start's processes.
            try:
                self.cgroups.thaw(state.id)
            except (OSError, TimeoutError) as exc:
                raise OperationFailed(f"could not thaw sandbox {state.id}: {exc}") from exc
        if runtime is not None:
            deadline = time.monotonic() + 5
            while process_start_ticks(runtime.pid) == runtime.start_ticks:
                if time.monotonic() > deadline:
                    raise OperationFailed(f"sandbox {state.id} would not stop")
                time.sleep(0.001)
        self.store.uncommit(state.id)

    def stop(self, sandbox_id: str) -> None:
        with self._locked_state(sandbox_id) as state:
            self._kill(state)
            if state.runtime is not None:
                state.runtime = None
                self.store.save(state)

    def pause(self, sandbox_id: str) -> None:
        self.capabilities.require("supports_pause", provider=self.name)
        with self._locked_state(sandbox_id) as state:
            status = self.status_of(state)
            if status == InstanceStatus.PAUSED:
                return
            if status != InstanceStatus.RUNNING:
                raise Conflict(f"sandbox {sandbox_id} is {status}, not running", ref=sandbox_id)
            self._freeze(sandbox_id)

    def _freeze(self, sandbox_id: str) -> None:
        try:
            self.cgroups.freeze(sandbox_id)
        except (OSError, TimeoutError) as exc:
            with contextlib.suppress(OSError, TimeoutError):
                self.cgroups.thaw(sandbox_id)
            raise OperationFailed(f"could not freeze sandbox {sandbox_id}: {exc}") from exc

    def resume(self, sandbox_id: str) -> None:
        self.capabilities.require("supports_pause", provider=self.name)
        with self._locked_state(sandbox_id) as state:
            status = self.status_of(state)
            if status == InstanceStatus.RUNNING:
                return
            if status != InstanceStatus.PAUSED:
                raise Conflict(f"sandbox {sandbox_id} is {status}, not paused", ref=sandbox_id)
            try:
                self.cgroups.thaw(sandbox_id)
            except (OSError, TimeoutError) as exc:
                raise OperationFailed(f"could not resume sandbox {sandbox_id}: {exc}") from exc

    def delete(self, sandbox_id: str) -> None:
        if not SANDBOX_ID_RE.fullmatch(sandbox_id):
            return
        try:
            with self._locked_state(sandbox_id) as state:
                self._kill(state)
                had_services = bool(state.services)
                trash = self.store.sandboxes / f".trash-{sandbox_id}-{secrets.token_hex(4)}"
                os.rename(self.store.sandbox_dir(sandbox_id), trash)
            idmap.release(self.store.slots, sandbox_id, state.id_slot)
        except NotFound:
            self._destroy(sandbox_id)
            return
        if had_services:
            with contextlib.suppress(Unavailable):
                self._forwarder({"op": "sync"})
        self.cgroups.remove(sandbox_id)
        _remove(trash)

    def _destroy(self, sandbox_id: str) -> None:
        """Remove what a failed create made (no processes run yet)."""
        directory = self.store.sandbox_dir(sandbox_id)
        state = self.store.load(sandbox_id)
        if state is not None:
            idmap.release(self.store.slots, sandbox_id, state.id_slot)
        if directory.exists():
            trash = self.store.sandboxes / f".trash-{sandbox_id}-{secrets.token_hex(4)}"
            with contextlib.suppress(OSError):
                os.rename(directory, trash)
                _remove(trash)
        if not self.store.sandbox_dir(sandbox_id).exists() and not self.cgroups.pids(sandbox_id):
            self.cgroups.remove(sandbox_id, wait=0)

    def _exec_target(self, sandbox_id: str) -> execute.Target:
        """Where exec and terminals of a running sandbox go (NotFound, Conflict otherwise)."""
        state = self.store.load(sandbox_id)
        if state is None:
            raise NotFound(f"instance {sandbox_id} does not exist", ref=sandbox_id)
        status = self.status_of(state)
        if status != InstanceStatus.RUNNING:
            raise InvalidState(f"sandbox {sandbox_id} is {status}, not running", ref=sandbox_id)
        if not state.runtime.exec_socket:
            raise Conflict(
                f"sandbox {sandbox_id} runs an init from an older version without exec; "
                "stop and start it",
                ref=sandbox_id,
            )
        image = state.image
        if image is None:
            return execute.Target(
                cwd=launch.WORKDIR,
                env=launch.sandbox_env(sandbox_id),
                socket=self.store.sandbox_dir(sandbox_id) / "exec.sock",
            )
        return execute.Target(
            cwd=image_cwd(image),
            env=image_env(sandbox_id, image),
            socket=self.store.sandbox_dir(sandbox_id) / "exec.sock",
        )

    def _command_target(self, sandbox_id: str, env: Mapping[str, str] | None) -> execute.Target:
        """Where a command runs in the sandbox, with ``env`` over the sandbox's own
        variables (checked first); counts as activity."""
        extra = checked_env(env)
        target = self._exec_target(sandbox_id)
        if extra:
            target = dataclasses.replace(target, env={**target.env, **extra})
        self.store.touch_activity(sandbox_id)
        return target

    def exec(
        self,
        sandbox_id: str,
        command: str | Sequence[str],
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        argv = as_argv(command)
        target = self._command_target(sandbox_id, env)
        try:
            return execute.run(target, argv, timeout)
        except execute.SandboxGone as gone:
            raise Conflict(f"sandbox {sandbox_id} stopped: {gone}", ref=sandbox_id) from None

    def open_terminal(
        self,
        sandbox_id: str,
        command: str | Sequence[str] | None,
        cols: int,
        rows: int,
        env: Mapping[str, str] | None,
    ) -> terminal.LocalTerminal:
        """A terminal session in the sandbox, made by its init (see terminal.py)."""
        argv = terminal_argv(command)
        extra = terminal_env(env)
        target = self._exec_target(sandbox_id)
        self.store.touch_activity(sandbox_id)
        try:
            return terminal.open_session(target, argv, cols, rows, extra)
        except execute.SandboxGone as gone:
            raise Conflict(f"sandbox {sandbox_id} stopped: {gone}", ref=sandbox_id) from None
        except Conflict as old:
            raise Conflict(f"sandbox {sandbox_id}: {old.message}", ref=sandbox_id) from None

    def open_process(
        self, sandbox_id: str, command: str | Sequence[str], env: Mapping[str, str] | None
    ) -> process.LocalProcess:
        """A command with its streams as pipes, started by the sandbox's init."""
        argv = as_argv(command)
        target = self._command_target(sandbox_id, env)
        try:
            return process.open_process(target, argv)
        except execute.SandboxGone as gone:
            raise Conflict(f"sandbox {sandbox_id} stopped: {gone}", ref=sandbox_id) from None

    # --- images

    def import_image(self, source: ImageSource) -> ImportResult:
        """Store an image's layers (each once, by digest) and make a snapshot of it."""
        self.store.ensure_dirs()
        self._check_space(sum(layer.size for layer in source.layers) * 3)
        try:
            with locked(self.store.root / "snapshots.lock", shared=True):
                ref, written, reused = self.layers.import_image(source)
        except ImageError as exc:
            raise OperationFailed(f"the image cannot be imported: {exc}") from exc
        return ImportResult(
            ref=ref, size_bytes=written, bytes_written=written, layers_reused=reused
        )

    def snapshot(self, sandbox_id: str) -> SnapshotResult:
        with self._locked_state(sandbox_id) as state:
            upper = self._layer_dir(sandbox_id) / "upper"
            disk.flush(self.store.sandbox_dir(sandbox_id))
            self._check_space(disk_usage(upper))
            froze = False
            if self.status_of(state) == InstanceStatus.RUNNING:
                if not self.cgroups.can_freeze():
                    raise Conflict(
                        f"stop sandbox {sandbox_id} to snapshot it: without a cgroup freezer "
                        "a running sandbox cannot be captured consistently",
                        ref=sandbox_id,
                    )
                self._freeze(sandbox_id)
                froze = True
            try:
                ref, tmp = self.layers.copy_layer(upper)
            finally:
                if froze:
                    self.cgroups.thaw(sandbox_id)
            with locked(self.store.root / "snapshots.lock", shared=True):
                size = self.layers.publish(ref, tmp, state.chain, sandbox_id)
        return SnapshotResult(ref=ref, size_bytes=size)

    def expose(self, sandbox_id: str, name: str, port: int) -> str:
        self.capabilities.require("supports_expose_http", provider=self.name)
        if not isinstance(name, str) or not SERVICE_NAME_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a service name (lowercase letters, digits, '-')")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ValueError(f"port must be 1..65535, not {port!r}")
        with self._locked_state(sandbox_id) as state:
            self._forwarder({"op": "bind", "sandbox": sandbox_id, "name": name})
            state.services[name] = ServiceEntry(port=port)
            self.store.save(state)
            return service_url(self.store, sandbox_id, name)

    def relabel(self, sandbox_id: str, metadata: Mapping[str, str]) -> None:
        """The state file's metadata is what ``list`` reports (the directory keeps its
        name: the reference does not change)."""
        labels = {str(k): str(v) for k, v in metadata.items()}
        with self._locked_state(sandbox_id) as state:
            if state.metadata != labels:  # a retried relabel rewrites nothing
                state.metadata = labels
                self.store.save(state)

    def hide(self, sandbox_id: str, name: str) -> None:
        with self._locked_state(sandbox_id) as state:
            if state.services.pop(name, None) is None:
                return
            self.store.save(state)
        self._forwarder({"op": "sync"})

    def set_wake_on(self, sandbox_id: str, http: bool, ssh: bool) -> None:
        """Unsupported: nothing of the provider's wakes a sandbox on traffic (the exposed
        sockets answer 503 while it is parked); the control plane's service proxy does."""
        self.get(sandbox_id)  # NotFound first
        self.capabilities.require("supports_wake_on", provider=self.name)

    def metrics(self, sandbox_id: str) -> list[MetricSample]:
        memory = self.cgroups.memory_bytes(sandbox_id)
        usage = self.cgroups.cpu_usage_ns(sandbox_id)
        now = time.time()
        fraction = None
        sample_file = self.store.sandbox_dir(sandbox_id) / "cpu-sample"
        if usage is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                previous = json.loads(sample_file.read_text())
                elapsed = now - previous["time"]
                if 0 < elapsed < 3600 and usage >= previous["usage"]:
                    fraction = round((usage - previous["usage"]) / 1e9 / elapsed, 4)
            with contextlib.suppress(OSError):
                sample_file.write_text(json.dumps({"time": now, "usage": usage}))
        if memory is None and usage is None:
            return []
        moment = datetime.fromtimestamp(now, UTC)
        return [MetricSample(time=moment, cpu_fraction=fraction, memory_bytes=memory)]

    def _forwarder(self, message: dict) -> dict:
        return forwarder.request(self.store.root, message, self.config_mapping())


def _wait_gone(pid: int, *, timeout: float) -> None:
    """Wait until ``pid`` is reaped (its /proc entry disappears), at most ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


class Spares:
    """Spare disks made in the background (see disk.take_spare): one thread at a time per
    provider; ``purge`` waits for it, so nothing is made after everything was removed."""

    def __init__(self, provider: LocalProvider) -> None:
        self._provider = provider
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def refill(self, size_gb: int, parts: list[str]) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return  # it tops up again after the next create
            store = self._provider.store
            templates = self._provider._templates()

            def make() -> None:
                with contextlib.suppress(OSError):
                    disk.make_spares(store.sandboxes, size_gb, parts, templates)

            self._thread = threading.Thread(target=make, name="local-spare-disks", daemon=True)
            self._thread.start()

    def join(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._thread.join()


def image_cwd(image: dict) -> str:
    """The exec working directory of an image's sandbox: the image's WorkingDir (else
    /workspace), as the image's user (``@UID:GID@PATH``, see sbx-init.c)."""
    path = image.get("working_dir") or launch.WORKDIR
    uid, gid = int(image.get("uid") or 0), int(image.get("gid") or 0)
    return f"@{uid}:{gid}@{path}" if uid or gid else path


def image_env(sandbox_id: str, image: dict) -> dict[str, str]:
    """The sandbox's environment with the image's Env over it (HOME, USER for its user)."""
    env = launch.sandbox_env(sandbox_id)
    if int(image.get("uid") or 0):
        home = image.get("home") or "/"
        name = str(image.get("user") or "").partition(":")[0]
        env.update({"HOME": home, "USER": name, "LOGNAME": name})
    env.update({str(k): str(v) for k, v in (image.get("env") or {}).items()})
    return env


def _idmapped_dirs(layer: Path, mounts: list[launch.Mount]) -> tuple[Path, ...]:
    """What a sandbox sees through its id mapping: every lower layer, and the directory
    holding its writable layers and the overlays' work directories (its disk)."""
    found: dict[Path, None] = {}
    for mount in mounts:
        found.update(dict.fromkeys(mount.lowers))
    found[layer] = None
    return tuple(found)


def _check_id(sandbox_id: str) -> None:
    if not isinstance(sandbox_id, str) or not SANDBOX_ID_RE.fullmatch(sandbox_id):
        raise ValueError(
            f"sandbox id {str(sandbox_id)[:80]!r} must be lowercase letters, digits and '-' "
            "(it becomes the hostname)"
        )


def _remove(directory: Path) -> None:
    """Remove a sandbox directory (or a leftover one), its disk unmounted first."""
    with contextlib.suppress(OSError):
        disk.release(directory)
    shutil.rmtree(directory, ignore_errors=True)
