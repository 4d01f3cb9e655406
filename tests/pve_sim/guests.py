"""What runs *inside* the simulated guests, for real.

* LXC: while a CT runs, the real exec agent (``providers/pve/agent.py``) serves on the
  CT's own loopback address (``127.X.Y.Z``, reported by ``/lxc/{vmid}/interfaces``) on
  the agent port, with the secret the provider put in the CT's ``env`` and the CT's disk
  directory as its working directory. The provider reaches it over real TCP.
* QEMU: while a VM runs, it is one bubblewrap (``vm_guest.py``: its own PID namespace,
  the host's root read-only, the VM's disk directory at the guest's working directory,
  ``/root/work`` by default, private ``/tmp`` and ``/run``) whose first process plays
  qemu-guest-agent: ``agent/exec`` starts the command inside it, so the provider's own
  wrapper (``cd`` + ``timeout``) runs unchanged, ``agent/exec-status`` reports it the way
  qemu-guest-agent does through PVE, and ``agent/file-write`` writes a file inside. What
  the provider starts there (the sandbox agent, serving terminals and processes on the VM's
  address)
  lives in the VM until it stops.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from providers.pve.agent import SECRET_ENV, AgentServer
from tests.pve_sim.handlers import HANDLERS, Request, _guest
from tests.pve_sim.schema import ApiError
from tests.pve_sim.state import LXC, QEMU, Cluster, Guest

QGA_OUTPUT_LIMIT = 16 * 1024 * 1024


def _secret(guest: Guest) -> str | None:
    for item in guest.config.get("env", "").split("\0"):
        key, _, value = item.partition("=")
        if key == SECRET_ENV and value:
            return value
    return None


VM_GUEST = Path(__file__).with_name("vm_guest.py")
#: The guest's own Python (the system's: /root, where a virtualenv's may live, is the
#: VM's home folder, a fresh tmpfs).
GUEST_PYTHON = "/usr/bin/python3"
GUEST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
}
#: How long a booting VM's guest agent may take to come up.
QGA_BOOT = 10.0


@dataclass
class _Run:
    conn: socket.socket
    code: int | None = None
    out: bytes = b""
    err: bytes = b""
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Vm:
    """A running VM: the bubblewrap holding it and its guest agent's socket."""

    proc: subprocess.Popen
    folder: Path

    @property
    def socket(self) -> Path:
        return self.folder / "qga.sock"


