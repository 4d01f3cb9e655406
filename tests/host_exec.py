"""``exec`` for the test doubles: a real command, run on the host in an instance's folder.

No isolation at all (the in-memory and file-backed test providers are never offered to
users); what it gives the contract tests is real exit codes, output, timeouts and files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from providers.base import (
    EXEC_OUTPUT_LIMIT,
    ExecResult,
    TerminalSession,
    as_argv,
    checked_env,
    terminal_argv,
    terminal_env,
    terminal_size,
)
from providers.errors import Conflict


def run_in(
    workdir: Path,
    command: str | Sequence[str],
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> ExecResult:
    extra = checked_env(env)
    try:
        done = subprocess.run(
            as_argv(command),
            cwd=workdir,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **extra} if extra else None,
        )
    except subprocess.TimeoutExpired as exc:
        return ExecResult(-1, _text(exc.stdout), _text(exc.stderr), timed_out=True)
    except OSError as exc:
        # What a shell (and every real back end) answers for a program it cannot run:
        # 127 when it does not exist, 126 when it cannot be executed.
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        return ExecResult(code, "", f"{as_argv(command)[0]}: {exc.strerror}\n")
    return ExecResult(
        done.returncode,
        _text(done.stdout),
        _text(done.stderr),
        stdout_truncated=len(done.stdout) > EXEC_OUTPUT_LIMIT,
        stderr_truncated=len(done.stderr) > EXEC_OUTPUT_LIMIT,
    )


def _text(data: bytes | None) -> str:
    return (data or b"")[:EXEC_OUTPUT_LIMIT].decode("utf-8", "replace")


class HostTerminal(TerminalSession):
    """A terminal session for the test doubles: a pty of the host and a process in the
    instance's folder (no isolation, like ``run_in``)."""

    def __init__(self, workdir: Path, argv: list[str], cols: int, rows: int, env: dict) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self._master = master
        self._closed = False
        self._process = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            # HOME is the instance's folder: a login shell must not run the host user's
            # profile (on the build machines it runs `pyenv rehash`, which takes a lock
            # that a shell killed mid-way, as tests do, leaves behind for every later
            # login shell to hang on), nor write its history there.
            env={**os.environ, "HOME": str(workdir), **env},
            start_new_session=True,
            # The pty as the controlling terminal: stty, job control and SIGWINCH work.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)

    def write(self, data: bytes) -> None:
        if self._closed:
            raise Conflict("the terminal session is closed")
        view = memoryview(bytes(data))
        while view:
            view = view[os.write(self._master, view) :]

    def read(self, timeout: float | None = None) -> bytes:
        if self._closed:
            return b""
        ready, _, _ = select.select([self._master], [], [], timeout)
        if not ready:
            raise TimeoutError("no terminal output")
        try:
            return os.read(self._master, 65536)
        except OSError:  # EIO: every holder of the terminal is gone
            return b""

    def resize(self, cols: int, rows: int) -> None:
        cols, rows = terminal_size(cols, rows)
        fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError("still running") from None

    @property
    def exit_code(self) -> int | None:
        return self._process.poll()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _kill_session(self._process.pid)
        self._process.wait()
        os.close(self._master)


def open_host_terminal(
    workdir: Path,
    command: str | Sequence[str] | None,
    cols: int,
    rows: int,
    env: Mapping[str, str] | None,
) -> HostTerminal:
    cols, rows = terminal_size(cols, rows)
    return HostTerminal(workdir, terminal_argv(command), cols, rows, terminal_env(env))


def _kill_session(sid: int) -> None:
    """Kill every live process of session ``sid`` (a shell's jobs have process groups of
    their own), until none is left."""
    while True:
        found = False
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[3] == str(sid) and fields[0] not in ("Z", "X"):
                found = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)
        if not found:
            return
        time.sleep(0.001)
