"""The ``pve-lxc`` and ``pve-vm`` providers.

create = place, allocate a VMID, clone the snapshot version's template, set size, name,
metadata and (containers) the exec agent's secret, grow the root disk, and on any failure
after the clone destroy what was made. See docs/providers/pve.md for the whole picture.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import ClassVar

from providers.addresses import AddressRule
from providers.base import (
    META_SANDBOX_ID,
    Capabilities,
    Health,
    InstanceSpec,
    MemoryReservationStore,
    Provider,
    ReservationStore,
)
from providers.errors import Conflict, NotFound, OperationFailed, ProviderError
from providers.pve import metadata as meta_codec
from providers.pve.agent import SECRET_ENV
from providers.pve.client import PveClient, is_exists_error
from providers.pve.instance import PveInstance
from providers.pve.kinds import LXC, QEMU, Kind, dns_label
from providers.pve.metadata import GuestMeta
from providers.pve.placement import choose_node
from providers.pve.settings import PveSettings
from providers.pve.tasks import TaskWaiter
from providers.pve.vmids import VmidAllocator

#: How many VMIDs to try when PVE says the one we reserved "already exists".
VMID_ATTEMPTS = 5
#: Ordinary tasks (start, stop, resize, suspend) get at most this long.
SHORT_TASK = 600.0

#: Containers and VMs share one VMID space per cluster; without a database store, every
#: PVE provider of this process shares this one.
_PROCESS_RESERVATIONS = MemoryReservationStore()


#: Why outbound policies are refused (docs/network.md, "pve-lxc and pve-vm").
PVE_NETWORK = (
    "guests join PVE_BRIDGE, whose reach is the operator's network design (VLANs, the PVE "
    "firewall, the router); the provider writes no firewall rules yet"
)


class PveProvider(Provider):
    kind: ClassVar[Kind]

    def __init__(self, settings: PveSettings) -> None:
        self.settings = settings
        self.client = PveClient(settings)
        self.tasks = TaskWaiter(self.client)
        self.vmids = VmidAllocator(
            _PROCESS_RESERVATIONS, f"pve:{settings.host}", settings.vmid_range
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings!r})"

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> PveProvider:
        return cls(PveSettings.from_config(config))

    @classmethod
    def configured(cls, config: Mapping[str, str]) -> bool:
        return bool(
            config.get("PVE_API_URL", "").strip() and config.get("PVE_API_TOKEN", "").strip()
        )

    def use_reservations(self, store: ReservationStore) -> None:
        self.vmids.store = store

    # --- shared operations (the instances use them too) -------------------------------------

    def wait(self, upid: str, what: str, *, long: bool = False) -> None:
        timeout = (
            self.settings.task_timeout if long else min(self.settings.task_timeout, SHORT_TASK)
        )
        self.tasks.wait(upid, what=what, timeout=timeout)

    def locate(self, vmid: int) -> dict | None:
        for row in self.client.resources("vm"):
            if int(row.get("vmid", -1)) == vmid:
                return row
        return None

    def guest_config(self, node: str, vmid: int) -> dict:
        return self.client.get(self.kind.path(node, vmid, "config"))

    def destroy(
        self,
        node: str,
        vmid: int,
        *,
        lock_wait: float | None = None,
        hint: dict | None = None,
    ) -> None:
        """Stop (if needed) and destroy a guest with its disks; no error if it is gone.

        ``hint`` is what ``/cluster/resources`` said about the guest; it stands in for
        ``status/current`` when that cannot be read, so one broken call does not leave a
        guest behind.
        """
        kind, c = self.kind, self.client
        wait = self.settings.lock_wait if lock_wait is None else lock_wait
        try:
            current = c.call("GET", kind.path(node, vmid, "status/current"), {}, lock_wait=wait)
        except NotFound:
            return
        except ProviderError:
            current = hint if hint is not None else self.locate(vmid)
            if current is None:
                return
        if current.get("lock") == "suspended":  # wake it first so that it can be stopped
            paused = current.get("status") == "running"  # a suspended CT; else a hibernated VM
            action = "status/resume" if paused else "status/start"
            upid = c.call("POST", kind.path(node, vmid, action), {}, lock_wait=wait)
            self.wait(upid, f"waking {kind.label} {vmid} to delete it")
            current = {**current, "status": "running"}
        if current.get("status") == "running":
            try:
                upid = c.call("POST", kind.path(node, vmid, "status/stop"), {}, lock_wait=wait)
                self.wait(upid, f"stopping {kind.label} {vmid}")
            except Conflict as exc:
                if "not running" not in exc.message:
                    raise
        params = {"purge": 1, "destroy-unreferenced-disks": 1}
        try:
            upid = c.call("DELETE", kind.path(node, vmid), params, slow=True, lock_wait=wait)
        except NotFound:
            return
        self.wait(upid, f"destroying {kind.label} {vmid}", long=True)

    def owned_by(self, node: str, vmid: int, sandbox_id: str, row: dict | None = None) -> bool:
        """Whether guest ``vmid`` carries ``sandbox_id``'s marker (False when it is gone).

        The description is the authority; when it cannot be read, the guest's name (set to
        the sandbox id at clone time) from ``row`` or ``/cluster/resources`` decides.
        """
        try:
            config = self.guest_config(node, vmid)
        except NotFound:
            return False
        except ProviderError:
            row = row if row is not None else self.locate(vmid)
            return row is not None and row.get("name") == dns_label(sandbox_id, "")
        meta = meta_codec.parse(config.get("description"), config.get("tags"))
        return meta is not None and meta.sandbox_id == sandbox_id

    # --- the contract ----------------------------------------------------------------------

    @property
    def service_address_rule(self) -> AddressRule:
        """Service URLs hold the address the guest reported: checked again on connect."""
        return self.settings.guest_addresses

    @property
    def capabilities(self) -> Capabilities:
        lxc = self.kind.is_lxc
        pause = not lxc or self.settings.lxc_suspend
        reasons = {
            "supports_wake_on": "PVE does not see a guest's traffic, so nothing can wake a "
            "paused guest on a request; resume it instead",
            "supports_ssh": "SSH access to PVE guests is not brokered by the control plane yet",
            "supports_resize": "the root disk is sized from the preset when the sandbox is "
            "made; resizing a live sandbox is not offered yet",
            "supports_network_internet": PVE_NETWORK,
            "supports_network_allowlist": PVE_NETWORK,
        }
        if not pause:
            reasons["supports_pause"] = (
                "LXC suspend (CRIU) is experimental in PVE and off here (the operator can "
                "set PVE_LXC_SUSPEND=1); stop the sandbox instead, its files are kept"
            )
        if lxc:
            reasons["supports_hibernate"] = (
                "PVE cannot save a container's memory to disk; stop the sandbox instead"
            )
        reasons["supports_process"] = (
            "the sandbox agent has no streamed-pipe exec yet (terminals and buffered exec "
            "only): over SSH, commands run to their end without input, and scp/sftp are "
            "not available"
        )
        return Capabilities(
            supports_pause=pause,
            supports_hibernate=not lxc,
            supports_snapshots=True,
            supports_exec=True,
            supports_expose_http=True,
            supports_metrics=True,
            supports_terminal=True,
            reasons=reasons,
        )

    def health(self) -> Health:
        started = time.perf_counter()
        try:
            version = self.client.get("version")
        except ProviderError as exc:
            return Health(reachable=False, detail=exc.message)
        latency = (time.perf_counter() - started) * 1000
        detail = f"Proxmox VE {version.get('version', '?')} at {self.settings.host}"
        return Health(reachable=True, latency_ms=round(latency, 2), detail=detail)

    def get(self, ref: str) -> PveInstance:
        vmid = self._vmid(ref)
        row = self.locate(vmid)
        if row is None or row.get("type") != self.kind.name or row.get("template"):
            raise NotFound(f"{self.kind.label} {vmid} does not exist on the PVE cluster", ref=ref)
        return self._instance(row, vmid)

    def list(self) -> list[PveInstance]:
        found = []
        for row in self.client.resources("vm"):
            if row.get("type") != self.kind.name or row.get("template"):
                continue
            if not meta_codec.has_marker_tag(row) and not str(row.get("name", "")).startswith(
                "sbx-"
            ):
                continue
            try:
                found.append(self._instance(row, int(row["vmid"])))
            except NotFound:
                continue  # not ours after all, or gone meanwhile
        return found

    def _instance(self, row: dict, vmid: int) -> PveInstance:
        node = row["node"]
        config = self.guest_config(node, vmid)
        meta = meta_codec.parse(config.get("description"), config.get("tags"))
        if meta is None or meta.kind != "sandbox" or not meta.sandbox_id:
            raise NotFound(
                f"{self.kind.label} {vmid} was not made by this control plane (no sandbox marker)",
                ref=str(vmid),
            )
        current = row
        if not self.kind.is_lxc and row.get("status") == "running":
            current = self.client.get(self.kind.path(node, vmid, "status/current"))
        return PveInstance(self, vmid, node, config, meta, current)

    @staticmethod
    def _vmid(ref: str) -> int:
        if not str(ref).isdigit() or not 100 <= int(ref) <= 999_999_999:
            raise NotFound(f"{ref!r} is not a PVE VMID", ref=str(ref))
        return int(ref)

    # --- create -----------------------------------------------------------------------------

    def create(
        self, spec: InstanceSpec, snapshot_ref: str, metadata: Mapping[str, str]
    ) -> PveInstance:
        self.capabilities.require_network(spec.network, provider=self.name)
        sandbox_id = spec.sandbox_id
        meta = GuestMeta({**metadata, META_SANDBOX_ID: sandbox_id})
        rows = self.client.resources()
        existing = self._find(rows, sandbox_id)
        if existing is not None:
            return existing
        template = self._template(rows, snapshot_ref)
        template_node = template["node"]
        storage = ""
        if spec.full_clone:
            template_config = self.guest_config(template_node, int(template["vmid"]))
            storage = self.kind.disk_volume(template_config).split(":")[0]
        node = choose_node(
            rows,
            template_node=template_node,
            template_storage=storage,
            memory_mb=spec.memory_mb,
            full_clone=spec.full_clone,
            pinned=self.settings.node,
        )
        vmid, upid = self._clone(rows, template, node, spec, meta)
        try:
            self.wait(
                upid, f"cloning template {template['vmid']} to {self.kind.label} {vmid}", long=True
            )
            config = self._configure(node, vmid, spec, meta)
            self._grow_disk(node, vmid, config, spec.disk_gb)
        except ProviderError as exc:
            self._roll_back(node, vmid, sandbox_id, exc)
        row = {"node": node, "vmid": vmid, "status": "stopped", "type": self.kind.name}
        return PveInstance(self, vmid, node, config, meta, row)

    def _find(self, rows: list[dict], sandbox_id: str) -> PveInstance | None:
        """A guest already made for this sandbox (a retried or duplicated create)."""
        wanted_tag = meta_codec.tag(sandbox_id)
        hostname = dns_label(sandbox_id, "")
        for row in rows:
            if row.get("type") != self.kind.name or row.get("template"):
                continue
            tagged = wanted_tag in meta_codec.tag_list(row.get("tags"))
            if not tagged and row.get("name") != hostname:
                continue
            try:
                instance = self._instance(row, int(row["vmid"]))
            except NotFound:
                continue
            if instance.metadata.get(META_SANDBOX_ID) == sandbox_id:
                return instance
        return None

    def _template(self, rows: list[dict], ref: str) -> dict:
        vmid = self._vmid(ref)
        for row in rows:
            if row.get("type") in ("lxc", "qemu") and int(row.get("vmid", -1)) == vmid:
                if row["type"] != self.kind.name:
                    other = "container" if row["type"] == "lxc" else "VM"
                    raise NotFound(
                        f"template {vmid} is a {other}, not for {self.kind.provider}", ref=ref
                    )
                if not row.get("template"):
                    raise NotFound(f"{self.kind.label} {vmid} is not a template", ref=ref)
                return row
        raise NotFound(f"template {vmid} does not exist on the PVE cluster", ref=ref)

    def _clone(
        self, rows: list[dict], template: dict, node: str, spec: InstanceSpec, meta: GuestMeta
    ) -> tuple[int, str]:
        """Reserve a VMID and start the clone; a VMID someone else took is skipped."""
        source = self.kind.path(template["node"], int(template["vmid"]), "clone")
        params: dict = {
            self.kind.name_key: dns_label(spec.sandbox_id, "sandbox"),
            "description": meta.description(),
            "full": spec.full_clone,
        }
        if node != template["node"]:
            params["target"] = node
        if spec.full_clone and self.settings.storage:
            params["storage"] = self.settings.storage
        taken: list[dict] = []
        for _ in range(VMID_ATTEMPTS):
            vmid = self.vmids.allocate(rows + taken, owner=spec.sandbox_id)
            try:
                upid = self.client.post(source, slow=True, newid=vmid, **params)
            except ProviderError as exc:
                if is_exists_error(exc):
                    self.vmids.release(vmid)
                    taken.append({"vmid": vmid})
                    continue
                # The clone may have started before the connection failed: check, clean up.
                self._roll_back(node, vmid, spec.sandbox_id, exc)
            return vmid, upid
        raise Conflict(f"PVE said 'already exists' for {VMID_ATTEMPTS} VMIDs in a row; try again")

    def _configure(self, node: str, vmid: int, spec: InstanceSpec, meta: GuestMeta) -> dict:
        path = self.kind.path(node, vmid, "config")
        config = self.client.get(path)
        params: dict = {
            "cores": spec.vcpus,
            "memory": spec.memory_mb,
            "description": meta.description(),
            "tags": meta.tags(),
        }
        if self.kind.is_lxc:
            entries = [e for e in str(config.get("env", "")).split("\0") if e]
            entries = [e for e in entries if not e.startswith(f"{SECRET_ENV}=")]
            params["env"] = "\0".join([*entries, f"{SECRET_ENV}={secrets.token_hex(32)}"])
        elif str(config.get("agent", "0")).split(",")[0] not in ("1", "enabled=1"):
            params["agent"] = "1"
        if self.settings.bridge and config.get("net0"):
            params["net0"] = _with_bridge(str(config["net0"]), self.settings.bridge)
        self.client.put(path, **params)
        return {**config, **{k: str(v) for k, v in params.items()}}

    def _grow_disk(self, node: str, vmid: int, config: dict, disk_gb: int) -> None:
        if self.kind.disk_gb(config) >= disk_gb:
            return  # PVE cannot shrink; a template at least as big as the preset is kept
        disk = self.kind.disk_key(config)
        upid = self.client.put(self.kind.path(node, vmid, "resize"), disk=disk, size=f"{disk_gb}G")
        self.wait(upid, f"growing the disk of {self.kind.label} {vmid} to {disk_gb} GiB")
        volume = str(config[disk]).split(",")[0]
        config[disk] = f"{volume},size={disk_gb}G"

    def _roll_back(self, node: str, vmid: int, sandbox_id: str, error: ProviderError) -> None:
        """Destroy what a failed create made (if it is ours), then raise ``error``."""
        try:
            if self.owned_by(node, vmid, sandbox_id):
                self.destroy(node, vmid, lock_wait=max(self.settings.lock_wait, 30.0))
            self.vmids.release(vmid)
        except ProviderError as cleanup:
            raise type(error)(
                f"{error.message}; removing the half-made {self.kind.label} {vmid} failed too "
                f"({cleanup.message}); it carries sandbox {sandbox_id}'s marker, so garbage "
                "collection will find it",
                ref=str(vmid),
            ) from error
        raise error

    # --- snapshot versions -----------------------------------------------------------------

    def delete_snapshot(self, ref: str) -> None:
        vmid = self._vmid(ref)
        row = self.locate(vmid)
        if row is None:
            raise NotFound(f"template {vmid} does not exist on the PVE cluster", ref=ref)
        if row.get("type") != self.kind.name or not row.get("template"):
            raise Conflict(
                f"{vmid} is not a {self.kind.label} template; refusing to destroy it", ref=ref
            )
        clones = self._linked_clones(row["node"], vmid)
        if clones:
            raise Conflict(
                f"template {vmid} still has linked clones ({', '.join(clones)}); delete those "
                "sandboxes first",
                ref=ref,
            )
        try:
            self.destroy(row["node"], vmid)
        except OperationFailed as exc:
            if "in use" in exc.message:
                raise Conflict(f"template {vmid} is still in use: {exc.message}", ref=ref) from None
            raise
        self.vmids.release(vmid)

    def _linked_clones(self, node: str, template: int) -> list[str]:
        base = f"base-{template}-disk"
        names = []
        for row in self.client.resources("vm"):
            if row.get("node") != node or row.get("template") or row.get("type") != self.kind.name:
                continue
            try:
                config = self.guest_config(node, int(row["vmid"]))
            except NotFound:
                continue
            if base in self.kind.disk_volume(config):
                meta = meta_codec.parse(config.get("description"), config.get("tags"))
                who = meta.sandbox_id if meta and meta.sandbox_id else "not a sandbox"
                names.append(f"{self.kind.label} {row['vmid']} ({who})")
        return names


def _with_bridge(net0: str, bridge: str) -> str:
    parts = [p for p in net0.split(",") if not p.startswith("bridge=")]
    return ",".join([*parts, f"bridge={bridge}"])


class PveLxcProvider(PveProvider):
    name = "pve-lxc"
    kind = LXC


class PveVmProvider(PveProvider):
    name = "pve-vm"
    kind = QEMU
