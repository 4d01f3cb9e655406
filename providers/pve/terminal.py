"""Terminal sessions in PVE guests, through the sandbox agent's ``POST /v1/terminal``.

The agent (``providers/pve/agent.py``) runs inside the guest: in a container it is the
template's service; in a VM the provider puts it there through the QEMU guest agent
(``providers/pve/vm_agent.py``). The pseudo-terminal is made by the agent inside the guest,
so the session has the guest's boundary; the control plane holds one TCP connection to the
agent carrying authenticated frames (each with a MAC under a key of this session alone, a
sequence number and its direction: see the agent's module).
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
from collections.abc import Callable, Mapping

from providers.base import TerminalSession, terminal_size
from providers.errors import Conflict, OperationFailed, Unavailable
from providers.pve.agent import (
    MAX_FRAME,
    TO_AGENT,
    TO_CLIENT,
    FrameReader,
    frame,
    session_key,
    sign,
)

PATH = "/v1/terminal"
#: Connecting and the agent's answer to the opening request.
CONNECT_TIMEOUT = 5.0
#: How long ``close`` waits for the agent to confirm the session's processes are gone.
CLOSE_TIMEOUT = 30.0
_CHUNK = 65536
#: Unread output a waiter (not the reader) receives at most.
_BUFFERED = 1024 * 1024


class AgentRefused(OperationFailed):
    """The agent answered, but refused the request (401 = not this sandbox's secret)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def open_session(
    address: str,
    port: int,
    secret: str,
    *,
    argv: list[str],
    cols: int,
    rows: int,
    env: Mapping[str, str],
) -> AgentTerminal:
    """Open a terminal running ``argv`` through the agent at ``address:port``.

    ``Unavailable`` when the agent cannot be reached, ``AgentRefused`` when it refuses,
    ``OperationFailed`` when whatever answered is not this sandbox's agent."""
    cols, rows = terminal_size(cols, rows)
    body = json.dumps({"argv": argv, "cols": cols, "rows": rows, "env": dict(env)}).encode()
    conn, nonce, early, where = connect(address, port, secret, PATH, body, "terminal")
    return AgentTerminal(conn, session_key(secret, nonce), early, where)


def connect(
    address: str, port: int, secret: str, path: str, body: bytes, what: str
) -> tuple[socket.socket, str, bytes, str]:
    """Send the signed request opening a session (``what``: a terminal, a process) and
    check the agent's signed answer; the connection (blocking, ready for frames), the
    request's nonce, the bytes that came after the answer and a name for the agent."""
    stamp, nonce = f"{time.time():.3f}", secrets.token_hex(16)
    host = f"[{address}]" if ":" in address else address
    where = f"the sandbox agent at {host}:{port}"
    try:
        conn = socket.create_connection((address, port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise Unavailable(f"cannot reach {where} ({type(exc).__name__})") from None
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"X-Sandbox-Time: {stamp}\r\nX-Sandbox-Nonce: {nonce}\r\n"
                f"X-Sandbox-Signature: {sign(secret, 'POST', path, stamp, nonce, body)}\r\n\r\n"
            ).encode()
            + body
        )
        status, headers, early = _response_head(conn, where)
        given = headers.get("x-sandbox-signature", "")
        if status == 404:
            raise AgentRefused(
                f"{where} has no {what}s: it is from an older version; install the current "
                "providers/pve/agent.py in the template (docs/providers/pve.md)",
                status,
            )
        if status != 200:
            detail = _refusal(conn, headers, early)
            expected = sign(secret, "response", nonce, detail)
            if status == 401 or not secrets.compare_digest(given, expected):
                raise AgentRefused(f"{where} does not accept this sandbox's secret", status)
            message = _error_text(detail) or f"HTTP {status}"
            raise AgentRefused(f"{where} refused the {what}: {message}", status)
        if not secrets.compare_digest(given, sign(secret, "response", nonce, b"")):
            raise OperationFailed(f"{where} answered without this sandbox's signature")
        conn.settimeout(None)
        return conn, nonce, early, where
    except OSError as exc:
        conn.close()
        raise Unavailable(f"{where} broke off ({type(exc).__name__})") from None
    except BaseException:
        conn.close()
        raise


def _response_head(conn: socket.socket, where: str) -> tuple[int, dict[str, str], bytes]:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = conn.recv(4096)
        if not chunk or len(received) > 65536:
            raise Unavailable(f"{where} ended the connection before answering")
        received += chunk
    head, early = received.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise OperationFailed(f"{where} answered something that is not HTTP")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, early


def _refusal(conn: socket.socket, headers: dict[str, str], early: bytes) -> bytes:
    try:
        length = min(int(headers.get("content-length", "0")), 65536)
    except ValueError:
        return b""
    body = early
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return body[:length]


def _error_text(body: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body).get("error", ""))[:300]
    return ""


