"""Terminal sessions in a Docker sandbox: an exec with a TTY, attached over a hijacked
connection to the daemon.

Docker allocates the pseudo-terminal inside the container (runc opens it in the
container's ``/dev/pts`` and makes it the process's controlling terminal), so the session
has exactly the container's boundary; the control plane only holds a connection to the
daemon carrying the terminal's bytes.

The start request is sent by hand on a socket of our own, not through the SDK's
``exec_start(socket=True)``: the SDK parses the response headers through a buffered reader
and hands back the raw socket, so output that arrived with the headers (a fast prompt)
would be lost.

Docker does not kill an exec'd process when its client goes away. Each session's process
therefore carries a random token in its environment (``SBX_TERMINAL``), and ``close`` runs
a second exec that kills every process bearing it and every process of their terminal
sessions (a shell's jobs), until none is left.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import select
import socket
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from providers.base import TerminalSession, terminal_argv, terminal_env, terminal_size
from providers.docker_provider.base_image import WORKDIR
from providers.docker_provider.errors import docker_call
from providers.docker_provider.exec_status import ExecStatus
from providers.errors import Conflict, ProviderError, Unavailable
from providers.terminal_marks import MARKER_VARIABLE

if TYPE_CHECKING:
    from providers.docker_provider.engine import DockerEngine

_CHUNK = 65536


def open_session(
    engine: DockerEngine,
    container_id: str,
    command: str | Sequence[str] | None,
    cols: int,
    rows: int,
    env: Mapping[str, str] | None,
) -> DockerTerminal:
    argv = terminal_argv(command)
    cols, rows = terminal_size(cols, rows)
    token = secrets.token_hex(16)
    environment = {**terminal_env(env), MARKER_VARIABLE: token}
    api = engine.client.api
    short = container_id[:12]
    with docker_call(f"open a terminal in container {short}", ref=container_id):
        exec_id = api.exec_create(
            container_id,
            argv,
            stdin=True,
            tty=True,
            environment=environment,
            workdir=WORKDIR,
        )["Id"]
        body = json.dumps({"Detach": False, "Tty": True, "ConsoleSize": [rows, cols]}).encode()
        path = f"/v{api.api_version}/exec/{exec_id}/start"
        conn, early = _hijack(engine.host, path, body, engine.timeout)
    session = DockerTerminal(engine, container_id, exec_id, token, conn, early)
    try:
        # Daemons before API 1.42 ignore ConsoleSize: set the size once the process runs.
        session.resize(cols, rows)
    except BaseException:
        session.close()
        raise
    return session


def _connect(host: str, timeout: float) -> socket.socket:
    parts = urlsplit(host)
    if parts.scheme == "unix":
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        conn.settimeout(timeout)
        try:
            conn.connect(parts.path)
        except BaseException:
            conn.close()
            raise
        return conn
    if parts.scheme in ("tcp", "http"):
        return socket.create_connection((parts.hostname, parts.port or 2375), timeout=timeout)
    raise Unavailable(f"terminals need a unix:// or tcp:// DOCKER_HOST, not {parts.scheme}://")


def _hijack(host: str, path: str, body: bytes, timeout: float) -> tuple[socket.socket, bytes]:
    """POST ``path`` asking to upgrade the connection; return it and any bytes that came
    after the response's headers (already the terminal's output)."""
    conn = _connect(host, timeout)
    try:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
            f"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = conn.recv(4096)
            if not chunk or len(received) > 65536:
                raise ConnectionError("the daemon ended the connection")
            received += chunk
        head, early = received.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] not in (b"101", b"200"):
            raise Conflict(f"Docker refused the terminal: {head[:300].decode(errors='replace')}")
        conn.settimeout(None)
        return conn, early
    except BaseException:
        conn.close()
        raise


class DockerTerminal(ExecStatus, TerminalSession):
    _still_running = "the terminal's process is still running"

    def __init__(
        self,
        engine: DockerEngine,
        container_id: str,
        exec_id: str,
        token: str,
        conn: socket.socket,
        early: bytes = b"",
    ) -> None:
        self._engine = engine
        self._container_id = container_id
        self._exec_id = exec_id
        self._token = token
        self._conn = conn
        self._pending = early
        self._ended = False
        self._closed = False
        self._exit_code: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<DockerTerminal {self._container_id[:12]} exec={self._exec_id[:12]}>"

    def _what(self, action: str) -> str:
        return f"{action} the terminal in container {self._container_id[:12]}"

    def read(self, timeout: float | None = None) -> bytes:
        if self._pending:
            chunk, self._pending = self._pending, b""
            return chunk
        if self._closed or self._ended:
            return b""
        ready, _, _ = select.select([self._conn], [], [], timeout)
        if not ready:
            raise TimeoutError("no terminal output")
        try:
            chunk = self._conn.recv(_CHUNK)
        except OSError:
            chunk = b""
        if not chunk:
            self._ended = True
        return chunk

    def write(self, data: bytes) -> None:
        if self._closed:
            raise Conflict("the terminal session is closed")
        try:
            self._conn.sendall(bytes(data))
        except OSError as exc:
            raise Conflict(f"the terminal is gone: {exc}") from None

    def resize(self, cols: int, rows: int) -> None:
        cols, rows = terminal_size(cols, rows)
        if self._closed:
            raise Conflict("the terminal session is closed")
        try:
            with docker_call(self._what("resize"), ref=self._container_id):
                self._engine.client.api.exec_resize(self._exec_id, height=rows, width=cols)
        except ProviderError:
            # The daemon refuses to resize a process that already ended; there is nothing
            # left to resize then (local terminals accept it, so neither complains).
            if self.exit_code is None:
                raise

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._kill_marked()
        finally:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)
            self._conn.close()
        self._settle_killed()
