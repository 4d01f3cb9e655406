"""One shared forwarder for every exposed service of one ``LOCAL_SANDBOX_ROOT``.

Sandboxes have loopback-only networks. ``expose_http_service`` gives a service a unix
socket, ``<root>/sandboxes/<id>/services/<name>.sock`` (mode 0600 in a 0700 directory
under the 0700 ``sandboxes`` directory: only the control plane's user, root, can connect;
no other local user can, and nothing listens on a TCP port). This daemon listens there
and, per connection, opens a socket inside the sandbox's network namespace (``setns`` to
it just for the ``socket()`` call) and connects it to the service's port. It is one small
asyncio process for all sandboxes, started on demand, detached from the web and worker
processes (it outlives them), and it finds everything again from the sandboxes' state
files when it restarts (socket files are made anew; sandboxes never depend on it).

Traffic through it is activity: it touches the sandbox's ``activity`` file (at most once a
second), which the provider reports as ``Instance.last_activity``. It never wakes a
sandbox: a connection for a paused or stopped one is answered 503. Waking on HTTP is the
control plane's service proxy's job, through its lifecycle service, so the database and
the audit log always say what the sandbox is doing.

Control: JSON lines over ``<root>/forwarder.sock`` (mode 0600): ``bind`` (sandbox, name
-> the socket it listens on), ``sync`` (drop listeners no state file mentions), ``ping``,
``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from providers.errors import ProviderError, Unavailable
from providers.local import sockets, syscalls
from providers.local.cgroups import Cgroups, Layout
from providers.local.config import LocalConfig
from providers.local.state import SANDBOX_ID_RE, Store, process_start_ticks, runtime_alive

log = logging.getLogger("providers.local.forwarder")

SOCKET_NAME = "forwarder.sock"
#: 2: services on unix sockets, no waking (1, unnamed: host loopback ports).
PROTOCOL = 2
IDLE_EXIT_SECONDS = 300
BUFFER = 65536


# --- the client side, used by the provider


def request(root: Path, message: dict, config: dict[str, str], timeout: float = 10.0) -> dict:
    """Send one control message, starting the daemon when it is not running.

    A daemon from before an upgrade (it does not answer with this ``PROTOCOL``: the one
    that listened on host loopback ports) is asked to stop and replaced.
    """
    path = root / SOCKET_NAME
    for attempt in range(3):
        try:
            answer = _send(path, {**message, "protocol": PROTOCOL}, timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            if attempt == 2:
                break
            _spawn(root, config)
            continue
        if answer.get("protocol") == PROTOCOL:
            if "error" in answer:
                raise Unavailable(f"port forwarder: {answer['error']}")
            return answer
        log.warning("replacing a forwarder of another version under %s", root)
        stop(root)
        deadline = time.monotonic() + 10
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    raise Unavailable(f"the local port forwarder did not start; see {root / 'forwarder.log'}")


def stop(root: Path) -> None:
    """Ask a running forwarder to exit (tests, uninstall); nothing when none runs."""
    with contextlib.suppress(OSError, ValueError):
        _send(root / SOCKET_NAME, {"op": "stop"}, 5.0)


def _send(path: Path, message: dict, timeout: float) -> dict:
    with sockets.connect(path, timeout) as client:
        client.sendall(json.dumps(message).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = client.recv(4096)
            if not chunk:
                break
            reply += chunk
    return json.loads(reply or b"{}")


def _spawn(root: Path, config: dict[str, str]) -> None:
    """Start the daemon (it detaches itself) and wait until it answers."""
    package_parent = Path(__file__).resolve().parents[2]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(package_parent),
        "LANG": "C.UTF-8",
    }
    python = sys.executable
    if not os.path.basename(python).startswith("python"):  # embedded (uWSGI...): find one
        python = shutil.which("python3") or python
    with open(root / "forwarder.log", "ab") as output:
        subprocess.run(
            [python, "-m", "providers.local.forwarder", json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env=env,
            cwd=str(root),
            start_new_session=True,
            timeout=30,
            check=False,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            _send(root / SOCKET_NAME, {"op": "ping"}, 2.0)
            return
        time.sleep(0.02)


# --- the daemon


class _Listener:
    """One service's unix socket server, and the inode of the socket file it made (so a
    file some later bind put at the same path is never removed by mistake)."""

    def __init__(self, server: asyncio.Server, path: Path) -> None:
        self.server = server
        self.path = path
        self.inode = path.stat().st_ino

    def current(self) -> bool:
        try:
            return self.path.stat().st_ino == self.inode
        except OSError:
            return False

    def close(self) -> None:
        self.server.close()
        if self.current():
            with contextlib.suppress(OSError):
                self.path.unlink()


class Forwarder:
    def __init__(self, config: dict[str, str]) -> None:
        # Only what it needs, the sandboxes' state and their cgroups (paused or not):
        # never the provider, which imports this module to start the daemon.
        settings = LocalConfig.from_mapping(config)
        self.store = Store(settings.root)
        self.cgroups = Cgroups(Layout.discover(), settings.cgroup_parent, settings.totals())
        self.root = self.store.root
        self.listeners: dict[tuple[str, str], _Listener] = {}
        self.activity: dict[str, float] = {}
        self.host_netns = os.open("/proc/self/ns/net", os.O_RDONLY)
        self.idle_since = time.monotonic()
        self.stopping = False

    async def serve(self) -> None:
        path = self.root / SOCKET_NAME
        listening = sockets.listen(path)
        listening.setblocking(False)
        control = await asyncio.start_unix_server(self.control, sock=listening)
        await self.restore()
        async with control:
            while not self.stopping and not self.idle_for(IDLE_EXIT_SECONDS):
                await asyncio.sleep(0.2)
                self.flush_activity()
        for listener in self.listeners.values():
            listener.close()
        self.flush_activity()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def idle_for(self, seconds: float) -> bool:
        if self.listeners:
            self.idle_since = time.monotonic()
            return False
        return time.monotonic() - self.idle_since > seconds

    async def restore(self) -> None:
        """Listen again on every service the state files record (after a restart)."""
        legacy = []
        for sandbox_id in self.store.ids():
            state = self.store.load(sandbox_id)
            for name in state.services if state else {}:
                with contextlib.suppress(OSError, ValueError):
                    await self.bind(sandbox_id, name)
            with contextlib.suppress(OSError):
                if state and '"host_port"' in self.store.state_path(sandbox_id).read_text():
                    legacy.append(sandbox_id)
        if legacy:
            await asyncio.to_thread(self.drop_host_ports, legacy)

    def drop_host_ports(self, sandbox_ids: list[str]) -> None:
        """Rewrite state files from before unix sockets (their ``host_port`` goes)."""
        for sandbox_id in sandbox_ids:
            with (
                contextlib.suppress(ProviderError, OSError),
                self.store.locked_state(sandbox_id) as state,
            ):
                self.store.save(state)

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            message = json.loads(await reader.readline())
            op = message.get("op")
            if op == "bind":
                path = await self.bind(message["sandbox"], message["name"])
                reply = {"socket": str(path)}
            elif op == "sync":
                self.sync()
                reply = {"ok": True}
            elif op == "ping":
                reply = {"ok": True}
            elif op == "stop":
                self.stopping = True
                reply = {"ok": True}
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # a bad request must not take the daemon down
            reply = {"error": str(exc)}
        reply["protocol"] = PROTOCOL
        writer.write(json.dumps(reply).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def bind(self, sandbox_id: str, name: str) -> Path:
        if not SANDBOX_ID_RE.fullmatch(sandbox_id) or not SANDBOX_ID_RE.fullmatch(name):
            raise ValueError(f"bad sandbox or service name: {sandbox_id!r} {name!r}")
        key = (sandbox_id, name)
        listener = self.listeners.get(key)
        if listener is not None:
            if listener.current():
                return listener.path
            self.listeners.pop(key).close()  # its file is gone (the sandbox was deleted)
        path = self.store.service_socket(sandbox_id, name)
        if not path.parent.parent.is_dir():
            raise ValueError(f"no sandbox {sandbox_id}")
        with contextlib.suppress(FileExistsError):
            path.parent.mkdir(mode=0o700)
        if path.parent.stat().st_mode & 0o077:
            os.chmod(path.parent, 0o700)

        async def handle(reader, writer) -> None:
            await self.forward(sandbox_id, name, reader, writer)

        listening = sockets.listen(path)
        listening.setblocking(False)
        server = await asyncio.start_unix_server(handle, sock=listening)
        self.listeners[key] = _Listener(server, path)
        return path

    def sync(self) -> None:
        wanted = set()
        for sandbox_id in self.store.ids():
            state = self.store.load(sandbox_id)
            wanted.update((sandbox_id, name) for name in (state.services if state else {}))
        for key in [k for k in self.listeners if k not in wanted]:
            self.listeners.pop(key).close()

    def flush_activity(self) -> None:
        pending, self.activity = self.activity, {}
        for sandbox_id in pending:
            self.store.touch_activity(sandbox_id)

    async def forward(self, sandbox_id: str, name: str, reader, writer) -> None:
        try:
            upstream = await self.open_upstream(sandbox_id, name)
        except _Refused as refused:
            body = f"{refused}\n".encode()
            writer.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s"
                % (refused.status, refused.reason.encode(), len(body), body)
            )
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        self.activity[sandbox_id] = time.time()
        up_reader, up_writer = await asyncio.open_connection(sock=upstream)
        writers = (writer, up_writer)
        try:
            await asyncio.gather(
                self.pipe(reader, up_writer, sandbox_id, writers),
                self.pipe(up_reader, writer, sandbox_id, writers),
            )
        finally:
            for each in writers:
                each.close()

    async def pipe(self, reader, writer, sandbox_id: str, writers) -> None:
        """Copy one direction; half-close at its end; on an error end both directions."""
        try:
            while chunk := await reader.read(BUFFER):
                self.activity[sandbox_id] = time.time()
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:  # includes ConnectionError: a reset on either side
            for each in writers:
                each.close()

    async def open_upstream(self, sandbox_id: str, name: str) -> socket.socket:
        state = self.store.load(sandbox_id)
        entry = state.services.get(name) if state else None
        if state is None or entry is None:
            raise _Refused(404, "Not Found", f"no service {name} on sandbox {sandbox_id}")
        # Never woken from here (wake-on-HTTP is the control plane's, see the docstring).
        if not runtime_alive(state.runtime):
            raise _Refused(503, "Service Unavailable", f"sandbox {sandbox_id} is stopped")
        if self.cgroups.freeze_requested(sandbox_id):
            raise _Refused(503, "Service Unavailable", f"sandbox {sandbox_id} is paused")
        runtime = state.runtime
        sock = self.socket_in(runtime.pid, runtime.start_ticks)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", entry.port)), 10
            )
        except (OSError, TimeoutError):
            sock.close()
            raise _Refused(
                502, "Bad Gateway", f"nothing answers on port {entry.port} in {sandbox_id}"
            ) from None
        return sock

    def socket_in(self, pid: int, start_ticks: int) -> socket.socket:
        """A TCP socket created inside the network namespace of process ``pid``."""
        try:
            netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError:
            raise _Refused(503, "Service Unavailable", "the sandbox stopped") from None
        try:
            if process_start_ticks(pid) != start_ticks:
                raise _Refused(503, "Service Unavailable", "the sandbox stopped")
            # setns is per thread; nothing else runs on this thread until we switch back.
            syscalls.setns(netns, syscalls.CLONE_NEWNET)
            try:
                return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            finally:
                syscalls.setns(self.host_netns, syscalls.CLONE_NEWNET)
        finally:
            os.close(netns)


class _Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    root = Path(config["LOCAL_SANDBOX_ROOT"])
    if os.fork():
        os._exit(0)  # the caller waits for this parent; the daemon is reparented
    os.setsid()
    lock = os.open(root / "forwarder.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + 5
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            # Another forwarder serves this root (or is just exiting: then wait for it).
            if time.monotonic() > deadline:
                return 0
            time.sleep(0.05)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(Forwarder(config).serve())
    except ProviderError as exc:
        log.error("forwarder stopped: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