class GuestRuntime:
    """Starts and stops the in-guest side of every guest of one simulated cluster."""

    def __init__(self, cluster: Cluster, *, agent_port: int, guest_workdir: str) -> None:
        self.cluster = cluster
        self.agent_port = agent_port
        self.guest_workdir = guest_workdir
        #: The second octet of every CT address, random per simulator (several may run).
        self.net = 64 + secrets.randbelow(160)
        self.runs: dict[int, dict[int, _Run]] = {}
        self.vms: dict[int, _Vm] = {}
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pve-sim-vms")
        cluster.runtime = self
        cluster.start_hooks.append(self.started)
        cluster.stop_hooks.append(self.stopped)

    # --- LXC ---------------------------------------------------------------------------

    def started(self, guest: Guest) -> None:
        if guest.kind != LXC:
            self._boot_vm(guest)
            return
        guest.ip = f"127.{self.net}.{(guest.vmid >> 8) & 255}.{guest.vmid & 255 or 1}"
        secret = _secret(guest)
        if secret is None:
            return  # like a real template's agent: no secret, no service
        # Terminals get a container's environment, not this test process's (whose login
        # profile, read by a login shell, belongs to the host).
        environment = {**GUEST_ENV, "HOME": str(guest.disk)}
        server = AgentServer(
            guest.ip, self.agent_port, secret=secret, workdir=guest.disk, environment=environment
        )
        guest.agent = server.start(poll_interval=0.02)

    def stopped(self, guest: Guest) -> None:
        if guest.agent is not None:
            guest.agent.close()
            guest.agent = None
        guest.ip = ""
        for run in self.runs.pop(guest.vmid, {}).values():
            with contextlib.suppress(OSError):
                run.conn.close()
        vm = self.vms.pop(guest.vmid, None)
        if vm is not None:
            _kill(vm.proc)
            vm.proc.wait()
            shutil.rmtree(vm.folder, ignore_errors=True)

    # --- QEMU: the VM itself -------------------------------------------------------------

    def _boot_vm(self, guest: Guest) -> None:
        folder = Path(tempfile.mkdtemp(prefix=f"vm-{guest.vmid}-"))
        argv = [
            "bwrap",
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--tmpfs", "/tmp",
            "--tmpfs", "/run",
            "--bind", str(folder), "/run/qga",
            # The checkout may live under /tmp, which the VM gets empty: bind the script.
            "--ro-bind", str(VM_GUEST), "/run/vm_guest.py",
            "--tmpfs", str(Path(self.guest_workdir).parent),
            "--bind", str(guest.disk), self.guest_workdir,
            "--unshare-pid",
            "--die-with-parent",
            "--chdir", "/",
            "--",
            GUEST_PYTHON, "/run/vm_guest.py", "/run/qga/qga.sock",
        ]  # fmt: skip
        # --die-with-parent follows the *thread* that started bubblewrap: start it from
        # the runtime's own long-lived thread, not from a request's, which ends.
        proc = self._spawner.submit(
            subprocess.Popen,
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            env=GUEST_ENV,  # as systemd starts qemu-guest-agent: nothing of the host's
        ).result()
        vm = self.vms[guest.vmid] = _Vm(proc, folder)
        deadline = time.monotonic() + QGA_BOOT
        while not vm.socket.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)

    def _qga(self, guest: Guest, request: dict) -> socket.socket:
        """A connection to the VM's guest agent with ``request`` sent on it."""
        vm = self.vms.get(guest.vmid)
        if vm is None or not vm.socket.exists():
            raise ApiError(500, "QEMU guest agent is not running")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(vm.socket))
            conn.sendall(json.dumps(request).encode() + b"\n")
        except OSError:
            conn.close()
            raise ApiError(500, "QEMU guest agent is not running") from None
        return conn

    # --- QEMU guest agent ----------------------------------------------------------------

    def exec(self, guest: Guest, argv: list[str]) -> int:
        _agent_ready(guest, "guest-exec")
        if not argv:
            raise ApiError(500, "No command given")
        conn = self._qga(guest, {"op": "exec", "argv": argv})
        stream = conn.makefile("rb")
        answer = json.loads(stream.readline() or b"{}")
        if "pid" not in answer:
            conn.close()
            detail = answer.get("error", "no answer")
            raise ApiError(500, f"Agent error: Failed to execute child process: {detail}")
        run = _Run(conn)
        self.runs.setdefault(guest.vmid, {})[answer["pid"]] = run
        threading.Thread(target=_collect, args=(run, stream), daemon=True).start()
        return answer["pid"]

    def file_write(self, guest: Guest, path: str, content: bytes) -> None:
        _agent_ready(guest, "guest-file-open")
        conn = self._qga(guest, {"op": "file-write", "file": path, "content": _b64(content)})
        with conn, conn.makefile("rb") as stream:
            answer = json.loads(stream.readline() or b"{}")
        if not answer.get("ok"):
            raise ApiError(500, f"Agent error: {answer.get('error', 'no answer')}")

    def status(self, guest: Guest, pid: int) -> dict:
        _agent_ready(guest, "guest-exec-status")
        run = self.runs.get(guest.vmid, {}).get(pid)
        if run is None:
            raise ApiError(
                500,
                f"Agent error: Invalid parameter 'pid' (no such pid {pid})",
            )
        if not run.done.is_set():
            return {"exited": False}
        self.runs[guest.vmid].pop(pid, None)
        code = run.code
        data: dict = {"exited": True}
        if code is not None and code < 0:
            data["signal"] = -code
        else:
            data["exitcode"] = code
        for key, raw in (("out", run.out), ("err", run.err)):
            if raw:
                data[f"{key}-data"] = raw[:QGA_OUTPUT_LIMIT].decode("utf-8", "replace")
            if len(raw) > QGA_OUTPUT_LIMIT:
                data[f"{key}-truncated"] = True
        return data

    def close(self) -> None:
        for runs in self.runs.values():
            for run in runs.values():
                with contextlib.suppress(OSError):
                    run.conn.close()
        self.runs.clear()
        for vm in self.vms.values():
            _kill(vm.proc)
            vm.proc.wait()
            shutil.rmtree(vm.folder, ignore_errors=True)
        self.vms.clear()
        self._spawner.shutdown(wait=False)


