"""The sandbox exec agent that runs inside a PVE LXC container (stdlib only).

PVE's API has no exec for containers (``pct exec`` is CLI-only on the node), so each
container template carries this one file and a service that runs it (see
docs/providers/pve.md). The control plane reaches it over the container's network.

Authentication is per sandbox: when the provider makes a container it writes a fresh
random secret into the container's runtime environment (the PVE config key ``env``,
``SANDBOX_AGENT_SECRET=...``). The agent reads it from its own environment or from
``/proc/1/environ`` (the container's init). The secret never crosses the network: each
request carries an HMAC-SHA256 over method, path, time, a nonce and the body; the agent
rejects stale times and reused nonces, and signs its answer the same way so the
provider knows it talked to this sandbox's agent.

Terminals (``POST /v1/terminal``): the request is signed like an exec; the agent answers
``200`` (signed) and the connection then carries *frames* both ways, each authenticated
with a key of this session alone (``session_key``: the secret and the request's nonce), a
sequence number and the direction, so a frame cannot be forged, replayed, reordered or
reflected. The client sends input (``i``), window sizes (``r``: cols, rows) and ``c``
(close); the agent sends output (``o``), the exit status (``x``, once the process ended)
and ``e`` (the output ended: nothing holds the terminal any more). Closing the connection
or a ``c`` kills the process and every process of its terminal session. The pseudo-terminal
is the guest's own (``openpty`` here, inside the container or VM).

Processes (``POST /v1/process``): the same, without a terminal: the command's stdin, stdout
and stderr are pipes, so bytes pass untouched (scp, sftp) and the two outputs stay apart.
Frames are authenticated as a terminal's (with a key of their own kind: ``session_key``
with ``"process"``). The client sends input (``i``), the end of the input (``z``: the
command reads end-of-file) and ``c`` (close); the agent sends stdout (``1``), stderr
(``2``), the exit status (``x``) and ``e`` once both outputs ended (or the command ended
and its pipes are drained: background children holding them do not keep the session
open). Closing the connection or a ``c`` kills the command's whole session, as for a
terminal.

Run it by hand: ``python3 agent.py --listen 0.0.0.0:7391 --workdir /root/work``; in a VM
the provider writes this file and ``--secret-file`` through the QEMU guest agent and
starts it with ``--daemon`` (see docs/providers/pve.md).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SECRET_ENV = "SANDBOX_AGENT_SECRET"  # noqa: S105 - the variable's name, not a secret
DEFAULT_PORT = 7391
#: Requests whose time is further than this from the agent's clock are refused.
CLOCK_WINDOW = 120.0
OUTPUT_LIMIT = 1024 * 1024
MAX_BODY = 1024 * 1024
#: Largest frame payload either side sends or accepts.
MAX_FRAME = 64 * 1024
#: Frame header: kind (one byte), sequence number, payload length; a 32-byte MAC follows.
FRAME_HEADER = struct.Struct(">cQI")
MAC_SIZE = 32
#: Directions, mixed into every frame's MAC (a frame cannot be sent back to its sender).
TO_AGENT, TO_CLIENT = b"C", b"A"
#: Terminal sizes the agent accepts (the control plane checks the same bound).
MAX_CELLS = 1000


def sign(secret: str, *parts: str | bytes) -> str:
    """HMAC-SHA256 over the parts, separated by newlines (the wire format of both sides)."""
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    for index, part in enumerate(parts):
        if index:
            mac.update(b"\n")
        mac.update(part if isinstance(part, bytes) else part.encode())
    return mac.hexdigest()


def session_key(secret: str, nonce: str, purpose: str = "terminal") -> bytes:
    """The key that authenticates the frames of the session opened with ``nonce``
    (``purpose``: ``terminal`` or ``process``; a frame of one kind is no frame of the other)."""
    return sign(secret, purpose, nonce).encode()


def frame(key: bytes, direction: bytes, kind: bytes, seq: int, payload: bytes = b"") -> bytes:
    """One authenticated frame (see the module's docstring)."""
    header = FRAME_HEADER.pack(kind, seq, len(payload))
    mac = hmac.new(key, direction + header + payload, hashlib.sha256).digest()
    return header + payload + mac


class FrameReader:
    """Parses and checks the frames arriving in one direction; ``ValueError`` on anything
    forged, replayed, out of order or too large."""

    def __init__(self, key: bytes, direction: bytes) -> None:
        self.key = key
        self.direction = direction
        self.seq = 0
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buffer += data
        frames = []
        while len(self.buffer) >= FRAME_HEADER.size:
            kind, seq, length = FRAME_HEADER.unpack_from(self.buffer)
            if length > MAX_FRAME:
                raise ValueError("frame too large")
            end = FRAME_HEADER.size + length + MAC_SIZE
            if len(self.buffer) < end:
                break
            header = bytes(self.buffer[: FRAME_HEADER.size])
            payload = bytes(self.buffer[FRAME_HEADER.size : end - MAC_SIZE])
            given = bytes(self.buffer[end - MAC_SIZE : end])
            expected = hmac.new(
                self.key, self.direction + header + payload, hashlib.sha256
            ).digest()
            if not hmac.compare_digest(given, expected):
                raise ValueError("a frame is not authentic")
            if seq != self.seq:
                raise ValueError("a frame is out of sequence")
            self.seq += 1
            del self.buffer[:end]
            frames.append((kind, payload))
        return frames


def secret_from_environment() -> str | None:
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV]
    with contextlib.suppress(OSError):
        for item in Path("/proc/1/environ").read_bytes().split(b"\0"):
            key, _, value = item.partition(b"=")
            if key.decode(errors="replace") == SECRET_ENV and value:
                return value.decode()
    return None


