"""Running a command inside a running sandbox, with its namespaces, cgroups and limits.

Two ways, chosen when the sandbox starts:

* Through its init (``sbx-init``, the normal case): the host connects to the sandbox's
  exec socket and hands over the command and two pipes; the init forks the command
  inside the sandbox, so it is born in the sandbox's cgroups and namespaces with the
  sandbox's capabilities. No host process enters the sandbox, and no cgroup migration
  (which costs a few milliseconds on cgroup v1) happens per exec.
* By entering it (``enter``, when no C compiler could build the init): a forked helper
  joins the sandbox's cgroups and namespaces (one ``setns`` on a pidfd of the sandbox's
  init), then forks the command, which enters the sandbox's root, gives up every
  capability a sandbox does not have, and execs with the sandbox's environment only.

Either way output is capped at ``EXEC_OUTPUT_LIMIT`` per stream (with a truncated flag),
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
from providers.local import sockets, syscalls
from providers.local.state import process_start_ticks

NAMESPACES = (
    syscalls.CLONE_NEWCGROUP
    | syscalls.CLONE_NEWIPC
    | syscalls.CLONE_NEWUTS
    | syscalls.CLONE_NEWNET
    | syscalls.CLONE_NEWPID
    | syscalls.CLONE_NEWNS
)
_NS_FILES = (
    ("cgroup", syscalls.CLONE_NEWCGROUP),
    ("ipc", syscalls.CLONE_NEWIPC),
    ("uts", syscalls.CLONE_NEWUTS),
    ("net", syscalls.CLONE_NEWNET),
    ("pid", syscalls.CLONE_NEWPID),
    ("mnt", syscalls.CLONE_NEWNS),
)
_KEEP_CAPS = set(syscalls.SANDBOX_CAPS.values())
_LAST_CAP = syscalls.last_cap()
_EXIT_EXEC_FAILED = 127
#: After a timeout: how long to wait for the killed command to be reported.
_KILL_GRACE = 5.0


class SandboxGone(Exception):
    """The sandbox's init is no longer there (stopped meanwhile)."""


@dataclass(frozen=True)
class Target:
    pid: int
    start_ticks: int
    cwd: str
    env: dict[str, str]
    #: The init's exec socket; None when the sandbox runs without sbx-init.
    socket: Path | None = None
    cgroup_procs: tuple[str, ...] = ()


def run(target: Target, argv: Sequence[str], timeout: float) -> ExecResult:
    if any("\0" in part for part in argv):
        raise ValueError("a command cannot contain NUL bytes")
    if target.socket is not None:
        return _run_via_init(target, list(argv), timeout)
    return _run_by_entering(target, list(argv), timeout)


# --- through the sandbox's init


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


# --- by entering the sandbox's namespaces (fallback)


def _run_by_entering(target: Target, argv: list[str], timeout: float) -> ExecResult:
    pidfd, root_fd = _open_target(target)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    status_r, status_w = os.pipe()
    try:
        helper = os.fork()
        if helper == 0:  # pragma: no cover - runs in the child
            _helper(target, pidfd, root_fd, argv, out_w, err_w, status_w)
    finally:
        for fd in (pidfd, root_fd, out_w, err_w, status_w):
            os.close(fd)
    command: list[int] = []

    def on_status(line: str) -> None:
        if line.startswith("P") and line[1:].isdigit():
            command.append(int(line[1:]))

    def cancel() -> None:
        if command:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(command[0], signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(command[0] if command else helper, signal.SIGKILL)

    try:
        return _collect(status_r, out_r, err_r, timeout, cancel, on_status)
    finally:
        os.close(status_r)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(helper, 0)


def _open_target(target: Target) -> tuple[int, int]:
    try:
        pidfd = os.pidfd_open(target.pid)
    except ProcessLookupError:
        raise SandboxGone("its init is gone") from None
    try:
        root_fd = os.open(f"/proc/{target.pid}/root", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        os.close(pidfd)
        raise SandboxGone("its init is gone") from None
    # Checked after opening: the pidfd pins the process, so a recycled pid cannot slip in.
    if process_start_ticks(target.pid) != target.start_ticks:
        os.close(pidfd)
        os.close(root_fd)
        raise SandboxGone("its init is gone")
    return pidfd, root_fd


def _helper(target, pidfd, root_fd, argv, out_w, err_w, status_w) -> None:  # pragma: no cover
    """The forked helper: join, fork the command, report its pid and status, exit."""
    code = 1
    try:
        for procs in target.cgroup_procs:
            with open(procs, "w") as handle:
                handle.write("0")
        _join_namespaces(target.pid, pidfd)
        command = os.fork()
        if command == 0:
            _command(target, root_fd, argv, out_w, err_w)
        os.close(out_w)
        os.close(err_w)
        os.write(status_w, f"P{command}\n".encode())
        _, status = os.waitpid(command, 0)
        os.write(status_w, f"E{status}\n".encode())
        code = 0
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(status_w, f"X{exc}\n".encode()[:1000])
    finally:
        os._exit(code)


def _join_namespaces(pid: int, pidfd: int) -> None:  # pragma: no cover - in the child
    try:
        syscalls.setns(pidfd, NAMESPACES)
        return
    except OSError:
        pass  # kernels before 5.8 cannot setns on a pidfd: one namespace file at a time
    fds = [(os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY), flag) for name, flag in _NS_FILES]
    for fd, flag in fds:
        syscalls.setns(fd, flag)


def _command(target, root_fd, argv, out_w, err_w) -> None:  # pragma: no cover - in the child
    try:
        os.setsid()
        os.fchdir(root_fd)
        os.chroot(".")
        try:
            os.chdir(target.cwd)
        except OSError:
            os.chdir("/")
        os.setgroups([])
        syscalls.restrict_capabilities(_KEEP_CAPS, _LAST_CAP)
        os.umask(0o022)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.closerange(3, 1 << 20)
        os.execvpe(argv[0], argv, target.env)  # noqa: S606 - argv, never a shell string
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(2, f"{argv[0] if argv else ''}: {exc}\n".encode())
    os._exit(_EXIT_EXEC_FAILED)


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
    on_status: Callable[[str], None] | None = None,
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
                    if on_status:
                        for line in bytes(status).decode(errors="replace").splitlines():
                            on_status(line)
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


def _parse_exit(status: bytearray) -> tuple[int, str | None]:
    for line in bytes(status).decode(errors="replace").splitlines():
        if line.startswith("E"):
            try:
                return os.waitstatus_to_exitcode(int(line[1:])), None
            except ValueError:
                return -1, None  # nonsense from inside the sandbox: not our problem
        if line.startswith("X"):
            return -1, line[1:200]
    return -1, "the sandbox ended the command's connection without a status"
