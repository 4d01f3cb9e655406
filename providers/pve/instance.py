"""A handle on one PVE guest made for a sandbox. Every method asks PVE afresh."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from providers.base import (
    ExecResult,
    HttpService,
    Instance,
    InstanceStatus,
    MetricSample,
    Networking,
    ProcessSession,
    SnapshotResult,
    TerminalSession,
    as_argv,
    checked_env,
    terminal_argv,
    terminal_env,
    terminal_size,
    with_env,
)
from providers.errors import (
    Conflict,
    InvalidState,
    NotFound,
    OperationFailed,
    ProviderError,
    Unavailable,
)
from providers.pve import metadata as meta_codec
from providers.pve import vm_agent
from providers.pve.agent import SECRET_ENV
from providers.pve.client import is_exists_error
from providers.pve.guest_exec import lxc_exec, vm_exec
from providers.pve.kinds import dns_label
from providers.pve.metadata import GuestMeta
from providers.pve.process import open_process as open_agent_process
from providers.pve.terminal import open_session

if TYPE_CHECKING:
    from providers.pve.guests import PveGuests

S = InstanceStatus


T = TypeVar("T")


class PveInstance(Instance):
    def __init__(
        self,
        guests: PveGuests,
        vmid: int,
        node: str,
        config: dict,
        meta: GuestMeta,
        current: dict,
    ) -> None:
        #: The cluster's client, tasks, VMIDs and settings: all it needs of its provider.
        self._guests = guests
        self._kind = guests.kind
        self.vmid = vmid
        self.node = node
        self._config = config
        self._meta = meta
        self._address: str | None = None
        self.id = str(vmid)
        self.metadata = dict(meta.metadata)
        self.networking = Networking(tuple(meta.services))
        self.status = self._kind.status(
            {**current, "lock": current.get("lock") or config.get("lock")}
        )

    def __repr__(self) -> str:
        return f"PveInstance({self._kind.label} {self.vmid} on {self.node}, {self.status})"

    @property
    def sandbox_id(self) -> str:
        return self._meta.sandbox_id

    # --- reading the guest -----------------------------------------------------------------

    def _path(self, *rest: str) -> str:
        return self._kind.path(self.node, self.vmid, *rest)

    def _current(self) -> dict:
        """``status/current``, following the guest if it migrated, NotFound if it is gone."""
        try:
            current = self._guests.client.get(self._path("status/current"))
        except NotFound:
            row = self._guests.locate(self.vmid)
            if row is None or row.get("type") != self._kind.name:
                raise self._gone() from None
            self.node = row["node"]
            current = self._guests.client.get(self._path("status/current"))
        if current.get("name") != dns_label(self.sandbox_id, "") and not self._still_ours():
            raise self._gone()  # the VMID was reused for something else
        self.status = self._kind.status(current)
        return current

    def _still_ours(self) -> bool:
        config = self._guests.guest_config(self.node, self.vmid)
        meta = meta_codec.parse(config.get("description"), config.get("tags"))
        if meta is None or meta.sandbox_id != self.sandbox_id:
            return False
        self._config = config
        return True

    def _gone(self) -> NotFound:
        return NotFound(f"sandbox guest {self._kind.label} {self.vmid} does not exist", ref=self.id)

    def _state(self) -> InstanceStatus:
        self._current()
        return self.status

    # --- lifecycle -------------------------------------------------------------------------

    def _task(self, action: str, what: str, **params: object) -> None:
        upid = self._guests.client.post(self._path(f"status/{action}"), **params)
        self._guests.wait(upid, f"{what} {self._kind.label} {self.vmid}")

    def start(self) -> None:
        state = self._state()
        if state == S.RUNNING:
            return
        if state == S.PAUSED:
            self._task("resume", "resuming")
        elif state in (S.STOPPED, S.HIBERNATED):
            try:
                self._task("start", "starting")
            except Conflict as exc:
                if "already running" not in exc.message:
                    raise
        else:
            raise Conflict(
                f"{self._kind.label} {self.vmid} is {state}; it cannot start now", ref=self.id
            )
        self.status = S.RUNNING
        self._address = None

    def stop(self) -> None:
        state = self._state()
        if state == S.STOPPED:
            return
        if state == S.HIBERNATED:  # drop the saved RAM: wake it, then stop it
            self._task("start", "waking")
        try:
            self._task("stop", "stopping")
        except Conflict as exc:
            if "not running" not in exc.message:
                raise
        self.status = S.STOPPED

    def pause(self) -> None:
        self._guests.capabilities().require("supports_pause", provider=self._kind.provider)
        state = self._state()
        if state == S.PAUSED:
            return
        if state != S.RUNNING:
            raise Conflict(f"only a running sandbox can pause (it is {state})", ref=self.id)
        self._task("suspend", "pausing")
        self.status = S.PAUSED

    def resume(self) -> None:
        state = self._state()
        if state == S.RUNNING:
            return
        if state == S.PAUSED:
            self._task("resume", "resuming")
        elif state == S.HIBERNATED:
            self._task("start", "resuming")  # PVE resumes a suspended-to-disk VM on start
        else:
            raise Conflict(f"a {state} sandbox cannot resume; start it instead", ref=self.id)
        self.status = S.RUNNING

    def hibernate(self) -> None:
        self._guests.capabilities().require("supports_hibernate", provider=self._kind.provider)
        state = self._state()
        if state == S.HIBERNATED:
            return
        if state not in (S.RUNNING, S.PAUSED):
            raise Conflict(
                f"only a running or paused sandbox can hibernate (it is {state})", ref=self.id
            )
        self._task("suspend", "hibernating", todisk=1)
        self.status = S.HIBERNATED

    def delete(self) -> None:
        try:
            row = self._guests.locate(self.vmid)
        except ProviderError:
            row = {"node": self.node, "type": self._kind.name}  # go by what the handle knows
        else:
            if row is None or row.get("type") != self._kind.name or row.get("template"):
                return
            self.node = row["node"]
        if not self._guests.owned_by(
            self.node, self.vmid, self.sandbox_id, row if "vmid" in row else None
        ):
            return  # gone, or the VMID now belongs to something else
        self._guests.destroy(self.node, self.vmid, hint=row if "status" in row else None)
        self._guests.vmids.release(self.vmid)

    # --- exec ------------------------------------------------------------------------------

    def exec(
        self,
        command: str | Sequence[str],
        timeout: float = 60.0,
        *,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        # Neither the QEMU guest agent's exec (as PVE's API offers it) nor the container
        # agent's protocol carries variables: ``env`` inside the guest sets them. They are
        # then in that process's command line, visible inside the guest only.
        command = with_env(command, env)
        state = self._state()
        if state != S.RUNNING:
            raise Conflict(f"sandbox {self.sandbox_id} is {state}, not running", ref=self.id)
        if not self._kind.is_lxc:
            return vm_exec(
                self._guests.client,
                self.node,
                self.vmid,
                workdir=self._guests.settings.guest_workdir,
                command=command,
                timeout=timeout,
            )
        secret = self._secret()
        try:
            return lxc_exec(
                self._address_of(), self._guests.settings.agent_port, secret, command, timeout
            )
        except Unavailable:
            self._address = None  # the address may have changed (DHCP): look again, once
            return lxc_exec(
                self._address_of(), self._guests.settings.agent_port, secret, command, timeout
            )

    # --- terminals ---------------------------------------------------------------------------

    def open_terminal(
        self,
        command: str | Sequence[str] | None = None,
        *,
        cols: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
    ) -> TerminalSession:
        argv = terminal_argv(command)
        cols, rows = terminal_size(cols, rows)
        variables = terminal_env(env)
        self._require_running("a terminal")
        if not self._kind.is_lxc:
            return vm_agent.open_terminal(
                self._guests,
                node=self.node,
                vmid=self.vmid,
                sandbox_id=self.sandbox_id,
                address=self._address_of(),
                argv=argv,
                cols=cols,
                rows=rows,
                env=variables,
            )
        return self._through_agent(
            lambda address, port, secret: open_session(
                address, port, secret, argv=argv, cols=cols, rows=rows, env=variables
            )
        )

    # --- streamed processes -----------------------------------------------------------------

    def open_process(
        self, command: str | Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> ProcessSession:
        argv = as_argv(command)
        variables = checked_env(env)
        self._require_running("a process")
        if not self._kind.is_lxc:
            return vm_agent.open_process(
                self._guests,
                node=self.node,
                vmid=self.vmid,
                sandbox_id=self.sandbox_id,
                address=self._address_of(),
                argv=argv,
                env=variables,
            )
        return self._through_agent(
            lambda address, port, secret: open_agent_process(
                address, port, secret, argv=argv, env=variables
            )
        )

    def _require_running(self, what: str) -> None:
        state = self._state()
        if state != S.RUNNING:
            raise InvalidState(
                f"sandbox {self.sandbox_id} is {state}; {what} needs it running", ref=self.id
            )

    def _through_agent(self, open_on: Callable[[str, int, str], T]) -> T:
        """``open_on(address, port, secret)`` against the container's agent; once more
        with the address looked up again when it cannot be reached (DHCP may move it)."""
        secret = self._secret()
        port = self._guests.settings.agent_port
        try:
            return open_on(self._address_of(), port, secret)
        except Unavailable:
            self._address = None
            return open_on(self._address_of(), port, secret)

    def _secret(self) -> str:
        for config in (self._config, None):
            if config is None:
                config = self._config = self._guests.guest_config(self.node, self.vmid)
            for item in str(config.get("env", "")).split("\0"):
                key, _, value = item.partition("=")
                if key == SECRET_ENV and value:
                    return value
        raise OperationFailed(
            f"{self._kind.label} {self.vmid} has no exec agent secret in its config ('env'); "
            "it was not made by this control plane's create"
        )

    def _address_of(self) -> str:
        """The guest's address, from PVE (CT interfaces or the QEMU guest agent).

        The guest reports it, so the guest controls it: only an address the settings'
        rule allows (global or private unicast, inside ``PVE_GUEST_CIDRS`` when set; never
        unspecified, loopback, link-local, multicast or reserved) is taken, IPv4 first.
        """
        if self._address:
            return self._address
        v4: list[str] = []
        v6: list[str] = []
        if self._kind.is_lxc:
            for iface in self._guests.client.get(self._path("interfaces")):
                if iface.get("name") == "lo":
                    continue
                for key, found in (("inet", v4), ("inet6", v6)):
                    for item in str(iface.get(key) or "").split():
                        found.append(item.split("/")[0])
        else:
            answer = self._guests.client.get(self._path("agent/network-get-interfaces"))
            for iface in answer.get("result", []):
                if iface.get("name") == "lo":
                    continue
                for addr in iface.get("ip-addresses", []):
                    kind = addr.get("ip-address-type")
                    if kind in ("ipv4", "ipv6") and addr.get("ip-address"):
                        (v4 if kind == "ipv4" else v6).append(str(addr["ip-address"]))
        rule = self._guests.settings.guest_addresses
        refused = []
        for address in v4 + v6:
            reason = rule.refusal(address)
            if reason is None:
                ip = ipaddress.ip_address(address)
                self._address = str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)
                return self._address
            refused.append(reason)
        if refused:
            raise Conflict(
                f"{self._kind.label} {self.vmid} reports no address the control plane may "
                f"connect to ({'; '.join(refused[:4])})",
                ref=self.id,
            )
        raise Conflict(f"{self._kind.label} {self.vmid} has no IP address yet", ref=self.id)

    def _host(self) -> str:
        """The guest's address as a URL's host (IPv6 in brackets)."""
        address = self._address_of()
        return f"[{address}]" if ":" in address else address

    # --- services, wake-on, snapshots, metrics -----------------------------------------------

    def expose_http_service(self, name: str, port: int) -> str:
        if not 1 <= int(port) <= 65535:
            raise OperationFailed(f"port {port} is not a TCP port")
        domain = self._guests.settings.public_domain
        if domain:
            url = f"https://port-{port}-{dns_label(self.sandbox_id, self.id)}.{domain}"
        else:
            if self._state() != S.RUNNING:
                raise Conflict(
                    "without PVE_PUBLIC_DOMAIN a service URL is the guest's address, which is "
                    "only known while it runs; start the sandbox first",
                    ref=self.id,
                )
            url = f"http://{self._host()}:{port}"
        services = [s for s in self._meta.services if s.name != name]
        self._save_services([*services, HttpService(name, int(port), url)])
        return url

    def hide_http_service(self, name: str) -> None:
        self._save_services([s for s in self._meta.services if s.name != name])

    def relabel(self, metadata: Mapping[str, str]) -> None:
        # One config write: the description (the metadata a lost row is rebuilt from),
        # the tags (what survives an edited description) and the guest's name, which
        # create's idempotency and ``_current`` match against the sandbox id.
        config = self._guests.guest_config(self.node, self.vmid)
        meta = meta_codec.parse(config.get("description"), config.get("tags")) or self._meta
        meta = GuestMeta({str(k): str(v) for k, v in metadata.items()}, meta.services, meta.kind)
        self._guests.client.put(
            self._path("config"),
            description=meta.description(),
            tags=meta.tags(),
            **{self._kind.name_key: dns_label(meta.sandbox_id, "sandbox")},
        )
        self._meta = meta
        self.metadata = dict(meta.metadata)

    def _save_services(self, services: list[HttpService]) -> None:
        config = self._guests.guest_config(self.node, self.vmid)
        meta = meta_codec.parse(config.get("description"), config.get("tags")) or self._meta
        meta.services = services
        self._guests.client.put(self._path("config"), description=meta.description())
        self._meta = meta
        self.networking = Networking(tuple(services))

    def set_wake_on(self, http: bool, ssh: bool) -> None:
        self._guests.capabilities().require("supports_wake_on", provider=self._kind.provider)

    def metrics(self) -> list[MetricSample]:
        rows = self._guests.client.get(self._path("rrddata"), timeframe="hour", cf="AVERAGE")
        samples = []
        for row in rows:
            if "time" not in row:
                continue
            cpu = row.get("cpu")
            maxcpu = row.get("maxcpu") or 1
            samples.append(
                MetricSample(
                    time=datetime.fromtimestamp(int(row["time"]), UTC),
                    cpu_fraction=None if cpu is None else float(cpu) * float(maxcpu),
                    memory_bytes=None if row.get("mem") is None else int(row["mem"]),
                )
            )
        return sorted(samples, key=lambda s: s.time)

    def snapshot(self) -> SnapshotResult:
        """A new template: PVE snapshot, full clone of it, template conversion, cleanup."""
        state = self._state()
        if state not in (S.RUNNING, S.STOPPED, S.PAUSED):
            raise Conflict(f"a {state} sandbox cannot be snapshotted", ref=self.id)
        return TemplateMaker(self).make()


class TemplateMaker:
    """Makes a template VMID from a sandbox; on failure removes everything it made."""

    def __init__(self, instance: PveInstance) -> None:
        self.instance = instance
        self.provider = instance._guests
        self.kind = instance._kind
        self.snapname = f"sbx{int(time.time() * 1000) % 10**12}"
        self.snapshot_made = False
        self.vmid: int | None = None
        #: PVE accepted the clone to ``vmid``, so what is there is ours to destroy.
        self.cloned = False

    def make(self) -> SnapshotResult:
        i, p, kind = self.instance, self.provider, self.kind
        rows = p.client.resources()
        try:
            upid = p.client.post(i._path("snapshot"), snapname=self.snapname)
            self.snapshot_made = True
            p.wait(upid, f"taking PVE snapshot {self.snapname} of {kind.label} {i.vmid}")
            self.vmid = p.vmids.allocate(rows, owner=f"template:{i.sandbox_id}")
            meta = GuestMeta(dict(i.metadata), kind="template")
            try:
                upid = p.client.post(
                    i._path("clone"),
                    slow=True,
                    newid=self.vmid,
                    snapname=self.snapname,
                    full=True,
                    description=meta.description(),
                    **{kind.name_key: dns_label(f"tpl-{i.sandbox_id}", f"tpl-{self.vmid}")},
                )
            except ProviderError as exc:
                if is_exists_error(exc):  # someone else's guest holds the VMID: not ours
                    p.vmids.release(self.vmid)
                    self.vmid = None
                raise
            self.cloned = True
            p.wait(upid, f"copying {kind.label} {i.vmid} to template {self.vmid}", long=True)
            path = kind.path(i.node, self.vmid)
            p.client.put(f"{path}/config", tags=meta.tags())
            upid = p.client.post(f"{path}/template", slow=True)
            if upid:  # VMs convert in a task; containers answer at once
                p.wait(upid, f"converting {self.vmid} to a template", long=True)
            config = p.guest_config(i.node, self.vmid)
            self._drop_snapshot()
        except ProviderError as exc:
            self._undo(exc)
        size = int(kind.disk_gb(config) * 1024**3) or None
        return SnapshotResult(ref=str(self.vmid), size_bytes=size)

    def _drop_snapshot(self) -> None:
        if not self.snapshot_made:
            return
        try:
            upid = self.provider.client.delete(self.instance._path(f"snapshot/{self.snapname}"))
        except NotFound:
            self.snapshot_made = False
            return
        self.provider.wait(upid, f"removing PVE snapshot {self.snapname}")
        self.snapshot_made = False

    def _undo(self, error: ProviderError) -> None:
        i, p = self.instance, self.provider
        problems = []
        if self.vmid is not None:
            try:
                # An unanswered clone request may or may not have made the template: only
                # a guest carrying this sandbox's marker is destroyed.
                if self.cloned or p.owned_by(i.node, self.vmid, i.sandbox_id):
                    p.destroy(i.node, self.vmid, lock_wait=max(p.settings.lock_wait, 30.0))
                p.vmids.release(self.vmid)
            except ProviderError as exc:
                problems.append(f"template {self.vmid}: {exc.message}")
        try:
            self._drop_snapshot()
        except ProviderError as exc:
            problems.append(f"PVE snapshot {self.snapname}: {exc.message}")
        if problems:
            raise type(error)(
                f"{error.message}; cleaning up failed too ({'; '.join(problems)})"
            ) from error
        raise error
