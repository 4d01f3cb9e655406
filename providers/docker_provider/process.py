"""Streamed processes in a Docker sandbox (``Instance.open_process``): an exec without a
TTY, attached over a hijacked connection to the daemon (as terminals are, terminal.py).

Without a TTY the daemon multiplexes stdout and stderr on the connection in frames (an
8-byte header: the stream, three zero bytes, the length big-endian); the input is the
connection's other direction, and half-closing it ends the process's stdin. As for
terminals, Docker does not kill an exec'd process when its client goes away: the process
carries a random token (``SBX_TERMINAL``) and ``close`` kills what bears it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from providers.base import ProcessSession, as_argv, checked_env
from providers.docker_provider.base_image import WORKDIR
from providers.docker_provider.errors import docker_call
from providers.docker_provider.exec_status import ExecStatus
from providers.docker_provider.terminal import _hijack
from providers.errors import Conflict
from providers.terminal_marks import MARKER_VARIABLE

if TYPE_CHECKING:
    from providers.docker_provider.engine import DockerEngine

_CHUNK = 65536


def open_process(
    engine: DockerEngine,
    container_id: str,
    command: str | Sequence[str],
    env: Mapping[str, str] | None,
) -> DockerProcess:
    argv = as_argv(command)
    token = secrets.token_hex(16)
    environment = {**checked_env(env), MARKER_VARIABLE: token}
    api = engine.client.api
    with docker_call(f"start a process in container {container_id[:12]}", ref=container_id):
        exec_id = api.exec_create(
            container_id, argv, stdin=True, tty=False, environment=environment, workdir=WORKDIR
        )["Id"]
        body = json.dumps({"Detach": False, "Tty": False}).encode()
        path = f"/v{api.api_version}/exec/{exec_id}/start"
        conn, early = _hijack(engine.host, path, body, engine.timeout)
    return DockerProcess(engine, container_id, exec_id, token, conn, early)


class DockerProcess(ExecStatus, ProcessSession):
    def __init__(
        self,
        engine: DockerEngine,
        container_id: str,
        exec_id: str,
        token: str,
        conn: socket.socket,
        early: bytes,
    ) -> None:
        self._engine = engine
        self._container_id = container_id
        self._exec_id = exec_id
        self._token = token
        self._conn = conn
        self._buffer = bytearray(early)
        self._ended = False
        self._closed = False
        self._stdin_closed = False
        self._exit_code: int | None = None
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        if self._closed or self._stdin_closed:
            raise Conflict("the process's input is closed")
        try:
            self._conn.sendall(bytes(data))
        except OSError as exc:
            raise Conflict(f"the process's input is gone: {exc}") from None

    def close_stdin(self) -> None:
        if self._stdin_closed or self._closed:
            return
        self._stdin_closed = True
        with contextlib.suppress(OSError):
            self._conn.shutdown(socket.SHUT_WR)

    def _frame(self) -> tuple[int, bytes] | None:
        if len(self._buffer) < 8:
            return None
        stream, size = self._buffer[0], struct.unpack(">I", self._buffer[4:8])[0]
        if len(self._buffer) < 8 + size:
            return None
        payload = bytes(self._buffer[8 : 8 + size])
        del self._buffer[: 8 + size]
        return (self.STDERR if stream == 2 else self.STDOUT), payload

    def read(self, timeout: float | None = None) -> tuple[int, bytes]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self._frame()
            if frame is not None:
                if frame[1]:
                    return frame
                continue
            if self._closed or self._ended:
                return 0, b""
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._conn], [], [], remaining)
            if not ready:
                raise TimeoutError("no process output")
            try:
                chunk = self._conn.recv(_CHUNK)
            except OSError:
                chunk = b""
            if not chunk:
                self._ended = True
            self._buffer += chunk

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.exit_code is None:
            self._kill_marked()
        with contextlib.suppress(OSError):
            self._conn.shutdown(socket.SHUT_RDWR)
        self._conn.close()
        self._settle_killed()
