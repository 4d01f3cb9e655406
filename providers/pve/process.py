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
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from providers.base import ProcessSession
from providers.errors import Conflict
from providers.pve.agent import MAX_FRAME, TO_AGENT, TO_CLIENT, FrameReader, frame, session_key
from providers.pve.terminal import CLOSE_TIMEOUT, connect

PATH = "/v1/process"
_CHUNK = 65536
#: Unread output a waiter (not the reader) receives at most.
_BUFFERED = 1024 * 1024


def open_process(
    address: str, port: int, secret: str, *, argv: list[str], env: Mapping[str, str]
) -> AgentProcess:
    """Start ``argv`` through the agent at ``address:port`` with its streams as pipes.

    ``Unavailable`` when the agent cannot be reached, ``AgentRefused`` when it refuses,
    ``OperationFailed`` when whatever answered is not this sandbox's agent."""
    body = json.dumps({"argv": argv, "env": dict(env)}).encode()
    conn, nonce, early, where = connect(address, port, secret, PATH, body, "process")
    return AgentProcess(conn, session_key(secret, nonce, "process"), early, where)


class AgentProcess(ProcessSession):
    """One command of a guest with its streams as pipes, over a connection to its agent."""

    def __init__(self, conn: socket.socket, key: bytes, early: bytes, where: str) -> None:
        self._conn = conn
        self._key = key
        self._where = where
        self._frames = FrameReader(key, TO_CLIENT)
        self._seq = 0
        self._send_lock = threading.Lock()
        #: Guards everything below; one thread at a time reads the connection.
        self._cond = threading.Condition()
        self._receiving = False
        self._output: deque[tuple[int, bytes]] = deque()
        self._buffered = 0
        self._exit_code: int | None = None
        self._output_ended = False
        self._hung_up = False
        self._stdin_closed = False
        self._closed = False
        if early:
            self._take(early)

    def __repr__(self) -> str:
        return f"<AgentProcess {self._where} exit={self._exit_code}>"

    # --- the connection

    def _send(self, kind: bytes, payload: bytes = b"") -> None:
        """Send one frame (holding ``_send_lock``)."""
        data = frame(self._key, TO_AGENT, kind, self._seq, payload)
        self._seq += 1
        try:
            self._conn.sendall(data)
        except OSError as exc:
            raise Conflict(f"the process is gone: {exc.strerror or exc}") from None

    def _take(self, data: bytes) -> None:
        """Apply received bytes (holding ``_cond``)."""
        try:
            frames = self._frames.feed(data)
        except ValueError:
            self._hang_up()  # not from this session's agent: trust nothing more of it
            return
        for kind, payload in frames:
            if kind in (b"1", b"2"):
                if not self._closed and payload:  # after close, output is dropped
                    stream = self.STDOUT if kind == b"1" else self.STDERR
                    self._output.append((stream, payload))
                    self._buffered += len(payload)
            elif kind == b"x" and len(payload) == 4:
                self._exit_code = struct.unpack(">i", payload)[0]
            elif kind == b"e":
                self._output_ended = True

    def _hang_up(self) -> None:
        self._hung_up = True
        self._output_ended = True
        if self._exit_code is None:
            self._exit_code = -9  # gone with its guest, or killed at close

    def _until(
        self, done: Callable[[], bool], timeout: float | None, *, reader: bool = False
    ) -> bool:
        """Receive until ``done()`` (or the connection ended); False on timeout. Only the
        reader receives past ``_BUFFERED`` bytes of unread output (the output holds the
        command back, as a pipe would)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not done():
                if self._hung_up:
                    return done()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if self._receiving or (not reader and self._buffered >= _BUFFERED):
                    self._cond.wait(remaining)
                    continue
                self._receiving = True
                self._cond.release()
                try:
                    data = self._receive(remaining)
                finally:
                    self._cond.acquire()
                    self._receiving = False
                    self._cond.notify_all()
                if data == b"":
                    self._hang_up()
                elif data is not None:
                    self._take(data)
            return True

    def _receive(self, timeout: float | None) -> bytes | None:
        """Bytes from the agent; b"" when the connection ended; None on timeout."""
        try:
            ready, _, _ = select.select([self._conn], [], [], timeout)
            if not ready:
                return None
            return self._conn.recv(MAX_FRAME + 1024)
        except (OSError, ValueError):
            return b""

    # --- the contract

    def write(self, data: bytes) -> None:
        data = bytes(data)
        with self._send_lock:
            if self._closed or self._stdin_closed:
                raise Conflict("the process's input is closed")
            if self._exit_code is not None:  # as far as this side has heard
                raise Conflict("the process has ended")
            for start in range(0, len(data), MAX_FRAME):
                self._send(b"i", data[start : start + MAX_FRAME])

    def close_stdin(self) -> None:
        with self._send_lock:
            if self._closed or self._stdin_closed:
                return
            self._stdin_closed = True
            with contextlib.suppress(Conflict):  # gone: its input has ended anyway
                self._send(b"z")

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

    @property
    def exit_code(self) -> int | None:
        if self._exit_code is None and not self._closed:
            self._until(lambda: self._exit_code is not None, 0)
        return self._exit_code

    def wait(self, timeout: float | None = None) -> int:
        if not self._until(lambda: self._exit_code is not None, timeout):
            raise TimeoutError("the process is still running")
        assert self._exit_code is not None
        return self._exit_code

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
                    self._send(b"c")
            finally:
                self._send_lock.release()
        with contextlib.suppress(OSError):
            self._conn.shutdown(socket.SHUT_WR)
        self._until(lambda: self._hung_up, CLOSE_TIMEOUT, reader=True)
        with self._cond:
            if self._exit_code is None:
                self._exit_code = -9
            self._output.clear()
            self._buffered = 0
            self._output_ended = True
        self._conn.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self._closed:
                self.close()
