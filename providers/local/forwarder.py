"""One shared forwarder for every exposed service of one ``LOCAL_SANDBOX_ROOT``.

Sandboxes have loopback-only networks. ``expose_http_service`` gives a service a port on
the host's loopback; this daemon listens there and, per connection, opens a socket inside
the sandbox's network namespace (``setns`` to it just for the ``socket()`` call) and
connects it to the service's port. It is one small asyncio process for all sandboxes,
started on demand, detached from the web and worker processes (it outlives them), and it
finds everything again from the sandboxes' state files when it restarts.

Traffic through it is activity: it touches the sandbox's ``activity`` file (at most once a
second), which the provider reports as ``Instance.last_activity``. With wake-on-HTTP set,
a connection to a paused or stopped sandbox resumes or starts it first.

Control: JSON lines over ``<root>/forwarder.sock`` (mode 0600): ``bind`` (sandbox, name,
host_port -> the port it listens on), ``sync`` (drop listeners no state file mentions),
``ping``, ``stop``.
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
from providers.local.state import Store, process_start_ticks, runtime_alive

log = logging.getLogger("providers.local.forwarder")

SOCKET_NAME = "forwarder.sock"
IDLE_EXIT_SECONDS = 300
BUFFER = 65536


# --- the client side, used by the provider


def request(root: Path, message: dict, config: dict[str, str], timeout: float = 10.0) -> dict:
    """Send one control message, starting the daemon when it is not running."""
    path = root / SOCKET_NAME
    for attempt in range(3):
        try:
            return _send(path, message, timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            if attempt == 2:
                break
            _spawn(root, config)
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
    answer = json.loads(reply or b"{}")
    if "error" in answer:
        raise Unavailable(f"port forwarder: {answer['error']}")
    return answer


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


class Forwarder:
    def __init__(self, config: dict[str, str]) -> None:
        from providers.local.provider import LocalProvider

        self.provider = LocalProvider.from_config(config)
        self.store: Store = self.provider.store
        self.root = self.store.root
        self.listeners: dict[tuple[str, str], asyncio.Server] = {}
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
        for server in self.listeners.values():
            server.close()
        self.flush_activity()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def idle_for(self, seconds: float) -> bool:
        if self.listeners:
            self.idle_since = time.monotonic()
            return False
        return time.monotonic() - self.idle_since > seconds

    async def restore(self) -> None:
        """Listen again on every port the state files record (after a restart)."""
        moved = []
        for sandbox_id in self.store.ids():
            state = self.store.load(sandbox_id)
            for name, entry in (state.services if state else {}).items():
                with contextlib.suppress(OSError):
                    port = await self.bind(sandbox_id, name, entry.host_port)
                    if port != entry.host_port:  # someone else took the old port
                        moved.append((sandbox_id, name, port))
        if moved:
            await asyncio.to_thread(self.record_ports, moved)

    def record_ports(self, moved: list[tuple[str, str, int]]) -> None:
        for sandbox_id, name, port in moved:
            with (
                contextlib.suppress(ProviderError, OSError),
                self.provider._locked_state(sandbox_id) as state,
            ):
                if name in state.services:
                    state.services[name].host_port = port
                    self.store.save(state)

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            message = json.loads(await reader.readline())
            op = message.get("op")
            if op == "bind":
                port = await self.bind(message["sandbox"], message["name"], message["host_port"])
                reply = {"host_port": port}
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
        writer.write(json.dumps(reply).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def bind(self, sandbox_id: str, name: str, host_port: int) -> int:
        key = (sandbox_id, name)
        server = self.listeners.get(key)
        if server is not None:
            return server.sockets[0].getsockname()[1]

        async def handle(reader, writer) -> None:
            await self.forward(sandbox_id, name, reader, writer)

        try:
            server = await asyncio.start_server(handle, "127.0.0.1", host_port)
        except OSError:
            if not host_port:
                raise
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.listeners[key] = server
        return server.sockets[0].getsockname()[1]

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
        paused = runtime_alive(state.runtime) and self.provider.cgroups.freeze_requested(sandbox_id)
        if not runtime_alive(state.runtime) or paused:
            if not state.wake_on_http:
                what = "paused" if paused else "stopped"
                raise _Refused(503, "Service Unavailable", f"sandbox {sandbox_id} is {what}")
            await asyncio.to_thread(self.wake, sandbox_id, paused)
            state = self.store.load(sandbox_id)
            if state is None or state.runtime is None:
                raise _Refused(503, "Service Unavailable", f"sandbox {sandbox_id} did not wake")
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

    def wake(self, sandbox_id: str, paused: bool) -> None:
        instance = self.provider.get(sandbox_id)
        if paused:
            instance.resume()
        else:
            instance.start()

    def socket_in(self, pid: int, start_ticks: int) -> socket.socket:
        """A TCP socket created inside the network namespace of process ``pid``."""
        netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
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