class Agent:
    """The agent's state: its secret, working directory, seen nonces and live commands."""

    def __init__(
        self,
        secret: str,
        workdir: Path,
        secret_file: Path | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        #: What terminals start from (None: the agent's own environment).
        self.environment = environment
        self._secret = secret
        self._secret_file = secret_file
        self._secret_seen: tuple[int, int] | None = None
        self.workdir = workdir
        self._nonces: dict[str, float] = {}
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        #: Live terminals and processes (``close`` kills them).
        self._terminals: set[Terminal | Process] = set()
        self._closed = False

    @property
    def secret(self) -> str:
        """The secret; with a secret file, what it holds now (the provider rewrites it)."""
        if self._secret_file is not None:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                info = self._secret_file.stat()
                if (info.st_mtime_ns, info.st_size) != self._secret_seen:
                    self._secret = self._secret_file.read_text().strip()
                    self._secret_seen = (info.st_mtime_ns, info.st_size)
        return self._secret

    def fresh(self, stamp: str, nonce: str) -> bool:
        try:
            when = float(stamp)
        except ValueError:
            return False
        now = time.time()
        if abs(now - when) > CLOCK_WINDOW or not 8 <= len(nonce) <= 128:
            return False
        with self._lock:
            for old in [n for n, t in self._nonces.items() if now - t > 2 * CLOCK_WINDOW]:
                del self._nonces[old]
            if nonce in self._nonces:
                return False
            self._nonces[nonce] = now
        return True

    def run(self, argv: list[str], timeout: float) -> dict:
        self.workdir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            argv,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a timeout kills the command's whole process group
        )
        with self._lock:
            if self._closed:
                _kill(proc)
            self._procs.add(proc)
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc)
            out, err = proc.communicate()
        finally:
            with self._lock:
                self._procs.discard(proc)
        return {
            "exit_code": proc.returncode,
            "stdout_b64": base64.b64encode(out[:OUTPUT_LIMIT]).decode(),
            "stderr_b64": base64.b64encode(err[:OUTPUT_LIMIT]).decode(),
            "stdout_truncated": len(out) > OUTPUT_LIMIT,
            "stderr_truncated": len(err) > OUTPUT_LIMIT,
            "timed_out": timed_out,
        }

    def close(self) -> None:
        with self._lock:
            self._closed = True
            procs = list(self._procs)
            terminals = list(self._terminals)
        for proc in procs:
            _kill(proc)
        for terminal in terminals:
            terminal.kill()

    def _command(self, request: dict) -> tuple[list[str], dict[str, str]]:
        """A session's argv and environment from its request (``ValueError`` when bad)."""
        argv = [str(part) for part in request["argv"]]
        env = {str(k): str(v) for k, v in dict(request.get("env") or {}).items()}
        if not argv or any("\0" in part for part in argv):
            raise ValueError("argv is required and holds no NUL")
        if any("\0" in k or "=" in k or not k or "\0" in v for k, v in env.items()):
            raise ValueError("bad environment variable")
        self.workdir.mkdir(parents=True, exist_ok=True)
        source = os.environ if self.environment is None else self.environment
        base = {k: v for k, v in source.items() if k != SECRET_ENV}
        base.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        base.setdefault("HOME", str(Path.home()))
        return argv, {**base, **env}

    def _keep(self, session: Terminal | Process) -> None:
        with self._lock:
            if self._closed:
                session.kill()
            self._terminals.add(session)

    def open_terminal(self, request: dict) -> Terminal:
        cols, rows = int(request.get("cols", 80)), int(request.get("rows", 24))
        if not (1 <= cols <= MAX_CELLS and 1 <= rows <= MAX_CELLS):
            raise ValueError(f"columns and rows go from 1 to {MAX_CELLS}")
        argv, env = self._command(request)
        terminal = Terminal(argv, cols, rows, env, self.workdir)
        self._keep(terminal)
        return terminal

    def open_process(self, request: dict) -> Process:
        argv, env = self._command(request)
        process = Process(argv, env, self.workdir)
        self._keep(process)
        return process

    def forget(self, terminal: Terminal | Process) -> None:
        with self._lock:
            self._terminals.discard(terminal)


