"""What each simulated endpoint does, after the request passed schema validation.

Behaviour and messages follow PVE 9 (``PVE::API2::LXC``, ``PVE::API2::Qemu``): config
locks, "already exists", "does not exist", running/not running checks, linked clones
that keep a template's base volume in use, tasks that hold a ``create`` lock until done.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.pve_sim.schema import ApiError
from tests.pve_sim.state import LXC, QEMU, Cluster, Guest, Task, mac_address

VERSION = {"version": "9.2.1", "release": "9.2", "repoid": "6bc3ab5a7d1c0e21"}


@dataclass
class Request:
    """Who is asking, and what fault injection wants done to the task it starts."""

    cluster: Cluster
    user: str
    task_fail: str | None = None
    task_delay: float | None = None

    def task(
        self,
        node: str,
        type_: str,
        id_: str | int,
        *,
        on_ok: Callable[[], None] | None = None,
        on_fail: Callable[[], None] | None = None,
    ) -> str:
        task: Task = self.cluster.task(
            node, type_, str(id_), self.user, on_ok=on_ok, on_fail=on_fail
        )
        if self.task_fail is not None:
            task.fail_message = self.task_fail
        if self.task_delay is not None:
            task.finish_at = time.time() + self.task_delay
        return task.upid


Handler = Callable[[Request, dict[str, Any]], Any]
HANDLERS: dict[tuple[str, str], Handler] = {}


def route(method: str, *templates: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for template in templates:
            HANDLERS[(method, template)] = fn
        return fn

    return register


def _guest(req: Request, p: dict, kind: str) -> Guest:
    return req.cluster.guest(p["node"], kind, p["vmid"])


def _both(method: str, suffix: str) -> Callable[[Callable], Callable]:
    """Register one handler for /lxc and /qemu, passing the kind."""

    def register(fn: Callable[[Request, dict, str], Any]) -> Callable:
        for kind, folder in ((LXC, "lxc"), (QEMU, "qemu")):
            template = f"/nodes/{{node}}/{folder}/{{vmid}}{suffix}"
            HANDLERS[(method, template)] = lambda req, p, k=kind: fn(req, p, k)
        return fn

    return register


# --- cluster ---------------------------------------------------------------------------


@route("GET", "/version")
def version(req: Request, p: dict) -> dict:
    return dict(VERSION)


@route("GET", "/nodes")
def nodes(req: Request, p: dict) -> list[dict]:
    return [_node_row(req.cluster, n) for n in req.cluster.nodes]


@route("GET", "/cluster/nextid")
def nextid(req: Request, p: dict) -> str:
    used = set(req.cluster.guests)
    if "vmid" in p:
        if p["vmid"] in used:
            raise ApiError(400, f"VM {p['vmid']} already exists")
        return str(p["vmid"])
    return str(next(v for v in range(100, 1_000_000) if v not in used))


@route("GET", "/cluster/resources")
def resources(req: Request, p: dict) -> list[dict]:
    c = req.cluster
    rows: list[dict] = []
    kind = p.get("type")
    if kind in (None, "node"):
        rows += [_node_row(c, n) for n in c.nodes]
    if kind in (None, "storage"):
        for node in c.nodes.values():
            for s in c.storages.values():
                rows.append(
                    {
                        "id": f"storage/{node.name}/{s.id}",
                        "type": "storage",
                        "storage": s.id,
                        "node": node.name,
                        "plugintype": s.plugintype,
                        "shared": int(s.shared),
                        "content": "images,rootdir",
                        "status": "available" if node.online else "unknown",
                        "maxdisk": 2 * 1024**4,
                        "disk": 100 * 1024**3,
                    }
                )
    if kind in (None, "vm"):
        rows += [_guest_row(c, g) for g in sorted(c.guests.values(), key=lambda g: g.vmid)]
    return rows


def _node_row(c: Cluster, name: str) -> dict:
    node = c.nodes[name]
    row = {"id": f"node/{name}", "type": "node", "node": name, "level": ""}
    if not node.online:
        return row | {"status": "offline"}
    return row | {
        "status": "online",
        "maxcpu": node.maxcpu,
        "cpu": 0.05,
        "maxmem": node.maxmem,
        "mem": c.used_memory(name),
        "maxdisk": 100 * 1024**3,
        "disk": 10 * 1024**3,
        "uptime": 86400,
    }


def _guest_row(c: Cluster, g: Guest) -> dict:
    _, size = g.volume()
    row = {
        "id": f"{g.kind}/{g.vmid}",
        "type": g.kind,
        "vmid": g.vmid,
        "node": g.node,
        "name": g.config.get("hostname") or g.config.get("name") or f"{g.kind}-{g.vmid}",
        "status": g.status,
        "template": int(g.is_template),
        "maxcpu": int(g.config.get("cores", "1")),
        "cpu": 0.01 if g.status == "running" else 0,
        "maxmem": g.memory_bytes,
        "mem": g.memory_bytes // 4 if g.status == "running" else 0,
        "maxdisk": size * 1024**3,
        "disk": 0,
        "uptime": int(time.time() - g.started_at) if g.status == "running" else 0,
    }
    if g.config.get("tags"):
        row["tags"] = g.config["tags"]
    if g.config.get("lock"):
        row["lock"] = g.config["lock"]
    return row


@route("GET", "/nodes/{node}/tasks/{upid}/status")
def task_status(req: Request, p: dict) -> dict:
    req.cluster.node(p["node"])
    task = req.cluster.tasks.get(p["upid"])
    if task is None or task.node != p["node"]:
        raise ApiError(500, f"unable to parse worker upid '{p['upid']}'")
    return task.as_json()


# --- guests: listing, config, status ------------------------------------------------------


def _lister(kind: str) -> Handler:
    def list_guests(req: Request, p: dict) -> list[dict]:
        req.cluster.node(p["node"])
        guests = req.cluster.guests.values()
        return [
            _guest_row(req.cluster, g) for g in guests if g.node == p["node"] and g.kind == kind
        ]

    return list_guests


HANDLERS[("GET", "/nodes/{node}/lxc")] = _lister(LXC)
HANDLERS[("GET", "/nodes/{node}/qemu")] = _lister(QEMU)


_NUMERIC = {"cores", "memory", "swap", "template", "onboot", "cpuunits", "unprivileged"}


@_both("GET", "/config")
def get_config(req: Request, p: dict, kind: str) -> dict:
    guest = _guest(req, p, kind)
    # PVE answers numbers as JSON numbers.
    config: dict = {
        k: int(v) if k in _NUMERIC and v.isdigit() else v for k, v in guest.config.items()
    }
    config["digest"] = format(abs(hash(tuple(sorted(config.items())))), "040x")[:40]
    return config


def _apply_config(guest: Guest, p: dict) -> None:
    for key in [k for k in str(p.get("delete", "")).replace(";", ",").split(",") if k]:
        guest.config.pop(key.strip(), None)
    for key, value in p.items():
        if key in ("node", "vmid", "delete", "digest", "skiplock"):
            continue
        if isinstance(value, bool):
            value = "1" if value else "0"
        if key in (guest.disk_key, "template"):
            raise ApiError(400, "Parameter verification failed.", {key: "not changeable here"})
        guest.config[key] = str(value)


@_both("PUT", "/config")
def put_config(req: Request, p: dict, kind: str) -> None:
    guest = _guest(req, p, kind)
    if not p.get("skiplock"):
        guest.check_lock()
    _apply_config(guest, p)
    return None


@route("POST", "/nodes/{node}/qemu/{vmid}/config")
def post_qemu_config(req: Request, p: dict) -> str:
    guest = _guest(req, p, QEMU)
    if not p.get("skiplock"):
        guest.check_lock()
    _apply_config(guest, p)
    return req.task(p["node"], "qmconfig", p["vmid"])


@_both("GET", "/status/current")
def status_current(req: Request, p: dict, kind: str) -> dict:
    guest = _guest(req, p, kind)
    data = _guest_row(req.cluster, guest)
    data.pop("id")
    data.pop("node")
    data["cpus"] = data.pop("maxcpu")
    if guest.is_template:
        data["template"] = 1
    else:
        data.pop("template")
    if kind == QEMU:
        data["qmpstatus"] = guest.qmpstatus if guest.status == "running" else "stopped"
        if guest.config.get("agent", "0").split(",")[0] in ("1", "enabled=1"):
            data["agent"] = 1
    return data


@_both("POST", "/status/start")
def start(req: Request, p: dict, kind: str) -> str:
    guest = _guest(req, p, kind)
    if guest.is_template:
        raise ApiError(500, f"{guest.label} {guest.vmid} is a template - start failed")
    if guest.config.get("lock") != "suspended":
        guest.check_lock()
    if guest.status == "running":
        raise ApiError(500, f"{guest.label} {guest.vmid} already running")

    def done() -> None:
        guest.config.pop("lock", None)
        guest.config.pop("vmstate", None)
        req.cluster.boot(guest)

    return req.task(p["node"], "vzstart" if kind == LXC else "qmstart", p["vmid"], on_ok=done)


@_both("POST", "/status/stop")
def stop(req: Request, p: dict, kind: str) -> str:
    guest = _guest(req, p, kind)
    if not p.get("skiplock") and guest.config.get("lock") != "suspended":
        guest.check_lock()
    if guest.status != "running":
        raise ApiError(500, f"{guest.label} {guest.vmid} not running")

    def done() -> None:
        if kind == LXC and guest.config.get("lock") == "suspended":
            guest.config.pop("lock")
        req.cluster.halt(guest)

    return req.task(p["node"], "vzstop" if kind == LXC else "qmstop", p["vmid"], on_ok=done)


@_both("POST", "/status/shutdown")
def shutdown(req: Request, p: dict, kind: str) -> str:
    return stop(req, p, kind)


@_both("POST", "/status/suspend")
def suspend(req: Request, p: dict, kind: str) -> str:
    guest = _guest(req, p, kind)
    guest.check_lock()
    if guest.status != "running":
        raise ApiError(500, f"{guest.label} {guest.vmid} not running")
    to_disk = bool(p.get("todisk"))

    def done() -> None:
        if guest.status != "running":
            raise ApiError(500, f"{guest.label} {guest.vmid} not running")
        if kind == LXC:  # CRIU checkpoint: modelled as a frozen CT under a 'suspended' lock
            guest.config["lock"] = "suspended"
        elif to_disk:
            volume, _ = guest.volume()
            storage = volume.split(":")[0]
            guest.config["vmstate"] = f"{storage}:vm-{guest.vmid}-state-suspend-{int(time.time())}"
            guest.config["lock"] = "suspended"
            req.cluster.halt(guest)
        else:
            guest.qmpstatus = "paused"

    return req.task(p["node"], "vzsuspend" if kind == LXC else "qmsuspend", p["vmid"], on_ok=done)


@_both("POST", "/status/resume")
def resume(req: Request, p: dict, kind: str) -> str:
    guest = _guest(req, p, kind)
    if guest.status != "running":
        raise ApiError(500, f"{guest.label} {guest.vmid} not running")

    def done() -> None:
        guest.qmpstatus = "running"
        if kind == LXC:
            guest.config.pop("lock", None)

    return req.task(p["node"], "vzresume" if kind == LXC else "qmresume", p["vmid"], on_ok=done)


# --- clone, resize, template, destroy ------------------------------------------------------


@_both("POST", "/clone")
def clone(req: Request, p: dict, kind: str) -> str:
    c = req.cluster
    source = _guest(req, p, kind)
    newid: int = p["newid"]
    label = source.label
    if newid in c.guests:
        other = c.guests[newid]
        raise ApiError(
            500,
            f"unable to create {label} {newid} - {other.label} {newid} "
            f"already exists on node '{other.node}'",
        )
    target = p.get("target", p["node"])
    c.node(target)
    snapname = p.get("snapname")
    if snapname and snapname not in source.snapshots:
        raise ApiError(500, f"snapshot '{snapname}' does not exist")
    full = p.get("full")
    if not source.is_template:
        if full is False:
            raise ApiError(500, "Linked clone feature is not available for a non-template")
        full = True
        if kind == LXC and source.status == "running" and not snapname:
            raise ApiError(500, "Cannot do full clones on a running container without snapshots")
    elif full is None:
        full = False
    volume, size = source.volume()
    storage_id = volume.split(":")[0]
    storage = c.storages[storage_id]
    if target != source.node and not storage.shared:
        raise ApiError(
            500, f"Can't clone to other node '{target}' - {label} uses local storage '{storage_id}'"
        )
    if "storage" in p:
        if not full:
            raise ApiError(
                400, "Parameter verification failed.", {"storage": "linked clone: not allowed"}
            )
        if p["storage"] not in c.storages:
            raise ApiError(500, f"storage '{p['storage']}' does not exist")
        storage_id = p["storage"]
    if not source.is_template:
        source.check_lock()
        source.config["lock"] = "clone"
    config = {k: v for k, v in source.config.items() if k not in ("template", "lock", "vmstate")}
    config["lock"] = "create"
    name_key = "hostname" if kind == LXC else "name"
    config[name_key] = p.get("hostname") or p.get("name") or f"copy-of-{source.vmid}"
    if "description" in p:
        config["description"] = p["description"]
    if kind == LXC:
        config["net0"] = re.sub(r"hwaddr=[^,]*,?", "", config.get("net0", "name=eth0")).rstrip(",")
        config["net0"] += f",hwaddr={mac_address()}"
    else:
        config["net0"] = re.sub(r"^[a-z0-9]+=[0-9A-F:]+", f"virtio={mac_address()}", config["net0"])
    # A linked clone's volume names the template's base volume it is a child of.
    new_volume = f"{storage_id}:vm-{newid}-disk-0" if full else f"{volume}/vm-{newid}-disk-0"
    guest = Guest(newid, kind, target, config, c.new_disk(), base=None if full else source.vmid)
    guest.set_volume(new_volume, size)
    c.guests[newid] = guest
    origin = source.snapshots[snapname] if snapname else source.disk

    def done() -> None:
        shutil.rmtree(guest.disk, ignore_errors=True)
        shutil.copytree(origin, guest.disk, symlinks=True)
        guest.config.pop("lock", None)
        if source.config.get("lock") == "clone":
            source.config.pop("lock")

    def failed() -> None:  # PVE removes a half-made clone itself
        c.remove(guest)
        if source.config.get("lock") == "clone":
            source.config.pop("lock")

    return req.task(
        p["node"], "vzclone" if kind == LXC else "qmclone", source.vmid, on_ok=done, on_fail=failed
    )


_SIZE = re.compile(r"(\+)?(\d+(?:\.\d+)?)([KMGT])?")
_UNITS = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1, "T": 1024, None: 1 / 1024**3}


@_both("PUT", "/resize")
def resize(req: Request, p: dict, kind: str) -> str:
    guest = _guest(req, p, kind)
    guest.check_lock()
    if p["disk"] != guest.disk_key:
        raise ApiError(500, f"disk '{p['disk']}' does not exist")
    m = _SIZE.fullmatch(p["size"])
    volume, current = guest.volume()
    amount = float(m.group(2)) * _UNITS[m.group(3)]
    wanted = current + amount if m.group(1) else amount
    if wanted < current:
        raise ApiError(500, "unable to shrink disk size")
    guest.config["lock"] = "disk"

    def done() -> None:
        guest.config.pop("lock", None)
        guest.set_volume(volume, round(wanted))

    def failed() -> None:
        guest.config.pop("lock", None)

    return req.task(p["node"], "resize", p["vmid"], on_ok=done, on_fail=failed)


def _make_template(guest: Guest) -> None:
    volume, size = guest.volume()
    guest.config["template"] = "1"
    guest.set_volume(volume.replace(f"vm-{guest.vmid}-disk", f"base-{guest.vmid}-disk"), size)


@route("POST", "/nodes/{node}/lxc/{vmid}/template")
def lxc_template(req: Request, p: dict) -> None:
    guest = _guest(req, p, LXC)
    guest.check_lock()
    if guest.status == "running":
        raise ApiError(500, "you can't convert a running CT to a template")
    if guest.base is not None:
        raise ApiError(500, "you can't convert a CT to template if it is a linked clone")
    _make_template(guest)
    return None


@route("POST", "/nodes/{node}/qemu/{vmid}/template")
def qemu_template(req: Request, p: dict) -> str:
    guest = _guest(req, p, QEMU)
    guest.check_lock()
    if guest.status == "running":
        raise ApiError(500, "you can't convert a template to a running VM")
    if guest.base is not None:
        raise ApiError(500, "you can't convert a VM to template if it is a linked clone")
    return req.task(p["node"], "qmtemplate", p["vmid"], on_ok=lambda: _make_template(guest))


@_both("DELETE", "")
def destroy(req: Request, p: dict, kind: str) -> str:
    c = req.cluster
    guest = _guest(req, p, kind)
    guest.check_lock()
    if guest.status == "running" and not (kind == LXC and p.get("force")):
        raise ApiError(500, f"{guest.label} {guest.vmid} is running - destroy failed")
    clones = c.linked_clones(guest.vmid)
    if clones:
        volume, _ = guest.volume()
        raise ApiError(
            500,
            f"base volume '{volume}' is still in use by linked clone(s) "
            + ", ".join(f"vm-{g.vmid}-disk-0" for g in clones),
        )
    guest.config["lock"] = "destroyed"

    def done() -> None:
        c.remove(guest)

    def failed() -> None:
        guest.config.pop("lock", None)

    return req.task(
        p["node"],
        "vzdestroy" if kind == LXC else "qmdestroy",
        p["vmid"],
        on_ok=done,
        on_fail=failed,
    )


# --- snapshots ---------------------------------------------------------------------------


@_both("GET", "/snapshot")
def list_snapshots(req: Request, p: dict, kind: str) -> list[dict]:
    guest = _guest(req, p, kind)
    rows = [{"name": n, "description": "", "snaptime": 0} for n in guest.snapshots]
    return [*rows, {"name": "current", "description": "You are here!", "digest": "0" * 40}]


@_both("POST", "/snapshot")
def take_snapshot(req: Request, p: dict, kind: str) -> str:
    c = req.cluster
    guest = _guest(req, p, kind)
    guest.check_lock()
    name = p["snapname"]
    if name in guest.snapshots or name == "current":
        raise ApiError(500, f"snapshot name '{name}' already used")
    guest.config["lock"] = "snapshot"

    def done() -> None:
        guest.snapshots[name] = c.new_disk(guest.disk)
        guest.config.pop("lock", None)

    def failed() -> None:
        guest.config.pop("lock", None)

    return req.task(
        p["node"],
        "vzsnapshot" if kind == LXC else "qmsnapshot",
        p["vmid"],
        on_ok=done,
        on_fail=failed,
    )


@_both("DELETE", "/snapshot/{snapname}")
def delete_snapshot(req: Request, p: dict, kind: str) -> str:
    guest = _guest(req, p, kind)
    guest.check_lock()
    name = p["snapname"]
    if name not in guest.snapshots:
        raise ApiError(500, f"snapshot '{name}' does not exist")
    guest.config["lock"] = "snapshot-delete"

    def done() -> None:
        path = guest.snapshots.pop(name, None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        guest.config.pop("lock", None)

    def failed() -> None:
        guest.config.pop("lock", None)

    return req.task(
        p["node"],
        "vzdelsnapshot" if kind == LXC else "qmdelsnapshot",
        p["vmid"],
        on_ok=done,
        on_fail=failed,
    )


# --- metrics, network ----------------------------------------------------------------------


@_both("GET", "/rrddata")
def rrddata(req: Request, p: dict, kind: str) -> list[dict]:
    guest = _guest(req, p, kind)
    step = {"hour": 60, "day": 1800, "week": 10800, "month": 43200, "year": 604800}[p["timeframe"]]
    now = int(time.time()) // step * step
    cores = int(guest.config.get("cores", "1"))
    running = guest.status == "running"
    return [
        {
            "time": now - i * step,
            "cpu": 0.1 if running else 0,
            "maxcpu": cores,
            "mem": guest.memory_bytes // 4 if running else 0,
            "maxmem": guest.memory_bytes,
        }
        for i in reversed(range(70))
    ]


@route("GET", "/nodes/{node}/lxc/{vmid}/interfaces")
def lxc_interfaces(req: Request, p: dict) -> list[dict]:
    guest = _guest(req, p, LXC)
    if guest.status != "running":
        raise ApiError(500, f"CT {guest.vmid} not running")
    mac = re.search(r"hwaddr=([0-9A-Fa-f:]+)", guest.config.get("net0", ""))
    eth0 = {"name": "eth0", "hwaddr": mac.group(1) if mac else "00:00:00:00:00:00"}
    if guest.reported is not None:
        v4 = [a for a in guest.reported if ":" not in a]
        v6 = [a for a in guest.reported if ":" in a]
        if v4:
            eth0["inet"] = " ".join(f"{a}/24" for a in v4)
        if v6:
            eth0["inet6"] = " ".join(f"{a}/64" for a in v6)
    elif guest.ip:
        eth0["inet"] = f"{guest.ip}/8"
    return [
        {"name": "lo", "hwaddr": "00:00:00:00:00:00", "inet": "127.0.0.1/8", "inet6": "::1/128"},
        eth0,
    ]
