"""The SSH gateway: OpenSSH clients into sandboxes of every provider (docs/ssh.md).

An asyncssh server (``manage.py ssh_gateway``; ``make run`` starts it beside the web
server and the worker). It sits with the API and the views: it speaks SSH and calls the
services (``services/ssh.py`` for logins, sessions and forwarding, ``services/terminals``
for a shell, ``services/interactive`` for a buffered command); it never calls a provider.

The event loop only speaks SSH. Everything that blocks (the database, the provider) runs in
threads: each session has a reader thread (the sandbox's output to the channel, waiting
while the client's window is full) and a writer thread (the channel's input to the
sandbox, reading paused while it is behind), so a slow sandbox or client holds back only
its own session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncssh
from django.conf import settings
from django.db import close_old_connections, connection

from sandboxes.services import interactive, terminals
from sandboxes.services import ssh as ssh_service
from sandboxes.services.errors import ServiceError

log = logging.getLogger("sandboxes.ssh_gateway")

#: Queued input chunks past which the channel stops reading from the client.
_INPUT_HIGH = 64
_EOF = object()


def _in_thread(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` as a thread of its own would: with a usable database connection."""
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        # Executor threads live on; a connection left open would be reused after the
        # database dropped it (close_old_connections on the next call handles that too).
        close_old_connections()


async def _run(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(_in_thread, fn, *args, **kwargs))


def _exit_status(code: int | None) -> int:
    if code is None:
        return 255
    return 128 - code if code < 0 else code & 0xFF


class GatewayServer(asyncssh.SSHServer):
    """One client connection: who it is (``login``) and its channels."""

    def __init__(self) -> None:
        self.login: ssh_service.Login | None = None
        self.client = ""
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.client = str(peer[0])

    # --- authentication

    async def begin_auth(self, username: str) -> bool:
        if ssh_service.is_token(username):
            login = await _run(ssh_service.login_with_token, login=username, client=self.client)
            if login is not None:
                self.login = login
                return False  # the token is the credential: no further authentication
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        fingerprint = key.get_fingerprint("sha256")
        if ssh_service.is_token(username):
            return False
        login = await _run(
            ssh_service.login_with_key, login=username, fingerprint=fingerprint, client=self.client
        )
        if login is None:
            return False
        self.login = login
        return True

    # --- channels

    def session_requested(self) -> asyncssh.SSHServerSession:
        return GatewaySession(self)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        """``ssh -L``: only to the sandbox itself (checked here, before anything is
        opened), and only its exposed services (checked again when connecting)."""
        login = self.login
        if login is None:
            return False
        refusal = ssh_service.forward_refusal(
            sandbox=login.sandbox, host=dest_host, port=dest_port, check_port=False
        )
        if refusal:
            task = asyncio.get_running_loop().create_task(
                _run(
                    ssh_service.refuse_forward,
                    login=login,
                    host=dest_host,
                    port=dest_port,
                    message=refusal,
                )
            )
            _background.add(task)
            task.add_done_callback(_background.discard)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, refusal)
        return functools.partial(self._forward, dest_host, dest_port)

    async def _forward(
        self, host: str, port: int, reader: asyncssh.SSHReader, writer: asyncssh.SSHWriter
    ) -> None:
        assert self.login is not None
        session = None
        try:
            session = await _run(
                ssh_service.open_session,
                login=self.login,
                client=self.client,
                kind="forward",
                command=f"{host}:{port}",
            )
            sock = await _run(ssh_service.connect_forward, session=session, host=host, port=port)
        except ServiceError as exc:
            log.info("ssh -L %s:%s refused: %s", host, port, exc.message)
            writer.close()
            if session is not None:
                await _run(
                    ssh_service.close_session, session=session, exit_code=None, reason=exc.message
                )
            return
        up_reader, up_writer = await asyncio.open_connection(sock=sock)

        async def pump(source: Any, sink: Any) -> None:
            with contextlib.suppress(Exception):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            with contextlib.suppress(Exception):
                sink.write_eof()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            up_writer.close()
            writer.close()
            await _run(ssh_service.close_session, session=session, exit_code=None)


#: Tasks the loop must keep a reference to until they finish.
_background: set[asyncio.Task] = set()


