"""The web terminal (issue 15): keystroke echo over its websocket, and what idle sessions
cost the control plane.

A real server as ``make run`` serves it: one uvicorn process on ``config.asgi``, the
`local` provider, SQLite (keystrokes never touch the database). A client signed in with a
Django session opens ``/ws/sandboxes/<id>/terminal/`` and types into bash: one key, then
backspace, each timed from the send to its echo arriving back (readline's echo: ``x``,
then ``\\b``). Target: p50 at most 3 ms. For comparison, the same keys straight through
the provider's terminal session in-process (no websocket, no event loop).

Memory: 100 more sessions opened and left idle (each attached to its own websocket, then
all detached), the server process's RSS and PSS growth divided by 100. Target: at most
1 MB each.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import ROOT, Result, run_child

REPEAT = int(os.environ.get("BENCH_TERMINAL_REPEAT", "1000"))
SESSIONS = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process, KiB."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


class Server:
    """One uvicorn process serving config.asgi, as ``make run`` starts it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = _free_port()
        command = [
            *(sys.executable, "-m", "uvicorn", "config.asgi:application"),
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("--no-proxy-headers", "--no-access-log", "--log-level", "warning"),
        ]
        self.process = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("uvicorn did not listen in time") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Terminal:
    """A websocket client of the web terminal."""

    def __init__(self, port: int, made: dict, query: str = "") -> None:
        from websockets.sync.client import connect

        self.ws = connect(
            f"ws://127.0.0.1:{port}/ws/sandboxes/{made['sandbox']}/terminal/{query}",
            origin=f"http://127.0.0.1:{port}",
            additional_headers={"Cookie": made["cookie"]},
            open_timeout=30,
            compression=None,  # as browsers talk to uvicorn for binary frames: no deflate
        )
        self.attached = json.loads(self.ws.recv(timeout=30))

    def settle(self) -> None:
        """Read until the shell has said all it will (its prompt)."""
        while True:
            try:
                self.ws.recv(timeout=0.5)
            except TimeoutError:
                return

    def echo_ms(self, key: bytes, expect: bytes) -> float:
        start = time.perf_counter()
        self.ws.send(key)
        seen = b""
        while expect not in seen:
            frame = self.ws.recv(timeout=10)
            if isinstance(frame, bytes):
                seen += frame
        return (time.perf_counter() - start) * 1000

    def close(self) -> None:
        self.ws.close()


def keystrokes(port: int, made: dict) -> list[float]:
    terminal = Terminal(port, made)
    terminal.settle()
    for _ in range(20):  # warm up
        terminal.echo_ms(b"x", b"x")
        terminal.echo_ms(b"\x7f", b"\x08")
    samples = []
    for _ in range(REPEAT // 2):
        samples.append(terminal.echo_ms(b"x", b"x"))
        samples.append(terminal.echo_ms(b"\x7f", b"\x08"))
    terminal.ws.send(json.dumps({"type": "close"}))
    terminal.close()
    return samples


def idle_memory(server: Server, made: dict) -> dict:
    # One session opened and ended first: thread pools, imports and caches warm, so the
    # growth below is the sessions' own.
    warm = Terminal(server.port, made)
    warm.settle()
    warm.ws.send(json.dumps({"type": "close"}))
    warm.close()
    time.sleep(1)
    before = _memory_kib(server.process.pid)
    clients = []
    for _ in range(SESSIONS):
        client = Terminal(server.port, made)
        client.settle()  # its shell is up and idle at its prompt
        clients.append(client)
    time.sleep(2)
    attached = _memory_kib(server.process.pid)
    for client in clients:
        client.close()
    time.sleep(2)
    detached = _memory_kib(server.process.pid)
    return {"before": before, "attached": attached, "detached": detached}


def run() -> list[Result]:
    data_dir = tempfile.mkdtemp(prefix="bench-terminal-")
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{data_dir}/bench.sqlite3",
        "SANDBOXES_DATA_DIR": data_dir,
        "DJANGO_SETTINGS_MODULE": "bench.api_settings",
        "PYTHONPATH": str(ROOT),
        "SANDBOX_PROVIDERS": "local",
        "LOCAL_SANDBOX_CGROUP_PARENT": f"sbx-bench-terminal-{os.getpid()}",
        "SANDBOX_TERMINAL_MAX_SESSIONS": str(SESSIONS + 10),
        "SANDBOX_TERMINAL_DETACH_SECONDS": "600",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("REDIS_URL", None)
    server = None
    try:
        made = run_child("terminal_child", "setup", str(REPEAT), env=env)
        server = Server(env)
        samples = keystrokes(server.port, made)
        memory = idle_memory(server, made)
    finally:
        if server is not None:
            server.stop()
        subprocess.run(
            [sys.executable, "-m", "bench.terminal_child", "cleanup"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)

    direct = made["direct"]
    p50, p99 = statistics.median(samples), _percentile(samples, 0.99)
    (rss0, pss0), (rss1, pss1), (rss2, pss2) = (
        memory["before"],
        memory["attached"],
        memory["detached"],
    )
    each_rss = (rss1 - rss0) / SESSIONS / 1024
    each_pss = (pss1 - pss0) / SESSIONS / 1024
    where = "one uvicorn process on config.asgi, local provider, bash in the sandbox"
    return [
        Result(
            name="keystroke echo round trip over the web terminal's websocket, p50",
            value=round(p50, 3),
            unit="ms",
            target="<= 3 ms",
            met=p50 <= 3,
            detail=(
                f"p90 {_percentile(samples, 0.9):.3f} ms, p99 {p99:.3f} ms, n={len(samples)}; "
                f"a key and its echo by readline, then backspace and its; {where}"
            ),
        ),
        Result(
            name="keystroke echo round trip over the web terminal's websocket, p99",
            value=round(p99, 3),
            unit="ms",
        ),
        Result(
            name="for comparison: the same keys straight through the provider's session",
            value=round(statistics.median(direct), 3),
            unit="ms (median)",
            detail=(
                f"p99 {_percentile(direct, 0.99):.3f} ms, n={len(direct)}; in-process, "
                "no websocket: the websocket and event loop add the difference"
            ),
        ),
        Result(
            name=f"{SESSIONS} idle terminal sessions: control-plane memory each (RSS growth)",
            value=round(each_rss, 3),
            unit="MiB",
            target="<= 1 MB",
            met=each_rss <= 1,
            detail=(
                f"each attached to its own websocket, bash idle at its prompt; server RSS "
                f"{rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB; PSS growth {each_pss:.3f} MiB "
                f"each; {where}"
            ),
        ),
        Result(
            name=f"the same {SESSIONS} sessions detached (browsers gone, waiting to reattach)",
            value=round((rss2 - rss0) / SESSIONS / 1024, 3),
            unit="MiB",
            detail=f"server RSS {rss2 / 1024:.1f} MiB, PSS {pss2 / 1024:.1f} MiB",
        ),
    ]