class AgentChannel:
    """The control plane's end of one agent session, a terminal's or a process's: frames
    under the session's own key both ways (sent under ``_send_lock``), one thread at a time
    receiving, the exit status and the end of output as the agent reports them.

    A session keeps its output frames (``_keep``), says how much is unread (``_backlog``)
    and drops what is left at close (``_drop``); it sets its own fields before calling
    ``__init__``, which may already apply the first frames."""

    #: What the session is called in errors: "<_what> is gone: ...".
    _what = "the session"
    #: What ``wait`` says when its timeout passes first.
    _still_running = "the process is still running"

    def __init__(self, conn: socket.socket, key: bytes, early: bytes, where: str) -> None:
        self._conn = conn
        self._key = key
        self._where = where
        self._frames = FrameReader(key, TO_CLIENT)
        self._seq = 0
        self._send_lock = threading.Lock()
        #: Guards everything below and the output; one thread at a time reads the connection.
        self._cond = threading.Condition()
        self._receiving = False
        self._exit_code: int | None = None
        self._output_ended = False
        self._hung_up = False
        self._closed = False
        if early:
            self._take(early)

    def _keep(self, kind: bytes, payload: bytes) -> None:
        raise NotImplementedError

    def _backlog(self) -> int:
        raise NotImplementedError

    def _drop(self) -> None:
        raise NotImplementedError

    def _send_frame(self, kind: bytes, payload: bytes = b"") -> None:
        """Send one frame (the caller holds ``_send_lock``)."""
        data = frame(self._key, TO_AGENT, kind, self._seq, payload)
        self._seq += 1
        try:
            self._conn.sendall(data)
        except OSError as exc:
            raise Conflict(f"{self._what} is gone: {exc.strerror or exc}") from None

    def _take(self, data: bytes) -> None:
        """Apply received bytes (holding ``_cond``)."""
        try:
            frames = self._frames.feed(data)
        except ValueError:
            self._hang_up()  # not from this session's agent: trust nothing more of it
            return
        for kind, payload in frames:
            if kind == b"x" and len(payload) == 4:
                self._exit_code = struct.unpack(">i", payload)[0]
            elif kind == b"e":
                self._output_ended = True
            elif not self._closed:  # after close, output is dropped on arrival
                self._keep(kind, payload)

    def _hang_up(self) -> None:
        self._hung_up = True
        self._output_ended = True
        if self._exit_code is None:
            self._exit_code = -9  # gone with its guest, or killed at close

    def _until(
        self, done: Callable[[], bool], timeout: float | None, *, reader: bool = False
    ) -> bool:
        """Receive until ``done()`` (or the connection ended); False on timeout.

        Only the reader receives past ``_BUFFERED`` bytes of unread output: ``wait`` does
        not buffer a program's output without bound, it lets the output hold the program
        back, as a terminal or a pipe would."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not done():
                if self._hung_up:
                    return done()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if self._receiving or (not reader and self._backlog() >= _BUFFERED):
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

    def _end(self) -> None:
        """After the close frame: half-close, wait until the agent has ended the session
        (it reports the end and hangs up once every process of it is gone), drop the rest."""
        with contextlib.suppress(OSError):
            self._conn.shutdown(socket.SHUT_WR)
        self._until(lambda: self._hung_up, CLOSE_TIMEOUT, reader=True)
        with self._cond:
            if self._exit_code is None:
                self._exit_code = -9
            self._drop()
            self._output_ended = True
        self._conn.close()

    @property
    def exit_code(self) -> int | None:
        if self._exit_code is None and not self._closed:
            self._until(lambda: self._exit_code is not None, 0)
        return self._exit_code

    def wait(self, timeout: float | None = None) -> int:
        if not self._until(lambda: self._exit_code is not None, timeout):
            raise TimeoutError(self._still_running)
        assert self._exit_code is not None
        return self._exit_code

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self._closed:
                self.close()


class AgentTerminal(AgentChannel, TerminalSession):
    """One terminal session carried over a connection to the guest's agent."""

    _what = "the terminal"
    _still_running = "the terminal's process is still running"

    def __init__(self, conn: socket.socket, key: bytes, early: bytes, where: str) -> None:
        self._output = bytearray()
        super().__init__(conn, key, early, where)

    def __repr__(self) -> str:
        return f"<AgentTerminal {self._where} exit={self._exit_code}>"

    def _keep(self, kind: bytes, payload: bytes) -> None:
        if kind == b"o":
            self._output += payload

    def _backlog(self) -> int:
        return len(self._output)

    def _drop(self) -> None:
        self._output.clear()

    def _send(self, kind: bytes, payload: bytes = b"") -> None:
        with self._send_lock:
            if self._closed and kind != b"c":
                raise Conflict("the terminal session is closed")
            self._send_frame(kind, payload)

    def read(self, timeout: float | None = None) -> bytes:
        if not self._until(lambda: bool(self._output) or self._output_ended, timeout, reader=True):
            raise TimeoutError("no terminal output")
        with self._cond:
            chunk = bytes(self._output[:_CHUNK])
            del self._output[:_CHUNK]
            self._cond.notify_all()  # a waiter held back by a full buffer may go on
            return b"" if self._closed else chunk

    def write(self, data: bytes) -> None:
        data = bytes(data)
        for start in range(0, len(data), MAX_FRAME):
            self._send(b"i", data[start : start + MAX_FRAME])

    def resize(self, cols: int, rows: int) -> None:
        cols, rows = terminal_size(cols, rows)
        self._send(b"r", struct.pack(">HH", cols, rows))

    def close(self) -> None:
        with self._send_lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(Conflict):
            self._send(b"c")
        self._end()
