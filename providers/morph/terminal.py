"""Terminal sessions on Morph, over Morph's SSH gateway (what the SDK's ``ssh()`` uses).

The gateway takes ``<instance id>:<API key>`` as the user name with any public key (the
SDK sends a throwaway key; so do we), and leads to the instance's sshd: the pseudo-terminal
is the VM's own. We connect with paramiko ourselves rather than through
``Instance.ssh_connect``, which retries for up to five minutes and prints to the console;
here one attempt with bounded timeouts, and errors without the key.

The gateway's host key is not pinned (Morph publishes none; the SDK accepts any key too),
so the API key in the user name is only as safe as the network path to the gateway:
point ``MORPH_SSH_HOSTNAME`` only at Morph's gateway.

An SSH server only hangs the terminal up when its client leaves: a shell's background jobs
would live on. So the session's process carries a token (``providers.terminal_marks``) and
``close`` kills everything bearing it, through Morph's exec.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import select
import shlex
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import paramiko

from providers.base import DEFAULT_TERM, TerminalSession, terminal_size
from providers.errors import Conflict, Unavailable
from providers.terminal_marks import KILL_SCRIPT, MARKER_VARIABLE

if TYPE_CHECKING:
    from providers.base import Instance

CONNECT_TIMEOUT = 10.0
_CHUNK = 65536
#: Runs the command in the home directory (where exec runs), with the variables.
_WRAPPER = 'cd "${HOME:-/root}" || exit 126; exec "$@"'


@functools.lru_cache(maxsize=1)
def _throwaway_key() -> paramiko.PKey:
    """The key offered to the gateway, which authenticates by the user name alone."""
    return paramiko.RSAKey.generate(2048)


def open_session(
    instance: Instance,
    *,
    hostname: str,
    port: int,
    api_key: str,
    argv: list[str],
    cols: int,
    rows: int,
    variables: Mapping[str, str],
    redact: Callable[[str], str],
) -> MorphTerminal:
    cols, rows = terminal_size(cols, rows)
    token = secrets.token_hex(16)
    assignments = [f"{k}={v}" for k, v in {**variables, MARKER_VARIABLE: token}.items()]
    command = shlex.join(["/bin/sh", "-c", _WRAPPER, "sh", "env", "--", *assignments, *argv])
    client = paramiko.SSHClient()
    # Morph publishes no host key to pin (see the module's docstring).
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507
    where = f"Morph's SSH gateway at {hostname}:{port}"
    try:
        client.connect(
            hostname,
            port=port,
            username=f"{instance.id}:{api_key}",
            pkey=_throwaway_key(),
            look_for_keys=False,
            allow_agent=False,
            timeout=CONNECT_TIMEOUT,
            banner_timeout=CONNECT_TIMEOUT,
            auth_timeout=CONNECT_TIMEOUT,
        )
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        channel = transport.open_session(timeout=CONNECT_TIMEOUT)
        channel.get_pty(term=variables.get("TERM", DEFAULT_TERM), width=cols, height=rows)
        channel.exec_command(command)
    except paramiko.AuthenticationException:
        client.close()
        raise Conflict(
            f"{where} refused instance {instance.id} (not running, or the key is not valid)",
            ref=instance.id,
        ) from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        raise Unavailable(
            f"cannot open a terminal through {where}: {redact(str(exc)) or type(exc).__name__}",
            ref=instance.id,
        ) from None
    return MorphTerminal(instance, client, channel, token)


class MorphTerminal(TerminalSession):
    def __init__(
        self,
        instance: Instance,
        client: paramiko.SSHClient,
        channel: paramiko.Channel,
        token: str,
    ) -> None:
        self._instance = instance
        self._client = client
        self._channel = channel
        self._token = token
        self._closed = False
        self._exit_code: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<MorphTerminal {self._instance.id} exit={self._exit_code}>"

    def read(self, timeout: float | None = None) -> bytes:
        if self._closed:
            return b""
        channel = self._channel
        # Wait on the channel's own event pipe, not with a channel timeout, which would
        # apply to a writer in another thread too.
        if not (channel.recv_ready() or channel.eof_received or channel.closed):
            ready, _, _ = select.select([channel], [], [], timeout)
            if not ready:
                raise TimeoutError("no terminal output")
        try:
            return channel.recv(_CHUNK)
        except (OSError, EOFError, paramiko.SSHException):
            return b""

    def write(self, data: bytes) -> None:
        if self._closed:
            raise Conflict("the terminal session is closed")
        try:
            self._channel.sendall(bytes(data))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise Conflict(f"the terminal is gone: {exc}") from None

    def resize(self, cols: int, rows: int) -> None:
        cols, rows = terminal_size(cols, rows)
        if self._closed:
            raise Conflict("the terminal session is closed")
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self._channel.resize_pty(width=cols, height=rows)

    def _status(self) -> int | None:
        if self._exit_code is None and self._channel.exit_status_ready():
            code = self._channel.recv_exit_status()
            # paramiko reports -1 when the server sent a signal's name, not a status.
            self._exit_code = code if code >= 0 else -9
        return self._exit_code

    @property
    def exit_code(self) -> int | None:
        return self._status()

    def wait(self, timeout: float | None = None) -> int:
        if self._status() is None:
            self._channel.status_event.wait(timeout)
        code = self._status()
        if code is None:
            raise TimeoutError("the terminal's process is still running")
        return code

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            with contextlib.suppress(Exception):
                self._instance.exec(["/bin/sh", "-c", KILL_SCRIPT, "sh", self._token], 60)
        finally:
            with contextlib.suppress(Exception):
                self._channel.close()
            self._client.close()
        if self._status() is None:
            with contextlib.suppress(Exception):
                self._channel.status_event.wait(1)
            if self._status() is None:
                self._exit_code = -9
