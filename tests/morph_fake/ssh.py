"""Morph's SSH gateway, faked on loopback with paramiko, for the fake API's instances.

As Morph's gateway does, it takes ``<instance id>:<API key>`` as the user name with any
public key (the SDK offers a throwaway one), and only for an instance that is ready. A
session runs for real on this host, like the fake's exec: in the instance's directory,
with a real pseudo-terminal when the client asked for one (``pty-req``, then
``window-change`` resizes it and the kernel sends SIGWINCH). It behaves as OpenSSH's
sshd does at the end: the exit status goes out when the process ends, the channel closes
once the terminal's output has ended, and a client that goes away makes the server close
the terminal's master, which hangs it up (SIGHUP to the session's leader and foreground
job; background jobs live on, exactly as with a real sshd).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import struct
import subprocess
import termios
import threading
from pathlib import Path

import paramiko

from tests.morph_fake.state import MorphState

PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


def _take_terminal() -> None:  # in the child, between fork and exec
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class _Session:
    """One channel's process (on a pseudo-terminal when one was asked for)."""

    def __init__(self) -> None:
        self.term = "dumb"
        self.size: tuple[int, int] | None = None  # cols, rows
        self.master: int | None = None
        self.proc: subprocess.Popen | None = None
        #: The client went away (the relay then closes the master: a hang-up).
        self.gone = False
        self.lock = threading.Lock()

    def resize(self, cols: int, rows: int) -> None:
        self.size = (cols, rows)
        with self.lock:
            if self.master is not None:
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def hang_up(self) -> None:
        with self.lock:
            if self.master is not None:
                os.close(self.master)
                self.master = None


class _Server(paramiko.ServerInterface):
    def __init__(self, gateway: FakeMorphSsh) -> None:
        self.gateway = gateway
        self.directory: Path | None = None
        self.sessions: dict[int, _Session] = {}

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ref, _, api_key = username.partition(":")
        if not api_key or not paramiko.util.constant_time_bytes_eq(
            api_key.encode(), self.gateway.api_key.encode()
        ):
            return paramiko.AUTH_FAILED
        state = self.gateway.state
        with state.lock:
            inst = state.instances.get(ref)
            if inst is None or inst.status != "ready":
                return paramiko.AUTH_FAILED
            self.directory = inst.directory
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session":
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        self.sessions[chanid] = _Session()
        return paramiko.OPEN_SUCCEEDED

    def check_channel_pty_request(
        self, channel, term, width, height, pixelwidth, pixelheight, modes
    ) -> bool:
        session = self.sessions[channel.get_id()]
        session.term = term.decode() if isinstance(term, bytes) else str(term)
        session.size = (max(1, int(width)), max(1, int(height)))
        return True

    def check_channel_window_change_request(
        self, channel, width, height, pixelwidth, pixelheight
    ) -> bool:
        self.sessions[channel.get_id()].resize(max(1, int(width)), max(1, int(height)))
        return True

    def check_channel_env_request(self, channel, name, value) -> bool:
        return False  # sshd's default: AcceptEnv names nothing

    def check_channel_shell_request(self, channel) -> bool:
        return self._run(channel, ["/bin/sh", "-l"])

    def check_channel_exec_request(self, channel, command) -> bool:
        text = command.decode() if isinstance(command, bytes) else str(command)
        return self._run(channel, ["/bin/sh", "-c", text])

    def _run(self, channel: paramiko.Channel, argv: list[str]) -> bool:
        session = self.sessions[channel.get_id()]
        if self.directory is None or session.proc is not None:
            return False
        env = {
            "HOME": str(self.directory),
            "PATH": PATH,
            "USER": "root",
            "SHELL": "/bin/sh",
            "TERM": session.term,
        }
        if session.size is None:
            threading.Thread(
                target=_run_piped, args=(channel, argv, self.directory, env), daemon=True
            ).start()
            return True
        master, slave = os.openpty()
        try:
            os.set_inheritable(master, False)
            session.master = master
            session.resize(*session.size)
            session.proc = subprocess.Popen(
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=self.directory,
                env=env,
                preexec_fn=_take_terminal,
            )
        except OSError:
            session.hang_up()
            return False
        finally:
            os.close(slave)
        threading.Thread(target=_relay, args=(channel, session), daemon=True).start()
        return True


def _relay(channel: paramiko.Channel, session: _Session) -> None:
    """Terminal output to the channel, the channel's data to the terminal, and the end."""
    proc, master = session.proc, session.master
    assert proc is not None
    assert master is not None

    def typed() -> None:
        while True:
            try:
                data = channel.recv(65536)
            except (OSError, EOFError):
                data = b""
            if not data:
                break
            try:
                os.write(master, data)
            except OSError:
                break
        session.gone = True  # the client went away: hang the terminal up, as sshd does

    def report_exit() -> None:
        code = proc.wait()
        with contextlib.suppress(Exception):
            channel.send_exit_status(code if code >= 0 else 128 - code)

    threading.Thread(target=typed, daemon=True).start()
    threading.Thread(target=report_exit, daemon=True).start()
    while not session.gone:
        try:
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                continue
            chunk = os.read(master, 65536)
        except OSError:
            chunk = b""  # EIO: nothing holds the terminal any more
        if not chunk:
            break
        try:
            channel.sendall(chunk)
        except OSError:
            break
    session.hang_up()
    if not session.gone:  # the output ended: the process ended first (sshd's order)
        proc.wait()
    with contextlib.suppress(Exception):
        channel.shutdown_write()
        channel.close()


def _run_piped(channel: paramiko.Channel, argv: list[str], cwd: Path, env: dict) -> None:
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    out, err = proc.communicate()
    with contextlib.suppress(Exception):
        channel.sendall(out)
        channel.sendall_stderr(err)
        code = proc.returncode
        channel.send_exit_status(code if code >= 0 else 128 - code)
        channel.close()


class FakeMorphSsh:
    """The gateway on ``127.0.0.1:<port>``; ``start()`` then ``stop()``."""

    def __init__(self, state: MorphState, api_key: str) -> None:
        self.state = state
        self.api_key = api_key
        self.host_key = paramiko.ECDSAKey.generate()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.hostname = "127.0.0.1"
        self._transports: list[paramiko.Transport] = []
        self._stopped = False

    def start(self) -> FakeMorphSsh:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            self._transports.append(transport)
            try:
                transport.start_server(server=_Server(self))
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()
                continue
            threading.Thread(target=self._serve, args=(transport,), daemon=True).start()

    @staticmethod
    def _serve(transport: paramiko.Transport) -> None:
        # Channels are handled by the ServerInterface callbacks; accepting them holds a
        # reference (paramiko closes a channel nobody holds).
        channels = []
        while transport.is_active():
            channel = transport.accept(1.0)
            if channel is not None:
                channels.append(channel)

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        for transport in self._transports:
            with contextlib.suppress(Exception):
                transport.close()
