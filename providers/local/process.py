"""Streamed processes in a running sandbox: a command with its stdin, stdout and stderr as
pipes (``Instance.open_process``; the SSH gateway's ``ssh host cmd``, scp and sftp).

The request is exec's ("SBX1", see execute.py) with a third descriptor, the read end of
the command's stdin, so the sandbox's init forks the command inside the sandbox exactly as
for exec. The host keeps the write end of stdin and the read ends of stdout and stderr;
the init's connection carries the exit status ("E<wait status>") and a "K" (or the host
hanging up) kills the command's process group. Bytes pass untouched: no terminal.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Sequence

from providers.base import ProcessSession
from providers.errors import Conflict
from providers.local import sockets
from providers.local.execute import ReportedExit, SandboxGone, Target, reported_exit

_CHUNK = 65536
_ANSWER_TIMEOUT = 30.0


def open_process(target: Target, argv: Sequence[str]) -> LocalProcess:
    """Start ``argv`` in the sandbox with its streams as pipes; SandboxGone when it cannot."""
    if any("\0" in part for part in argv):
        raise ValueError("a command cannot contain NUL bytes")
    try:
        conn = sockets.connect(target.socket, timeout=_ANSWER_TIMEOUT)
    except (FileNotFoundError, ConnectionRefusedError):
        raise SandboxGone("its init does not answer") from None
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        fields = [target.cwd, str(len(argv)), *argv, *(f"{k}={v}" for k, v in target.env.items())]
        payload = b"".join(os.fsencode(f) + b"\0" for f in fields)
        header = b"SBX1" + struct.pack("<I", len(payload))
        socket.send_fds(conn, [header], [out_w, err_w, in_r])
        conn.sendall(payload)
    except OSError as exc:
        conn.close()
        for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
            os.close(fd)
        raise SandboxGone(str(exc)) from None
    for fd in (in_r, out_w, err_w):  # the sandbox's ends now
        os.close(fd)
    conn.settimeout(None)
    return LocalProcess(conn, in_w, out_r, err_r)


class LocalProcess(ReportedExit, ProcessSession):
    """A command of a local sandbox with its streams as pipes (see the module)."""

    def __init__(self, conn: socket.socket, stdin: int, stdout: int, stderr: int) -> None:
        self._conn = conn
        self._stdin: int | None = stdin
        self._outputs = {stdout: self.STDOUT, stderr: self.STDERR}
        for fd in (stdin, stdout, stderr):
            os.set_blocking(fd, False)
        self._status = bytearray()
        self._exit_code: int | None = None
        self._closed = False
        self._lock = threading.Lock()  # the descriptors against close() racing a user
        self._status_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def write(self, data: bytes) -> None:
        view = memoryview(bytes(data))
        while view:
            with self._lock:
                if self._closed or self._stdin is None:
                    raise Conflict("the process's input is closed")
                try:
                    sent = os.write(self._stdin, view)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:  # EPIPE: it stopped reading (or ended)
                    raise Conflict(f"the process's input is gone: {exc.strerror}") from None
                stdin = self._stdin
            view = view[sent:]
            if view:
                poller = select.poll()
                poller.register(stdin, select.POLLOUT)
                poller.register(self._wake_r, select.POLLIN)
                poller.poll()

    def close_stdin(self) -> None:
        with self._lock:
            if self._stdin is not None:
                os.close(self._stdin)
                self._stdin = None

    def read(self, timeout: float | None = None) -> tuple[int, bytes]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._closed or not self._outputs:
                    return 0, b""
                for fd, stream in list(self._outputs.items()):
                    try:
                        chunk = os.read(fd, _CHUNK)
                    except BlockingIOError:
                        continue
                    if chunk:
                        return stream, chunk
                    del self._outputs[fd]  # end of this stream
                    os.close(fd)
                if not self._outputs:
                    return 0, b""
                watched = list(self._outputs)
            if self._exit_code is not None or self._pump_status(0):
                # It ended: what it wrote is in the pipes now (it wrote before it exited),
                # so once they are empty the session's output is over, even where
                # background children keep them open (as for exec).
                with self._lock:
                    for fd, stream in list(self._outputs.items()):
                        try:
                            chunk = os.read(fd, _CHUNK)
                        except BlockingIOError:
                            chunk = b""
                        if chunk:
                            return stream, chunk
                        del self._outputs[fd]
                        os.close(fd)
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no process output")
            poller = select.poll()
            for fd in watched:
                poller.register(fd, select.POLLIN)
            poller.register(self._conn.fileno(), select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            poller.poll(None if remaining is None else max(0, int(remaining * 1000)))

    def _pump_status(self, timeout: float | None) -> bool:
        """Read the init's reports until the exit status arrived (True); False on
        timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._status_lock:
            while self._exit_code is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining < 0:
                    return False
                try:
                    ready, _, _ = select.select([self._conn], [], [], remaining)
                except (OSError, ValueError):
                    ready = [self._conn]
                if not ready:
                    return False
                try:
                    chunk = self._conn.recv(4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    self._exit_code = -signal.SIGKILL  # the sandbox stopped under it
                    return True
                self._status += chunk[: max(0, 4096 - len(self._status))]
                self._exit_code = reported_exit(self._status)
                for line in bytes(self._status).splitlines(keepends=True):
                    if line.startswith(b"X") and line.endswith(b"\n"):
                        self._exit_code = 127 if b"bad request" not in line else -1
            return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.write(self._wake_w, b"x")
        if self._exit_code is None:
            with contextlib.suppress(OSError):
                self._conn.send(b"K")
            with contextlib.suppress(OSError, ValueError):
                self._pump_status(_ANSWER_TIMEOUT)
        with self._lock:
            self._conn.close()
            for fd in [*self._outputs, self._wake_r, self._wake_w]:
                os.close(fd)
            self._outputs.clear()
            if self._stdin is not None:
                os.close(self._stdin)
                self._stdin = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self._closed:
                self.close()