class GatewaySession(asyncssh.SSHServerSession):
    """One session channel: a shell, a command, or the sftp subsystem."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.chan: asyncssh.SSHServerChannel | None = None
        self.kind = ""
        self.command: str | None = None
        self.term: tuple[str, int, int] | None = None  # type, columns, rows
        self.target: Any = None  # the AuditedTerminal or the ProcessSession
        self.input: queue.Queue = queue.Queue()
        self.can_write = threading.Event()
        self.can_write.set()
        self.reading_paused = False
        self.gone = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- what the client asks for

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:
        self.chan = chan
        self.loop = asyncio.get_running_loop()

    def pty_requested(self, term_type: str, term_size: tuple, term_modes: dict) -> bool:
        cols, rows = term_size[0] or 80, term_size[1] or 24
        self.term = (term_type or "xterm-256color", min(cols, 1000), min(rows, 1000))
        return True

    def shell_requested(self) -> bool:
        self.kind = "shell"
        return True

    def exec_requested(self, command: str) -> bool:
        self.kind, self.command = "exec", command
        return bool(command)

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != "sftp":
            return False
        self.kind = "sftp"
        return True

    def session_started(self) -> None:
        task = asyncio.get_running_loop().create_task(self._serve())
        _background.add(task)
        task.add_done_callback(_background.discard)

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.input.put(data)
        if self.input.qsize() > _INPUT_HIGH and not self.reading_paused:
            self.reading_paused = True
            self.chan.pause_reading()

    def eof_received(self) -> bool:
        self.input.put(_EOF)
        return True  # keep our half open: the output may still come

    def terminal_size_changed(self, width: int, height: int, pixw: int, pixh: int) -> None:
        target = self.target
        if isinstance(target, terminals.AuditedTerminal) and width and height:
            self.loop.run_in_executor(
                None, _quietly, target.resize, min(width, 1000), min(height, 1000)
            )

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone.set()
        self.can_write.set()
        self.input.put(_EOF)
        target = self.target
        if target is not None:
            # End what runs in the sandbox; the reader thread then writes the audit trail
            # (the terminal's close with its reason, the session's end).
            raw = target.session if isinstance(target, terminals.AuditedTerminal) else target
            threading.Thread(target=_quietly, args=(raw.close,), daemon=True).start()

    # --- running it

    def _fail(self, message: str, status: int = 255) -> None:
        with contextlib.suppress(Exception):
            self.chan.write_stderr(f"sandboxes: {message}\r\n".encode())
            self.chan.exit(status)

    async def _serve(self) -> None:
        try:
            await self._open_and_pump()
        except Exception:  # a bug or the database gone: the client is told, not left hanging
            log.exception("ssh session failed")
            self._fail("the gateway failed to run this session; see its log")

    async def _open_and_pump(self) -> None:
        server = self.server
        login = server.login
        assert login is not None
        shown = self.command or ("(sftp)" if self.kind == "sftp" else "(login shell)")
        try:
            session = await _run(
                ssh_service.open_session,
                login=login,
                client=server.client,
                kind=self.kind,
                command=shown,
            )
        except ServiceError as exc:
            self._fail(exc.message)
            return
        sandbox, actor = login.sandbox, login.actor
        try:
            if self.term is not None and self.kind != "sftp":
                term_type, cols, rows = self.term
                self.target = await _run(
                    terminals.open_terminal,
                    sandbox=sandbox,
                    actor=actor,
                    command=self.command,
                    cols=cols,
                    rows=rows,
                    env={"TERM": term_type} if term_type.replace("-", "").isalnum() else None,
                )
                pumps = (self._pump_terminal_out, self._pump_terminal_in)
            elif await _run(ssh_service.streams_processes, sandbox):
                command = ssh_service.SFTP_SERVER_COMMAND if self.kind == "sftp" else None
                self.target = await _run(
                    ssh_service.open_process,
                    sandbox=sandbox,
                    actor=actor,
                    command=command or self.command or list(_LOGIN_SHELL),
                )
                pumps = (self._pump_process_out, self._pump_process_in)
            elif self.kind in ("exec", "shell") and self.command:
                await self._buffered(session)
                return
            else:
                why = await _run(ssh_service.process_refusal, sandbox)
                raise ServiceError(
                    f"{sandbox.provider} sandboxes cannot stream a command's input ({why}): "
                    "scp, sftp and a shell without a terminal are not available; "
                    "`ssh host command` and `ssh -t` work"
                )
        except ServiceError as exc:
            await _run(
                ssh_service.close_session, session=session, exit_code=None, reason=exc.message
            )
            self._fail(exc.message)
            return
        if self.gone.is_set():  # the client left while it was being opened
            await _run(self.target.close)
        reader = threading.Thread(target=self._finish_after, args=(pumps[0], session), daemon=True)
        writer = threading.Thread(target=_closing_db, args=(pumps[1],), daemon=True)
        reader.start()
        writer.start()

    async def _buffered(self, session: ssh_service.Session) -> None:
        """A command where the provider has no streamed processes: run to its end, then
        its output (stdout and stderr apart) and exit status."""
        try:
            result = await _run(
                interactive.exec_command,
                sandbox=self.server.login.sandbox,
                actor=self.server.login.actor,
                command=self.command,
                timeout_seconds=interactive.MAX_EXEC_TIMEOUT,
            )
        except ServiceError as exc:
            await _run(
                ssh_service.close_session, session=session, exit_code=None, reason=exc.message
            )
            self._fail(exc.message)
            return
        # The session's end is on the record before the client learns it ended.
        await _run(ssh_service.close_session, session=session, exit_code=result.exit_code)
        with contextlib.suppress(Exception):
            self.chan.write(result.stdout.encode())
            self.chan.write_stderr(result.stderr.encode())
            self.chan.exit(_exit_status(result.exit_code))

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the event loop from a pump thread."""
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self.loop.call_soon_threadsafe(_quietly, fn, *args)

    def _send(self, write: Callable[[bytes], None], data: bytes) -> None:
        self.can_write.wait()
        if not self.gone.is_set():
            self._call(write, data)

    def _next_input(self) -> Any:
        item = self.input.get()
        if self.reading_paused and self.input.qsize() < _INPUT_HIGH // 2:
            self.reading_paused = False
            self._call(self.chan.resume_reading)
        return item

    def _pump_terminal_out(self) -> int | None:
        terminal = self.target
        while not self.gone.is_set():
            chunk = terminal.read()
            if not chunk:
                break
            self._send(self.chan.write, chunk)
        with contextlib.suppress(TimeoutError):
            return terminal.wait(timeout=5)
        return None

    def _pump_terminal_in(self) -> None:
        while (item := self._next_input()) is not _EOF:
            try:
                self.target.write(item)
            except Exception:  # the terminal is gone; the reader ends the session
                return

    def _pump_process_out(self) -> int | None:
        process = self.target
        while not self.gone.is_set():
            stream, chunk = process.read()
            if not chunk:
                break
            write = self.chan.write_stderr if stream == process.STDERR else self.chan.write
            self._send(write, chunk)
        with contextlib.suppress(TimeoutError):
            return process.wait(timeout=5 if not self.gone.is_set() else 0)
        return None

    def _pump_process_in(self) -> None:
        process = self.target
        while (item := self._next_input()) is not _EOF:
            try:
                process.write(item)
            except Exception:  # it stopped reading (or ended): drop the rest
                return
        with contextlib.suppress(Exception):
            process.close_stdin()

    def _finish_after(self, pump: Callable[[], int | None], session: ssh_service.Session) -> None:
        code = None
        try:
            code = pump()
        except Exception:
            log.exception("ssh session pump failed")
        finally:
            target = self.target
            reason = "the client disconnected" if self.gone.is_set() else ""
            if isinstance(target, terminals.AuditedTerminal):
                _in_thread(target.close, reason or "the process ended")
            else:
                _quietly(target.close)
            if code is None:
                code = target.exit_code
            _in_thread(ssh_service.close_session, session=session, exit_code=code, reason=reason)
            self._call(self.chan.exit, _exit_status(code))
            connection.close()


