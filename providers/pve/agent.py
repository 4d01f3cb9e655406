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

Run it by hand: ``python3 agent.py --listen 0.0.0.0:7391 --workdir /root/work``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import os
import signal
import subprocess
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


def sign(secret: str, *parts: str | bytes) -> str:
    """HMAC-SHA256 over the parts, separated by newlines (the wire format of both sides)."""
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    for index, part in enumerate(parts):
        if index:
            mac.update(b"\n")
        mac.update(part if isinstance(part, bytes) else part.encode())
    return mac.hexdigest()


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

    def __init__(self, secret: str, workdir: Path) -> None:
        self.secret = secret
        self.workdir = workdir
        self._nonces: dict[str, float] = {}
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self._closed = False

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
        for proc in procs:
            _kill(proc)


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
        if self.path != "/v1/exec":
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


class AgentServer:
    """The agent listening on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, host: str, port: int, *, secret: str, workdir: Path) -> None:
        self.agent = Agent(secret, workdir)
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
    parser = argparse.ArgumentParser(description="Sandboxes exec agent for PVE containers")
    parser.add_argument("--listen", default=f"0.0.0.0:{DEFAULT_PORT}")
    parser.add_argument("--workdir", default="/root/work")
    args = parser.parse_args(argv)
    secret = secret_from_environment()
    if not secret:
        parser.error(f"{SECRET_ENV} is not set (the provider sets it in the CT's 'env')")
    host, _, port = args.listen.rpartition(":")
    server = AgentServer(host, int(port), secret=secret, workdir=Path(args.workdir))
    server.httpd.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
