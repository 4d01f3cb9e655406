"""The PVE cluster as a provider's instances use it: the API client, task waits, the
VMID allocator and the settings, for guests of one kind, with the operations instances
share with the provider (locate, read the config, destroy, check ownership, wait for a
task). Instances hold this, never the provider, so the modules form a tree:
``provider -> instance -> guests``.
"""

from __future__ import annotations

from providers.base import Capabilities
from providers.errors import Conflict, NotFound, ProviderError
from providers.pve import metadata as meta_codec
from providers.pve.client import PveClient
from providers.pve.kinds import Kind, dns_label
from providers.pve.settings import PveSettings
from providers.pve.tasks import TaskWaiter
from providers.pve.vmids import VmidAllocator

#: Ordinary tasks (start, stop, resize, suspend) get at most this long.
SHORT_TASK = 600.0

#: Why outbound policies are refused (docs/network.md, "pve-lxc and pve-vm").
PVE_NETWORK = (
    "guests join PVE_BRIDGE, whose reach is the operator's network design (VLANs, the PVE "
    "firewall, the router); the provider writes no firewall rules yet"
)


class PveGuests:
    def __init__(self, settings: PveSettings, kind: Kind, vmids: VmidAllocator) -> None:
        self.settings = settings
        self.kind = kind
        self.client = PveClient(settings)
        self.tasks = TaskWaiter(self.client)
        self.vmids = vmids

    def __repr__(self) -> str:
        return f"PveGuests({self.kind.provider}, {self.settings!r})"

    def capabilities(self) -> Capabilities:
        """What guests of this kind can do (the provider adds its size limits)."""
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
        return Capabilities(
            supports_pause=pause,
            supports_hibernate=not lxc,
            supports_snapshots=True,
            supports_exec=True,
            supports_expose_http=True,
            supports_metrics=True,
            supports_terminal=True,
            supports_process=True,
            reasons=reasons,
        )

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