#: A shell without a terminal (``ssh -T host``): the login shell terminals run
#: (``providers.base.DEFAULT_TERMINAL_COMMAND``; this layer does not import providers).
_LOGIN_SHELL = (
    "/bin/sh",
    "-c",
    "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi",
)


def _closing_db(fn: Callable[[], Any]) -> None:
    """Run a thread's work, then close the database connection it may have opened (typing
    notes the sandbox's activity now and then)."""
    try:
        fn()
    finally:
        connection.close()


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        log.debug("ignored", exc_info=True)


# --- the server


def host_key(path: Path) -> asyncssh.SSHKey:
    """The gateway's host key at ``path``, made (ed25519, 0600) when there is none: the
    same key across restarts, so clients' known_hosts stay valid."""
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.export_private_key("openssh"))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by others ({oct(mode)}): chmod 600 it")
    return asyncssh.read_private_key(str(path))


async def start(*, host: str, port: int, key_path: Path) -> asyncssh.SSHAcceptor:
    """Listen on ``host``:``port``; returns the acceptor (``close()`` stops it)."""
    return await asyncssh.create_server(
        GatewayServer,
        host,
        port,
        server_host_keys=[host_key(key_path)],
        encoding=None,  # bytes both ways: terminals, scp and sftp are binary
        agent_forwarding=False,
        x11_forwarding=False,
        allow_scp=False,
        line_editor=False,
        # A client that never authenticates is dropped after this long.
        login_timeout=60,
        keepalive_interval=60,
    )


def serve_forever(*, host: str, port: int, key_path: Path, ready: Callable[[], None]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        # Sessions hold threads for blocking calls; a few dozen at once is ordinary.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=64))
        await start(host=host, port=port, key_path=key_path)
        ready()
        await asyncio.Event().wait()

    asyncio.run(main())


def default_address() -> tuple[str, int, Path]:
    return settings.SANDBOX_SSH_HOST, settings.SANDBOX_SSH_PORT, settings.SANDBOX_SSH_HOST_KEY