def _take_terminal() -> None:  # runs in the child, between fork and exec
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A process on a new pseudo-terminal, leader of its own session."""

    def __init__(
        self, argv: list[str], cols: int, rows: int, env: dict[str, str], cwd: Path
    ) -> None:
        self.master, slave = os.openpty()
        try:
            os.set_inheritable(self.master, False)
            self.resize(cols, rows)
            self.proc = subprocess.Popen(
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=env,
                preexec_fn=_take_terminal,  # two syscalls between fork and exec
            )
        except BaseException:
            os.close(self.master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(self.master, False)
        self.killed = False

    def resize(self, cols: int, rows: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def kill(self) -> None:
        """Kill the process and every process of its session, until none is left."""
        self.killed = True
        _kill_session(self.proc)


class Process:
    """A command with pipes for its standard streams, leader of its own session."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # ``kill`` finds its children by the session
        )
        pipes = (self.proc.stdin, self.proc.stdout, self.proc.stderr)
        stdin, stdout, stderr = (pipe.fileno() for pipe in pipes if pipe is not None)
        self.stdin: int | None = stdin
        self.outputs = {stdout: b"1", stderr: b"2"}
        for fd in (self.stdin, *self.outputs):
            os.set_blocking(fd, False)

    def close_stdin(self) -> None:
        if self.stdin is not None and self.proc.stdin:
            self.stdin = None
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def kill(self) -> None:
        _kill_session(self.proc)

    def release(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                if pipe:
                    pipe.close()


def _kill_session(proc: subprocess.Popen) -> None:
    """Kill ``proc`` (a session leader) and every process of its session, until none is
    left."""
    sid = proc.pid
    for _ in range(200):
        found = False
        for pid in _session_members(sid):
            found = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            found = True
        if not found:
            return
        time.sleep(0.005)


def _session_members(sid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        # state ppid pgrp session ...; zombies are gone already, their parent reaps them.
        if len(fields) > 3 and fields[0] != b"Z" and int(fields[3]) == sid:
            found.append(int(entry))
    return found


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class _Handler(BaseHTTPRequestHandler):
    server_version = "sandbox-agent/1"
    protocol_version = "HTTP/1.1"
    agent: Agent  # set on the per-server subclass

    def log_message(self, format: str, *args: object) -> None:  # quiet by default
        return

    def _answer(self, status: int, payload: dict, nonce: str = "") -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if nonce:
            self.send_header(
                "X-Sandbox-Signature", sign(self.agent.secret, "response", nonce, body)
            )
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/v1/health":
            self._answer(200, {"ok": True, "version": 1})
        else:
            self._answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path not in ("/v1/exec", "/v1/terminal", "/v1/process"):
            self._answer(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._answer(413, {"error": "request too large"})
            return
        body = self.rfile.read(length)
        stamp = self.headers.get("X-Sandbox-Time", "")
        nonce = self.headers.get("X-Sandbox-Nonce", "")
        given = self.headers.get("X-Sandbox-Signature", "")
        expected = sign(self.agent.secret, "POST", self.path, stamp, nonce, body)
        if not hmac.compare_digest(given, expected) or not self.agent.fresh(stamp, nonce):
            self._answer(401, {"error": "bad signature, stale time or reused nonce"})
            return
        if self.path == "/v1/terminal":
            self._terminal(body, nonce)
            return
        if self.path == "/v1/process":
            self._process(body, nonce)
            return
        try:
            request = json.loads(body)
            argv = [str(part) for part in request["argv"]]
            timeout = float(request.get("timeout", 60))
            if not argv or timeout <= 0:
                raise ValueError("argv and timeout are required")
        except (ValueError, KeyError, TypeError) as exc:
            self._answer(400, {"error": f"bad request: {exc}"}, nonce)
            return
        try:
            result = self.agent.run(argv, timeout)
        except OSError as exc:  # no such program: the shell's convention is exit code 127
            result = {
                "exit_code": 127,
                "stdout_b64": "",
                "stderr_b64": base64.b64encode(f"{argv[0]}: {exc.strerror}\n".encode()).decode(),
                "stdout_truncated": False,
                "stderr_truncated": False,
                "timed_out": False,
            }
        self._answer(200, result, nonce)

    # --- terminals -------------------------------------------------------------------------

    def _terminal(self, body: bytes, nonce: str) -> None:
        try:
            terminal = self.agent.open_terminal(json.loads(body))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._answer(400, {"error": f"bad request: {exc}"}, nonce)
            return
        except OSError as exc:
            self._answer(400, {"error": f"cannot run the command: {exc.strerror}"}, nonce)
            return
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/x-sandbox-terminal")
        self.send_header("X-Sandbox-Signature", sign(self.agent.secret, "response", nonce, b""))
        self.end_headers()
        self.wfile.flush()
        try:
            _TerminalRelay(self.connection, terminal, session_key(self.agent.secret, nonce)).run()
        finally:
            self.agent.forget(terminal)

    # --- processes -------------------------------------------------------------------------

    def _process(self, body: bytes, nonce: str) -> None:
        try:
            process = self.agent.open_process(json.loads(body))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._answer(400, {"error": f"bad request: {exc}"}, nonce)
            return
        except OSError as exc:
            self._answer(400, {"error": f"cannot run the command: {exc.strerror}"}, nonce)
            return
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/x-sandbox-process")
        self.send_header("X-Sandbox-Signature", sign(self.agent.secret, "response", nonce, b""))
        self.end_headers()
        self.wfile.flush()
        key = session_key(self.agent.secret, nonce, "process")
        try:
            _ProcessRelay(self.connection, process, key).run()
        finally:
            self.agent.forget(process)


class _Relay:
    """Carries one session (a terminal or a process) over the connection until the client
    closes it or goes away: signed frames out, the client's frames in, the exit status,
    the end. Subclasses pump the session's output and take its input."""

    def __init__(self, conn, session, key: bytes) -> None:
        self.conn = conn
        self.session = session
        self.key = key
        self.seq = 0
        self.send_lock = threading.Lock()
        self.connected = True
        self.done = False
        self.ended = False
        # The rest of the request's buffered input (frames sent right after the request).
        self.incoming = FrameReader(key, TO_AGENT)

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        with self.send_lock:
            if not self.connected:
                return
            data = frame(self.key, TO_CLIENT, kind, self.seq, payload)
            self.seq += 1
            try:
                self.conn.sendall(data)
            except OSError:
                self.connected = False

    def run(self) -> None:
        pump = threading.Thread(target=self._pump_output, daemon=True)
        pump.start()
        threading.Thread(target=self._report_exit, daemon=True).start()
        try:
            self._read_frames()
        finally:
            self.session.kill()
            self.done = True
            pump.join(5)
            if not self.ended:
                self.send(b"e")
            with self.send_lock:
                self.connected = False
            if not pump.is_alive():
                self._release()

    def _report_exit(self) -> None:
        code = self.session.proc.wait()
        self.send(b"x", struct.pack(">i", code))

    def _output_ended(self) -> None:
        if not self.done:  # the output ended by itself (or the agent is closing)
            self.session.proc.wait()
            self.ended = True
            self.send(b"e")

    def _read_frames(self) -> None:
        while True:
            try:
                data = self.conn.recv(MAX_FRAME + 1024)
            except OSError:
                return
            if not data:
                return
            try:
                frames = self.incoming.feed(data)
            except ValueError:
                return  # forged or mangled: end the session
            for kind, payload in frames:
                if kind == b"c" or not self._take(kind, payload):
                    return

    def _client_gone_while_full(self, fd: int) -> bool:
        """Wait up to a second for ``fd`` to take input; True when the client hung up."""
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        poller.register(self.conn, select.POLLRDHUP)
        return any(
            other != fd and events & (select.POLLRDHUP | select.POLLHUP)
            for other, events in poller.poll(1000)
        )

    def _pump_output(self) -> None:
        raise NotImplementedError

    def _take(self, kind: bytes, payload: bytes) -> bool:
        """Act on one of the client's frames; False ends the session."""
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError


class _TerminalRelay(_Relay):
    """A terminal: output from its master, input and resizes to it."""

    def _release(self) -> None:
        os.close(self.session.master)

    def _pump_output(self) -> None:
        master = self.session.master
        while not self.done:
            select.select([master], [], [], 0.25)
            try:
                chunk = os.read(master, MAX_FRAME)
            except BlockingIOError:
                continue
            except OSError as exc:
                # EIO: nothing holds the terminal any more.
                chunk = b"" if exc.errno == errno.EIO else None
            if not chunk:
                break
            self.send(b"o", chunk)
        self._output_ended()

    def _take(self, kind: bytes, payload: bytes) -> bool:
        if kind == b"r" and len(payload) == 4:
            cols, rows = struct.unpack(">HH", payload)
            if 1 <= cols <= MAX_CELLS and 1 <= rows <= MAX_CELLS:
                self.session.resize(cols, rows)
        elif kind == b"i":
            return self._write_input(payload)
        return True

    def _write_input(self, data: bytes) -> bool:
        """Type ``data`` (waiting while the terminal's input is full); False when the
        client hung up meanwhile."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.session.master, view) :]
                continue
            except BlockingIOError:
                pass
            except OSError:
                return True  # the terminal is gone; the output side reports the end
            if self._client_gone_while_full(self.session.master):
                return False
        return True


class _ProcessRelay(_Relay):
    """A process: stdout and stderr from its pipes (the frames are described in the
    module's docstring), input and end of input to its stdin."""

    def _release(self) -> None:
        self.session.release()

    def _drain(self, fd: int) -> bool:
        """Send what ``fd`` holds now; False once it reached its end."""
        while True:
            try:
                chunk = os.read(fd, MAX_FRAME)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not chunk:
                return False
            self.send(self.session.outputs[fd], chunk)

    def _pump_output(self) -> None:
        open_fds = list(self.session.outputs)
        while open_fds and not self.done:
            exited = self.session.proc.poll() is not None
            ready, _, _ = select.select(open_fds, [], [], 0.25)
            for fd in ready:
                if not self._drain(fd):
                    open_fds.remove(fd)
            if exited:
                # It had ended before that last look: what it wrote is in the pipes and
                # was sent; background children holding them do not keep the session.
                for fd in list(open_fds):
                    self._drain(fd)
                break
        self._output_ended()

    def _take(self, kind: bytes, payload: bytes) -> bool:
        if kind == b"z":
            self.session.close_stdin()
        elif kind == b"i":
            return self._write_input(payload)
        return True

    def _write_input(self, data: bytes) -> bool:
        """Pass ``data`` to the command's stdin (waiting while the pipe is full); False
        when the client hung up meanwhile. Input after the end of input, or once the
        command stopped reading, is dropped."""
        view = memoryview(data)
        while view:
            stdin = self.session.stdin
            if stdin is None:
                return True
            try:
                view = view[os.write(stdin, view) :]
                continue
            except BlockingIOError:
                pass
            except OSError:  # EPIPE: nobody reads it any more
                self.session.close_stdin()
                return True
            if self._client_gone_while_full(stdin):
                return False
        return True


class AgentServer:
    """The agent listening on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secret: str,
        workdir: Path,
        secret_file: Path | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.agent = Agent(secret, workdir, secret_file, environment)
        handler = type("Handler", (_Handler,), {"agent": self.agent})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address
        self._thread: threading.Thread | None = None

    def start(self, poll_interval: float = 0.5) -> AgentServer:
        """Serve in a thread; ``close`` takes up to ``poll_interval`` seconds."""
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, args=(poll_interval,), daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self.agent.close()
        self.httpd.shutdown()
        self.httpd.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sandboxes agent for PVE guests")
    parser.add_argument("--listen", default=f"0.0.0.0:{DEFAULT_PORT}")
    parser.add_argument("--workdir", default="/root/work")
    parser.add_argument(
        "--secret-file",
        help=f"read the secret from this file (re-read when it changes), not {SECRET_ENV}",
    )
    parser.add_argument(
        "--daemon",
        action="store_true",
        help="serve in the background once listening; exit 0 at once if the address is taken",
    )
    args = parser.parse_args(argv)
    secret_file = Path(args.secret_file) if args.secret_file else None
    secret = secret_file.read_text().strip() if secret_file else secret_from_environment()
    if not secret:
        parser.error(f"{SECRET_ENV} is not set (the provider sets it in the CT's 'env')")
    host, _, port = args.listen.rpartition(":")
    try:
        server = AgentServer(
            host.strip("[]"),
            int(port),
            secret=secret,
            workdir=Path(args.workdir),
            secret_file=secret_file,
        )
    except OSError as exc:
        if args.daemon and exc.errno == errno.EADDRINUSE:
            return 0  # an agent serves there already; it reads the secret file afresh
        raise
    if args.daemon and os.fork():
        os._exit(0)  # the parent: the agent is listening
    if args.daemon:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
    server.httpd.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
