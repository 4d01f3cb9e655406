"""What runs *inside* the simulated guests, for real.

* LXC: while a CT runs, the real exec agent (``providers/pve/agent.py``) serves on the
  CT's own loopback address (``127.X.Y.Z``, reported by ``/lxc/{vmid}/interfaces``) on
  the agent port, with the secret the provider put in the CT's ``env`` and the CT's disk
  directory as its working directory. The provider reaches it over real TCP.
* QEMU: ``agent/exec`` starts the command under bubblewrap with the VM's disk directory
  mounted at the guest's working directory (``/root/work`` by default) and the host's
  root read-only, so the provider's own wrapper (``cd`` + ``timeout``) runs unchanged;
  ``agent/exec-status`` reports it the way qemu-guest-agent does through PVE.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import threading
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


@dataclass
class _Run:
    proc: subprocess.Popen
    out: bytes = b""
    err: bytes = b""
    done: threading.Event = field(default_factory=threading.Event)


class GuestRuntime:
    """Starts and stops the in-guest side of every guest of one simulated cluster."""

    def __init__(self, cluster: Cluster, *, agent_port: int, guest_workdir: str) -> None:
        self.cluster = cluster
        self.agent_port = agent_port
        self.guest_workdir = guest_workdir
        #: The second octet of every CT address, random per simulator (several may run).
        self.net = 64 + secrets.randbelow(160)
        self.runs: dict[int, dict[int, _Run]] = {}
        cluster.runtime = self
        cluster.start_hooks.append(self.started)
        cluster.stop_hooks.append(self.stopped)

    # --- LXC ---------------------------------------------------------------------------

    def started(self, guest: Guest) -> None:
        if guest.kind != LXC:
            return
        guest.ip = f"127.{self.net}.{(guest.vmid >> 8) & 255}.{guest.vmid & 255 or 1}"
        secret = _secret(guest)
        if secret is None:
            return  # like a real template's agent: no secret, no service
        server = AgentServer(guest.ip, self.agent_port, secret=secret, workdir=guest.disk)
        guest.agent = server.start(poll_interval=0.02)

    def stopped(self, guest: Guest) -> None:
        if guest.agent is not None:
            guest.agent.close()
            guest.agent = None
        guest.ip = ""
        for run in self.runs.pop(guest.vmid, {}).values():
            _kill(run.proc)

    # --- QEMU guest agent ----------------------------------------------------------------

    def exec(self, guest: Guest, argv: list[str]) -> int:
        _agent_ready(guest, "guest-exec")
        if not argv:
            raise ApiError(500, "No command given")
        wrapped = [
            "bwrap",
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--tmpfs", "/tmp",
            "--tmpfs", str(Path(self.guest_workdir).parent),
            "--bind", str(guest.disk), self.guest_workdir,
            "--unshare-pid",
            "--die-with-parent",
            "--chdir", "/",
            "--",
            *argv,
        ]  # fmt: skip
        try:
            proc = subprocess.Popen(
                wrapped,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise ApiError(500, f"Agent error: Failed to execute child process: {exc}") from None
        run = _Run(proc)
        self.runs.setdefault(guest.vmid, {})[proc.pid] = run
        threading.Thread(target=_collect, args=(run,), daemon=True).start()
        return proc.pid

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
        code = run.proc.returncode
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
                _kill(run.proc)
        self.runs.clear()


def _agent_ready(guest: Guest, command: str) -> None:
    if guest.status != "running":
        raise ApiError(500, f"VM {guest.vmid} is not running")
    if guest.config.get("agent", "0").split(",")[0] not in ("1", "enabled=1"):
        raise ApiError(500, "No QEMU guest agent configured")
    if guest.qmpstatus != "running":
        raise ApiError(500, f"VM {guest.vmid} qmp command '{command}' failed - got timeout")


def _collect(run: _Run) -> None:
    run.out, run.err = run.proc.communicate()
    run.done.set()


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

    base = "/nodes/{node}/qemu/{vmid}/agent"
    HANDLERS[("POST", f"{base}/exec")] = agent_exec
    HANDLERS[("GET", f"{base}/exec-status")] = agent_exec_status
    HANDLERS[("GET", f"{base}/network-get-interfaces")] = network


register()
