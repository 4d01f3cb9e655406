"""Running a command inside a running sandbox, with its namespaces, cgroups and limits.

The host connects to the sandbox's exec socket and hands over the command and two pipes;
the sandbox's init (``sbx-init``) forks the command inside the sandbox, so it is born in
the sandbox's cgroups and namespaces with the sandbox's user, capabilities and seccomp
filter. No host process ever enters the sandbox (an entering process would bring its own
credentials in, and could be ptraced from inside), and no cgroup migration (a few
milliseconds on cgroup v1) happens per exec.

Output is capped at ``EXEC_OUTPUT_LIMIT`` per stream (with a truncated flag),
and a timeout kills the command's process group, never the sandbox. What comes back from
inside a sandbox is treated as untrusted data.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from providers.base import EXEC_OUTPUT_LIMIT, ExecResult
from providers.local import sockets

#: After a timeout: how long to wait for the killed command to be reported.
_KILL_GRACE = 5.0


class SandboxGone(Exception):
    """The sandbox's init is no longer there (stopped meanwhile)."""


@dataclass(frozen=True)
class Target:
    cwd: str
    env: dict[str, str]
    #: The init's exec socket.
    socket: Path


def run(target: Target, argv: Sequence[str], timeout: float) -> ExecResult:
    if any("\0" in part for part in argv):
        raise ValueError("a command cannot contain NUL bytes")
    return _run_via_init(target, list(argv), timeout)


def _run_via_init(target: Target, argv: list[str], timeout: float) -> ExecResult:
    try:
        conn = sockets.connect(target.socket)
    except (FileNotFoundError, ConnectionRefusedError):
        raise SandboxGone("its init does not answer") from None
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        fields = [target.cwd, str(len(argv)), *argv, *(f"{k}={v}" for k, v in target.env.items())]
        payload = b"".join(os.fsencode(f) + b"\0" for f in fields)
        header = b"SBX1" + struct.pack("<I", len(payload))
        socket.send_fds(conn, [header], [out_w, err_w])
        conn.sendall(payload)
    except OSError as exc:
        conn.close()
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        raise SandboxGone(str(exc)) from None
    os.close(out_w)
    os.close(err_w)

    def cancel() -> None:
        with contextlib.suppress(OSError):
            conn.send(b"K")

    try:
        return _collect(conn.fileno(), out_r, err_r, timeout, cancel)
    finally:
        conn.close()


# --- collecting output and status


class _Output:
    def __init__(self) -> None:
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        room = EXEC_OUTPUT_LIMIT - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[: max(room, 0)]
        self.data += chunk

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def _collect(
    status_fd: int,
    out_r: int,
    err_r: int,
    timeout: float,
    cancel: Callable[[], None],
) -> ExecResult:
    outputs = {out_r: _Output(), err_r: _Output()}
    status = bytearray()
    selector = selectors.DefaultSelector()
    for fd in (out_r, err_r, status_fd):
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + max(timeout, 0.0)
    timed_out = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if timed_out:
                    break
                timed_out = True
                cancel()
                deadline = time.monotonic() + _KILL_GRACE
                continue
            for key, _ in selector.select(remaining):
                chunk = _read(key.fd)
                if chunk is None:
                    continue
                if not chunk:
                    selector.unregister(key.fd)
                elif key.fd == status_fd:
                    status += chunk[:4096]
                else:
                    outputs[key.fd].add(chunk)
            if status_fd not in selector.get_map() or _final(status):
                # The command ended: take what it left in the pipes and stop. Background
                # children may keep the pipes open (and writing) forever.
                _drain(selector, outputs)
                break
    finally:
        selector.close()
        for fd in (out_r, err_r):
            os.close(fd)
    exit_code, failure = _parse_exit(status)
    if failure is not None and not timed_out:
        raise SandboxGone(failure)
    if timed_out:
        exit_code = -signal.SIGKILL
    out, err = outputs[out_r], outputs[err_r]
    return ExecResult(
        exit_code=exit_code,
        stdout=out.text(),
        stderr=err.text(),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        timed_out=timed_out,
    )


def _read(fd: int) -> bytes | None:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except ConnectionResetError:
        return b""


def _final(status: bytearray) -> bool:
    return any(
        line.startswith((b"E", b"X")) and status.endswith(b"\n")
        for line in bytes(status).splitlines()
    )


def _drain(selector: selectors.BaseSelector, outputs: dict) -> None:
    for fd, output in outputs.items():
        if fd not in selector.get_map():
            continue
        for _ in range(64):
            chunk = _read(fd)
            if not chunk:
                break
            output.add(chunk)


def reported_exit(status: bytes | bytearray) -> int | None:
    """The exit code in the init's "E<wait status>" line once the whole line arrived
    (exec, streamed processes and terminals alike), else None."""
    for line in bytes(status).splitlines(keepends=True):
        if line.startswith(b"E") and line.endswith(b"\n"):
            try:
                return os.waitstatus_to_exitcode(int(line[1:]))
            except ValueError:
                return -1  # nonsense from inside the sandbox: not our problem
    return None


class ReportedExit:
    """Mixed into a session the init reports the end of (a streamed process, a terminal):
    its exit code as ``_pump_status`` read it from the init's connection."""

    _exit_code: int | None
    _closed: bool
    #: What ``wait`` says when the timeout passes first.
    _still_running = "the process is still running"

    def _pump_status(self, timeout: float | None) -> bool:
        raise NotImplementedError

    @property
    def exit_code(self) -> int | None:
        if self._exit_code is None and not self._closed:
            with contextlib.suppress(OSError, ValueError):
                self._pump_status(0)
        return self._exit_code

    def wait(self, timeout: float | None = None) -> int:
        if self._exit_code is None and not self._closed:
            self._pump_status(timeout)
        if self._exit_code is not None:
            return self._exit_code
        raise TimeoutError(self._still_running)


def _parse_exit(status: bytearray) -> tuple[int, str | None]:
    exit_code = reported_exit(status)
    if exit_code is not None:
        return exit_code, None
    for line in bytes(status).decode(errors="replace").splitlines():
        if line.startswith("X"):
            return -1, line[1:200]
    return -1, "the sandbox ended the command's connection without a status"
