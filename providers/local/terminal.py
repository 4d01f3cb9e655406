"""Terminal sessions in a running sandbox, through its init (``sbx-init``).

The host asks the init over its exec socket (a "SBXT" request: working directory, window
size, command, environment). A helper forked from the init opens a new pseudo-terminal in
the sandbox's own devpts instance (bubblewrap mounts a new one at ``/dev/pts``), starts the
command on it as the leader of a new session, exactly as it starts an exec'd command (the
sandbox's namespaces, cgroups, user, capabilities and seccomp filter), and hands the
terminal's master back over the socket with ``SCM_RIGHTS``. The host then reads, writes
and resizes through that descriptor: no process of the host enters the sandbox, and no
terminal of the host is ever given to it, so a ``TIOCSTI`` inside injects only into the
sandbox's own terminal.

The socket stays open for the session's life: the init reports the command's end on it
("E<wait status>"), and the host closing it (or sending "K") makes the helper kill every
process of the terminal's session. The master is close-on-exec here, so no process the
control plane starts (another sandbox's launcher included) inherits it.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import termios
import threading
import time
from collections.abc import Sequence

from providers.base import TerminalSession, terminal_size
from providers.errors import Conflict
from providers.local import sockets
from providers.local.execute import ReportedExit, SandboxGone, Target, reported_exit

#: How long the init may take to answer a terminal request, and to confirm at ``close``
#: that the session's processes are gone.
_ANSWER_TIMEOUT = 30.0
_CHUNK = 65536


def open_session(
    target: Target, argv: Sequence[str], cols: int, rows: int, env: dict[str, str]
) -> LocalTerminal:
    """Ask the sandbox's init for a terminal running ``argv``; SandboxGone when it cannot."""
    cols, rows = terminal_size(cols, rows)
    try:
        conn = sockets.connect(target.socket, timeout=_ANSWER_TIMEOUT)
    except (FileNotFoundError, ConnectionRefusedError):
        raise SandboxGone("its init does not answer") from None
    try:
        fields = [target.cwd, str(cols), str(rows), str(len(argv)), *argv]
        fields += [f"{k}={v}" for k, v in {**target.env, **env}.items()]
        payload = b"".join(os.fsencode(f) + b"\0" for f in fields)
        conn.sendall(b"SBXT" + struct.pack("<I", len(payload)) + payload)
        master, rest = _receive_master(conn)
    except SandboxGone:
        conn.close()
        raise
    except OSError as exc:
        conn.close()
        raise SandboxGone(str(exc)) from None
    conn.settimeout(None)
    return LocalTerminal(conn, master, rest)


def _receive_master(conn: socket.socket) -> tuple[int, bytes]:
    """The master descriptor the init sends with "T\\n", and any status bytes after it.

    What comes from inside the sandbox is untrusted: anything but exactly one descriptor
    with "T" is refused (and every descriptor received is closed)."""
    fds = array.array("i")
    data, ancillary, _flags, _addr = conn.recvmsg(
        256, socket.CMSG_SPACE(4 * fds.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, blob in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(blob[: len(blob) - len(blob) % fds.itemsize])
    if data.startswith(b"T\n") and len(fds) == 1:
        return fds[0], data[2:]
    for fd in fds:
        os.close(fd)
    if data.startswith(b"X"):
        answer = data[1:].split(b"\n", 1)[0].decode(errors="replace")[:200]
        if answer == "bad request":
            # An init from before terminals refuses the unknown request.
            raise Conflict(
                "this sandbox runs an init from an older version without terminals; "
                "stop and start it"
            )
        raise SandboxGone(answer)
    raise SandboxGone("the sandbox's init gave no terminal")


class LocalTerminal(ReportedExit, TerminalSession):
    """A session on a pseudo-terminal of a local sandbox (see the module)."""

    _still_running = "the terminal's process is still running"

    def __init__(self, conn: socket.socket, master: int, status: bytes = b"") -> None:
        self._conn = conn
        self._master = master
        os.set_blocking(master, False)
        self._status = bytearray(status)
        self._exit_code: int | None = None
        self._closed = False
        self._hung_up = False
        #: Guards the descriptors against close() racing a reader or writer.
        self._lock = threading.Lock()
        self._status_lock = threading.Lock()
        # close() wakes a reader or writer blocked in poll through this pipe.
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._exit_code = reported_exit(self._status)

    def __repr__(self) -> str:
        return f"<LocalTerminal fd={self._master} exit={self._exit_code}>"

    def fileno(self) -> int:
        """The master's descriptor, for an event loop (read it only through ``read``)."""
        return self._master

    # --- input and output

    def _ready(self, events: int, timeout: float | None) -> bool:
        poller = select.poll()
        poller.register(self._master, events)
        poller.register(self._wake_r, select.POLLIN)
        ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        return bool(ready)

    def read(self, timeout: float | None = None) -> bytes:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._closed:
                    return b""
                try:
                    chunk = os.read(self._master, _CHUNK)
                except BlockingIOError:
                    chunk = None
                except OSError as exc:
                    if exc.errno == errno.EIO:  # every holder of the terminal is gone
                        return b""
                    raise
            if chunk is not None:
                return chunk
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no terminal output")
            self._ready(select.POLLIN, remaining)

    def write(self, data: bytes) -> None:
        view = memoryview(bytes(data))
        while view:
            with self._lock:
                if self._closed:
                    raise Conflict("the terminal session is closed")
                try:
                    sent = os.write(self._master, view)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    raise Conflict(f"the terminal is gone: {exc.strerror}") from None
            view = view[sent:]
            if view:
                self._ready(select.POLLOUT, None)

    def resize(self, cols: int, rows: int) -> None:
        cols, rows = terminal_size(cols, rows)
        with self._lock:
            if self._closed:
                raise Conflict("the terminal session is closed")
            fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    # --- the end

    def _pump_status(self, timeout: float | None) -> bool:
        """Read the init's reports until the exit status arrived; False on timeout or when
        the connection ended without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._status_lock:
            while self._exit_code is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                ready, _, _ = select.select([self._conn], [], [], remaining)
                if not ready:
                    return False
                try:
                    chunk = self._conn.recv(4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    # The helper died without a word: the sandbox stopped, and took the
                    # session's processes with it.
                    self._hung_up = True
                    self._exit_code = -signal.SIGKILL
                    return False
                self._status += chunk[: max(0, 4096 - len(self._status))]
                self._exit_code = reported_exit(self._status)
            return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.write(self._wake_w, b"x")
        # Ask the helper to kill the session, then wait until it has (it hangs up after
        # reporting), so nothing of the session is left in the sandbox when we return.
        with contextlib.suppress(OSError):
            self._conn.send(b"K")
        with contextlib.suppress(OSError, ValueError):
            self._pump_status(_ANSWER_TIMEOUT)
            deadline = time.monotonic() + _ANSWER_TIMEOUT
            while time.monotonic() < deadline:
                ready, _, _ = select.select([self._conn], [], [], deadline - time.monotonic())
                if not ready or not self._conn.recv(4096):
                    break
        if self._exit_code is None:
            self._exit_code = -signal.SIGKILL  # killed before it reported
        with self._lock:
            self._conn.close()
            os.close(self._master)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def __del__(self) -> None:
        # A session nobody closed must not keep the sandbox's processes (or our descriptor).
        with contextlib.suppress(Exception):
            if not self._closed:
                self.close()
