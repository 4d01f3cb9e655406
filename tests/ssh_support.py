"""The SSH gateway in a thread of the test process, and the real OpenSSH client against it.

In-process (as ``tests/asgi_server.py``), so the test database and the providers the test
configured are the gateway's. The client is ``/usr/bin/ssh`` with a config of its own
(``-F /dev/null``): no agent, no known_hosts, batch mode (a refused login fails instead
of asking for a password).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import select
import shutil
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.system import require


def require_openssh() -> None:
    require(
        "openssh-client",
        all(shutil.which(tool) for tool in ("ssh", "scp", "sftp", "ssh-keygen")),
        "apt-get install -y openssh-client",
    )


class Gateway:
    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.acceptor = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = threading.Event()
        self.error: BaseException | None = None

    def _run(self) -> None:
        from sandboxes import ssh_gateway

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            try:
                self.acceptor = await ssh_gateway.start(
                    host="127.0.0.1", port=0, key_path=self.key_path
                )
            except BaseException as exc:
                self.error = exc
                self.started.set()
                return
            self.port = self.acceptor.sockets[0].getsockname()[1]
            self.stopped = asyncio.Event()
            self.started.set()
            await self.stopped.wait()
            self.acceptor.close()
            await self.acceptor.wait_closed()

        asyncio.run(main())

    def start(self) -> Gateway:
        self.thread.start()
        self.started.wait(30)
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        if self.loop is not None and self.acceptor is not None:
            self.loop.call_soon_threadsafe(self.stopped.set)
        self.thread.join(10)


@contextmanager
def gateway(tmp_path: Path, settings) -> Iterator[Gateway]:
    running = Gateway(tmp_path / "gateway" / "ssh_host_ed25519_key").start()
    settings.SANDBOX_SSH_HOST = "127.0.0.1"
    settings.SANDBOX_SSH_PORT = running.port
    try:
        yield running
    finally:
        running.stop()


def keypair(directory: Path, name: str = "id_ed25519") -> tuple[Path, str]:
    """A new ed25519 key (no passphrase): its private key file and public line."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(path)],
        check=True,
    )
    return path, (directory / f"{name}.pub").read_text().strip()


def ssh_options(port: int, identity: Path | None) -> list[str]:
    options = [
        *("-F", "/dev/null"),
        *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
        *("-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"),
        *("-o", "ConnectTimeout=20", "-o", "ControlMaster=no"),
    ]
    if identity is not None:
        options += ["-i", str(identity)]
    else:
        options += ["-o", "PubkeyAuthentication=no"]
    return options


def ssh(
    port: int,
    login: str,
    *command: str,
    identity: Path | None = None,
    extra: Sequence[str] = (),
    input: bytes | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    argv = ["ssh", *ssh_options(port, identity), "-p", str(port), *extra, f"{login}@127.0.0.1"]
    return subprocess.run(
        [*argv, *command],
        input=input if input is not None else b"",
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "SSH_AUTH_SOCK": ""},
    )


def scp(
    port: int, identity: Path | None, *paths: str, timeout: float = 60
) -> subprocess.CompletedProcess:
    argv = ["scp", *ssh_options(port, identity), "-P", str(port), *paths]
    return subprocess.run(
        argv, capture_output=True, timeout=timeout, env={**os.environ, "SSH_AUTH_SOCK": ""}
    )


class Interactive:
    """``ssh -tt`` on a pseudo-terminal of the test, as a person at a terminal runs it."""

    def __init__(self, port: int, login: str, identity: Path | None) -> None:
        argv = ["ssh", *ssh_options(port, identity), "-tt", "-p", str(port), f"{login}@127.0.0.1"]
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become ssh on the new terminal
            _set_size(0, 100, 30)
            os.environ["SSH_AUTH_SOCK"] = ""
            os.execvp(argv[0], argv)  # noqa: S606 - the client itself, as a person runs it
        self.output = bytearray()

    def resize(self, cols: int, rows: int) -> None:
        """As a person resizing the window: ssh gets SIGWINCH and tells the server."""
        _set_size(self.fd, cols, rows)

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def expect(self, needle: bytes, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} not seen in {bytes(self.output[-2000:])!r}")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"ssh ended before {needle!r}: {bytes(self.output)!r}")
                self.output += chunk
        return bytes(self.output)

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with_pid, status = os.waitpid(self.pid, os.WNOHANG)
            if with_pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            # Keep the terminal drained so ssh can finish writing.
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                with contextlib.suppress(OSError):
                    self.output += os.read(self.fd, 65536)
        raise AssertionError("ssh did not end")

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
