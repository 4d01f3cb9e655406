"""Streamed processes in PVE guests (``Instance.open_process``), through the sandbox
agent's ``POST /v1/process``.

The agent (``providers/pve/agent.py``) starts the command inside the guest with pipes for
its stdin, stdout and stderr; the control plane holds one TCP connection to it carrying
authenticated frames, as for terminals (``providers/pve/terminal.py``): each with a MAC
under a key of this session alone, a sequence number and its direction. Bytes pass
untouched (no terminal), stdout and stderr stay apart, the end of the input is a frame of
its own, and closing kills the command's whole session inside the guest.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections import deque
from collections.abc import Mapping

from providers.base import ProcessSession
from providers.errors import Conflict
from providers.pve.agent import MAX_FRAME, session_key
from providers.pve.terminal import AgentChannel, connect

PATH = "/v1/process"
_CHUNK = 65536


def open_process(
    address: str, port: int, secret: str, *, argv: list[str], env: Mapping[str, str]
) -> AgentProcess:
    """Start ``argv`` through the agent at ``address:port`` with its streams as pipes.

    ``Unavailable`` when the agent cannot be reached, ``AgentRefused`` when it refuses,
    ``OperationFailed`` when whatever answered is not this sandbox's agent."""
    body = json.dumps({"argv": argv, "env": dict(env)}).encode()
    conn, nonce, early, where = connect(address, port, secret, PATH, body, "process")
    return AgentProcess(conn, session_key(secret, nonce, "process"), early, where)


class AgentProcess(AgentChannel, ProcessSession):
    """One command of a guest with its streams as pipes, over a connection to its agent."""

    _what = "the process"

    def __init__(self, conn: socket.socket, key: bytes, early: bytes, where: str) -> None:
        self._output: deque[tuple[int, bytes]] = deque()
        self._buffered = 0
        self._stdin_closed = False
        super().__init__(conn, key, early, where)

    def __repr__(self) -> str:
        return f"<AgentProcess {self._where} exit={self._exit_code}>"

    def _keep(self, kind: bytes, payload: bytes) -> None:
        if kind in (b"1", b"2") and payload:
            self._output.append((self.STDOUT if kind == b"1" else self.STDERR, payload))
            self._buffered += len(payload)

    def _backlog(self) -> int:
        return self._buffered

    def _drop(self) -> None:
        self._output.clear()
        self._buffered = 0

    # --- the contract

    def write(self, data: bytes) -> None:
        data = bytes(data)
        with self._send_lock:
            if self._closed or self._stdin_closed:
                raise Conflict("the process's input is closed")
            if self._exit_code is not None:  # as far as this side has heard
                raise Conflict("the process has ended")
            for start in range(0, len(data), MAX_FRAME):
                self._send_frame(b"i", data[start : start + MAX_FRAME])

    def close_stdin(self) -> None:
        with self._send_lock:
            if self._closed or self._stdin_closed:
                return
            self._stdin_closed = True
            with contextlib.suppress(Conflict):  # gone: its input has ended anyway
                self._send_frame(b"z")

    def read(self, timeout: float | None = None) -> tuple[int, bytes]:
        if not self._until(lambda: bool(self._output) or self._output_ended, timeout, reader=True):
            raise TimeoutError("no process output")
        with self._cond:
            if self._closed or not self._output:
                return 0, b""
            stream, chunk = self._output.popleft()
            if len(chunk) > _CHUNK:
                self._output.appendleft((stream, chunk[_CHUNK:]))
                chunk = chunk[:_CHUNK]
            self._buffered -= len(chunk)
            self._cond.notify_all()  # a waiter held back by a full buffer may go on
            return stream, chunk

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
        # Ask the agent to end the session and wait until it has (it reports the end and
        # hangs up once every process of the session is gone). A writer blocked on a full
        # pipe holds the send lock: then the half-close alone tells the agent.
        if self._send_lock.acquire(timeout=1.0):
            try:
                with contextlib.suppress(Conflict):
                    self._send_frame(b"c")
            finally:
                self._send_lock.release()
        self._end()