def _agent_ready(guest: Guest, command: str) -> None:
    if guest.status != "running":
        raise ApiError(500, f"VM {guest.vmid} is not running")
    if guest.config.get("agent", "0").split(",")[0] not in ("1", "enabled=1"):
        raise ApiError(500, "No QEMU guest agent configured")
    if guest.qmpstatus != "running":
        raise ApiError(500, f"VM {guest.vmid} qmp command '{command}' failed - got timeout")


def _collect(run: _Run, stream) -> None:
    try:
        answer = json.loads(stream.readline() or b"{}")
    except (OSError, ValueError):
        answer = {}
    run.code = answer.get("code", -9)  # no answer: it went with its VM
    run.out = base64.b64decode(answer.get("out", ""))
    run.err = base64.b64decode(answer.get("err", ""))
    with contextlib.suppress(OSError):
        run.conn.close()
    run.done.set()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def bwrap_available() -> bool:
    return shutil.which("bwrap") is not None


def _runtime_of(cluster: Cluster) -> GuestRuntime:
    return cluster.runtime


def register() -> None:
    """Add the QEMU guest-agent endpoints to the simulator's handlers."""
    runtime_of = _runtime_of

    def agent_exec(req: Request, p: dict) -> dict:
        guest = _guest(req, p, QEMU)
        return {"pid": runtime_of(req.cluster).exec(guest, p["command"])}

    def agent_exec_status(req: Request, p: dict) -> dict:
        guest = _guest(req, p, QEMU)
        return runtime_of(req.cluster).status(guest, p["pid"])

    def network(req: Request, p: dict) -> dict:
        guest = _guest(req, p, QEMU)
        _agent_ready(guest, "network-get-interfaces")
        address = (
            f"127.{runtime_of(req.cluster).net}.{(guest.vmid >> 8) & 255}.{guest.vmid & 255 or 1}"
        )
        eth0 = [{"ip-address": address, "ip-address-type": "ipv4", "prefix": 8}]
        if guest.reported is not None:  # a guest lying about its address
            eth0 = [
                {"ip-address": a, "ip-address-type": "ipv6" if ":" in a else "ipv4", "prefix": 24}
                for a in guest.reported
            ]
        return {
            "result": [
                {
                    "name": "lo",
                    "ip-addresses": [
                        {"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}
                    ],
                },
                {
                    "name": "eth0",
                    "hardware-address": "bc:24:11:00:00:01",
                    "ip-addresses": eth0,
                },
            ]
        }

    def file_write(req: Request, p: dict) -> None:
        guest = _guest(req, p, QEMU)
        content = str(p["content"])
        # encode=1 (the default): PVE base64-encodes the text for the guest agent;
        # encode=0: the caller did.
        if p.get("encode", 1) in (0, False, "0", "false"):
            try:
                raw = base64.b64decode(content, validate=True)
            except ValueError:
                raise ApiError(500, "Agent error: Invalid base64 data") from None
        else:
            raw = content.encode()
        runtime_of(req.cluster).file_write(guest, str(p["file"]), raw)

    base = "/nodes/{node}/qemu/{vmid}/agent"
    HANDLERS[("POST", f"{base}/file-write")] = file_write
    HANDLERS[("POST", f"{base}/exec")] = agent_exec
    HANDLERS[("GET", f"{base}/exec-status")] = agent_exec_status
    HANDLERS[("GET", f"{base}/network-get-interfaces")] = network


register()
