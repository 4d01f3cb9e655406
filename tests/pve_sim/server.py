"""The PVE API simulator: real HTTPS on loopback, requests validated against the schema.

``PveSimulator`` owns a ``Cluster`` (state), a ``GuestRuntime`` (what runs inside the
guests), a TLS listener on 127.0.0.1 (port 0 = a free one; a self-signed certificate made
with ``openssl`` at start, whose file clients may trust), a log of every call and the
fault injection rules.

Faults (``add_fault``) match a method and a path (the schema template such as
``/nodes/{node}/lxc/{vmid}/clone`` or a concrete path) and fire after ``skip`` matching
calls, ``times`` times (None: for good). Kinds:

``http500``     answer HTTP 500 without doing anything
``timeout``     hold the connection past the client's timeout, then drop it, doing nothing
``drop``        close the connection without an answer, doing nothing
``drop_after``  do the work, then close the connection without an answer (lost response)
``locked``      "CT is locked (backup)" / "VM is locked (backup)"
``lockfile``    "can't lock file '...' - got timeout"
``exists``      someone made a guest with the requested VMID first (clone: ``newid``)
``task_fail``   do the work, but the task it starts ends with an error exit status
``slow``        the task it starts takes ``delay`` seconds

With ``sticky=True`` a fault keeps failing that exact call (same path and parameters)
for good once it fired, so retries of the step cannot get past it.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from providers.pve.settings import LOOPBACK_GUESTS_KEY
from tests.pve_sim import guests as guest_runtime
from tests.pve_sim.handlers import HANDLERS, Request
from tests.pve_sim.schema import ApiError, Schema
from tests.pve_sim.state import LXC, QEMU, Cluster, Guest

HTTP_500, TIMEOUT, DROP, DROP_AFTER = "http500", "timeout", "drop", "drop_after"
LOCKED, LOCK_FILE, EXISTS, TASK_FAIL, SLOW = "locked", "lockfile", "exists", "task_fail", "slow"
FAULT_KINDS = (HTTP_500, TIMEOUT, DROP, DROP_AFTER, LOCKED, LOCK_FILE, EXISTS, TASK_FAIL, SLOW)

_schema_lock = threading.Lock()
_schema: Schema | None = None


def shared_schema() -> Schema:
    """Parsing the 1.4 MB schema once per process is enough."""
    global _schema
    with _schema_lock:
        if _schema is None:
            _schema = Schema()
        return _schema


@dataclass
class Call:
    method: str
    template: str
    path: str
    params: dict[str, Any]
    at: float = field(default_factory=time.time)

    @property
    def step(self) -> str:
        return f"{self.method} {self.template}"

    @property
    def task_type(self) -> str:
        """For task status calls: the type in the UPID (vzclone, qmstart ...)."""
        upid = str(self.params.get("upid", ""))
        parts = upid.split(":")
        return parts[5] if len(parts) > 6 else ""

    @property
    def identity(self) -> tuple:
        return (self.method, self.path, tuple(sorted((k, repr(v)) for k, v in self.params.items())))


@dataclass
class Fault:
    method: str
    path: str
    kind: str
    skip: int = 0
    times: int | None = 1
    message: str | None = None
    delay: float | None = None
    #: Once fired, hit every later call identical to the first one hit (same path and
    #: parameters: its retries, and the service layer's retries of the operation), and no
    #: other call: the step is broken, the rest of the cluster is not.
    sticky: bool = False
    #: Only calls this also accepts count (e.g. polls of one kind of task).
    where: Callable[[Call], bool] | None = None
    seen: int = 0
    fired: int = 0
    identity: tuple | None = None

    def matches(self, call: Call) -> bool:
        if self.identity is not None:
            return call.identity == self.identity
        if call.method != self.method or self.path not in (call.template, call.path):
            return False
        return self.where is None or self.where(call)

    def take(self, call: Call) -> bool:
        if self.identity is None:
            self.seen += 1
            if self.seen <= self.skip:
                return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        if self.sticky:
            self.identity = call.identity
        return True


class _Dropped(Exception):
    """Close the connection without answering."""


class PveSimulator:
    def __init__(
        self,
        root: Path | None = None,
        *,
        task_delay: float = 0.02,
        token_id: str = "root@pam!sandboxes",  # noqa: S107 - a token *id*, not a secret
        token_secret: str | None = None,
        guest_workdir: str = "/root/work",
        hang_seconds: float = 5.0,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="pve-sim-") if root is None else None
        self.root = Path(self._tmp.name) if self._tmp else root
        self.cluster = Cluster(self.root / "disks", task_delay=task_delay)
        self.token_id = token_id
        self.token_secret = token_secret or secrets.token_hex(16)
        self.hang_seconds = hang_seconds
        self.schema = shared_schema()
        self.runtime = guest_runtime.GuestRuntime(
            self.cluster, agent_port=_free_port(), guest_workdir=guest_workdir
        )
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self.cert_file, self.key_file = _make_certificate(self.root)
        self.httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- set-up ------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """The value of PVE_API_TOKEN that this simulator accepts."""
        return f"{self.token_id}={self.token_secret}"

    @property
    def url(self) -> str:
        assert self.httpd is not None, "start() first"
        host, port = self.httpd.server_address[:2]
        return f"https://{host}:{port}"

    @property
    def agent_port(self) -> int:
        return self.runtime.agent_port

    def default_cluster(self, *, lxc_template: int = 9000, vm_template: int = 9100) -> None:
        """Three nodes (one small), local LVM-thin plus shared Ceph, one template of each kind."""
        c = self.cluster
        c.add_node("pve1")
        c.add_node("pve2")
        c.add_node("pve3", maxmem=8 * 1024**3, maxcpu=4)
        c.add_storage("local-lvm")
        c.add_storage("ceph", plugintype="rbd", shared=True)
        files = {"README": "base image\n"}
        c.add_template(lxc_template, LXC, "pve1", files=files, name="debian-13-sandbox")
        c.add_template(vm_template, QEMU, "pve2", files=files, name="debian-13-sandbox-vm")

    def config(self, **extra: str) -> dict[str, str]:
        """Provider settings pointing at this simulator (TLS verified against its cert)."""
        return {
            "PVE_API_URL": self.url,
            "PVE_API_TOKEN": self.token,
            "PVE_VERIFY_TLS": self.cert_file,
            "PVE_LXC_AGENT_PORT": str(self.agent_port),
            "PVE_GUEST_WORKDIR": self.runtime.guest_workdir,
            # Its guests live on this host's loopback addresses (127.X.Y.Z).
            LOOPBACK_GUESTS_KEY: "1",
            **extra,
        }

    def start(self, port: int = 0) -> PveSimulator:
        handler = type("Handler", (_Handler,), {"sim": self})
        self.httpd = _TlsServer(("127.0.0.1", port), handler, self.cert_file, self.key_file)
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        self.runtime.close()
        self.cluster.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> PveSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- faults and the call log --------------------------------------------------------

    def add_fault(self, method: str, path: str, kind: str, **kwargs: Any) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
        fault = Fault(method, path, kind, **kwargs)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()

    def steps(self) -> list[str]:
        with self._lock:
            return [c.step for c in self.calls]

    def _fault_for(self, call: Call) -> Fault | None:
        with self._lock:
            self.calls.append(call)
            for fault in self.faults:
                if fault.matches(call) and fault.take(call):
                    return fault
        return None

    # --- what tests look at -------------------------------------------------------------

    def guests(self, *, templates: bool = False) -> list[Guest]:
        self.cluster.tick()
        with self.cluster.lock:
            return [g for g in self.cluster.guests.values() if g.is_template == templates]

    # --- one request ----------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, values: dict[str, list[str]]) -> tuple[int, Any]:
        """Validate, log, inject faults, dispatch. Returns (status, data) or raises."""
        self.cluster.tick()
        path = unquote(raw_path.removeprefix("/api2/json"))
        matched = self.schema.match(method, path, values)
        call = Call(method, matched.route.template, path, matched.params)
        fault = self._fault_for(call)
        req = Request(self.cluster, user=self.token_id)
        after_drop = False
        if fault is not None:
            after_drop = self._apply(fault, call, req)
        handler = HANDLERS.get((method, matched.route.template))
        if handler is None:
            raise ApiError(501, f"Method '{method} {path}' not implemented by the simulator")
        with self.cluster.lock:
            data = handler(req, dict(matched.params))
        if after_drop:
            raise _Dropped()
        return 200, data

    def _apply(self, fault: Fault, call: Call, req: Request) -> bool:
        label = "CT" if "/lxc/" in call.path else "VM"
        vmid = call.params.get("vmid", 0)
        if fault.kind == HTTP_500:
            raise ApiError(500, fault.message or "simulated internal server error")
        if fault.kind == TIMEOUT:
            time.sleep(self.hang_seconds)
            raise _Dropped()
        if fault.kind == DROP:
            raise _Dropped()
        if fault.kind == LOCKED:
            raise ApiError(500, f"{label} is locked (backup)")
        if fault.kind == LOCK_FILE:
            lock = (
                f"/run/lock/lxc/pve-config-{vmid}.lock"
                if label == "CT"
                else f"/var/lock/qemu-server/lock-{vmid}.conf"
            )
            raise ApiError(500, f"can't lock file '{lock}' - got timeout")
        if fault.kind == EXISTS:
            newid = call.params.get("newid", vmid)
            self._foreign_guest(newid, LXC if label == "CT" else QEMU)
            return False  # the handler itself now answers "already exists"
        if fault.kind == TASK_FAIL:
            req.task_fail = fault.message or "simulated task failure: storage error (exit code 5)"
        if fault.kind == SLOW:
            req.task_delay = fault.delay if fault.delay is not None else 2.0
        return fault.kind == DROP_AFTER

    def _foreign_guest(self, vmid: int, kind: str) -> None:
        """Someone took this VMID in PVE's own UI (not one of ours: no marker)."""
        c = self.cluster
        with c.lock:
            if vmid in c.guests:
                return
            node = next(iter(c.nodes))
            config = {"memory": "256", "cores": "1", "description": "made by hand"}
            config["hostname" if kind == LXC else "name"] = f"manual-{vmid}"
            guest = Guest(vmid, kind, node, config, c.new_disk(), owner="foreign")
            guest.set_volume(f"local-lvm:vm-{vmid}-disk-0", 2)
            c.guests[vmid] = guest


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, handler, cert: str, key: str) -> None:
        super().__init__(address, handler)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)

    def get_request(self):
        sock, address = super().get_request()
        # The handshake happens in the handler's thread, not in the accept loop.
        return self.context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        ), address


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pve-api-daemon/3.0"
    sim: PveSimulator

    def log_message(self, format: str, *args: object) -> None:
        return

    def setup(self) -> None:
        super().setup()
        # Like pveproxy, answer without waiting for delayed ACKs (Nagle would add 40 ms).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.connection.do_handshake()
        except (ssl.SSLError, OSError):
            self.close_connection = True

    def _values(self) -> dict[str, list[str]]:
        parts = urlsplit(self.path)
        values = parse_qs(parts.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = self.rfile.read(length).decode()
            if "json" in (self.headers.get("Content-Type") or ""):
                for key, value in json.loads(body or "{}").items():
                    items = value if isinstance(value, list) else [value]
                    values.setdefault(key, []).extend(_plain(v) for v in items)
            else:
                for key, items in parse_qs(body, keep_blank_values=True).items():
                    values.setdefault(key, []).extend(items)
        return values

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        expected = f"PVEAPIToken={self.sim.token}"
        return secrets.compare_digest(header, expected)

    def _dispatch(self, method: str) -> None:
        try:
            values = self._values()
            if not self._authorized():
                raise ApiError(401, "authentication failure")
            status, data = self.sim.handle(method, urlsplit(self.path).path, values)
            self._send(status, {"data": data})
        except _Dropped:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        except ApiError as exc:
            body: dict[str, Any] = {"data": None, "message": exc.message + "\n"}
            if exc.errors:
                body["errors"] = exc.errors
            self._send(exc.status, body, reason=exc.message)

    def _send(self, status: int, payload: dict, reason: str | None = None) -> None:
        body = json.dumps(payload).encode()
        line = (
            re.sub(r"[\r\n]+", " ", reason or "OK").encode("latin-1", "replace").decode("latin-1")
        )
        self.send_response(status, line[:500])
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=0")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_certificate(root: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (clients can trust exactly this file)."""
    root.mkdir(parents=True, exist_ok=True)
    cert, key = root / "pve-sim.crt", root / "pve-sim.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)
