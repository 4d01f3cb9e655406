"""Preview URLs (issue 15): what the preview host adds to a request, to a websocket
message, and how fast it streams.

A real server as ``make run`` serves it: one uvicorn process on ``config.asgi``, SQLite,
a `local` sandbox whose services point at two loopback upstreams run by this process: a
minimal HTTP/1.1 server with keep-alive (answers ``ok``, or 1 GiB for ``/big``) and a
websocket echo server. The services are ``private``: every request carries the preview
cookie a browser gets (checked, and the user's membership read, on each request).

* request overhead: p50 of a small GET through ``<port>-<sandbox>.localhost`` minus p50
  of the same GET straight to the upstream, both on kept-alive connections, interleaved.
  Target: at most 2 ms.
* websocket overhead: p50 round trip of a 16-byte message through the preview host minus
  straight to the upstream. Target: at most 1 ms.
* streaming: a 1 GiB response through the preview host, read as it comes. Target: at
  least 200 MB/s.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench import ROOT, Result, run_child
from bench.bench_terminal import Server, _percentile

NOTES = """
The request overhead is that of an admitted visitor: the preview host remembers an
admission (credentials, sandbox and service checked, the sandbox running) for
`ADMITTED_SECONDS` (2 s, `sandboxes/preview.py`), so a burst of an IDE's requests costs
one access check. The check itself (three indexed queries in a thread: the sandbox, the
user, the membership) took about 1.2 ms in-process here, and without the admission cache
the overhead measured 3.95 ms p50 on this machine (2 shared cores, SQLite) on the same
bench: what every request would pay otherwise.
"""

REPEAT = int(os.environ.get("BENCH_PREVIEW_REPEAT", "2000"))
BIG = 1 << 30
BLOCK = b"x" * (1 << 20)


class HttpUpstream:
    """Keep-alive HTTP/1.1 on loopback: ``ok``, or 1 GiB for ``/big``."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffered = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffered:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffered += chunk
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                if head.split(b" ", 2)[1].startswith(b"/big"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
                    view = memoryview(BLOCK)
                    for _ in range(BIG // len(BLOCK)):
                        conn.sendall(view)
                else:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                        b"Content-Length: 2\r\n\r\nok"
                    )
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


class Client:
    """A raw keep-alive HTTP/1.1 client (nothing of a library's cost in the numbers)."""

    def __init__(self, port: int, host: str, cookie: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host = host
        self.cookie = cookie
        self.buffer = bytearray(1 << 20)

    def get(self, path: str) -> int:
        cookie = f"Cookie: {self.cookie}\r\n" if self.cookie else ""
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{cookie}\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("closed")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"status {status}: {head[:300]!r}")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")[1:]
            if line.lower().startswith(b"content-length:")
        )
        got = len(rest)
        view = memoryview(self.buffer)
        while got < length:
            n = self.sock.recv_into(view, min(len(self.buffer), length - got))
            if not n:
                raise OSError("closed early")
            got += n
        return got

    def close(self) -> None:
        self.sock.close()


def _ws(port: int, host: str, cookie: str = "", origin: str | None = None):
    from websockets.sync.client import connect

    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connect(
        f"ws://{host}/echo",
        sock=sock,
        origin=origin,
        additional_headers={"Cookie": cookie} if cookie else None,
        compression=None,
        open_timeout=30,
    )


def _ws_round_trips(ws, count: int) -> list[float]:
    samples = []
    message = b"0123456789abcdef"
    for _ in range(count):
        start = time.perf_counter()
        ws.send(message)
        ws.recv(timeout=10)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def run() -> list[Result]:
    from websockets.sync.server import serve

    http_upstream = HttpUpstream()

    def echo(connection) -> None:
        for message in connection:
            connection.send(message)

    ws_server = serve(echo, "127.0.0.1", 0, compression=None)
    threading.Thread(target=ws_server.serve_forever, daemon=True).start()
    ws_port = ws_server.socket.getsockname()[1]

    data_dir = tempfile.mkdtemp(prefix="bench-preview-")
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{data_dir}/bench.sqlite3",
        "SANDBOXES_DATA_DIR": data_dir,
        "DJANGO_SETTINGS_MODULE": "bench.api_settings",
        "PYTHONPATH": str(ROOT),
        "SANDBOX_PROVIDERS": "local",
        "LOCAL_SANDBOX_CGROUP_PARENT": f"sbx-bench-preview-{os.getpid()}",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("REDIS_URL", None)
    server = None
    try:
        made = run_child(
            "preview_child",
            "setup",
            f"http://127.0.0.1:{http_upstream.port}/",
            f"http://127.0.0.1:{ws_port}/",
            env=env,
        )
        server = Server(env)
        box = made["sandbox"]
        web_host = f"8080-{box}.localhost:{server.port}"
        ws_host = f"8081-{box}.localhost:{server.port}"
        web_cookie = f"sandbox_preview={made['cookies']['8080']}"
        ws_cookie = f"sandbox_preview={made['cookies']['8081']}"

        direct = Client(http_upstream.port, f"127.0.0.1:{http_upstream.port}")
        proxied = Client(server.port, web_host, web_cookie)
        for _ in range(200):  # warm up: connections, pools, caches
            direct.get("/ping")
            proxied.get("/ping")
        direct_ms, proxied_ms = [], []
        for _ in range(REPEAT):
            start = time.perf_counter()
            direct.get("/ping")
            direct_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            proxied.get("/ping")
            proxied_ms.append((time.perf_counter() - start) * 1000)
        direct.close()

        ws_direct = _ws(ws_port, f"127.0.0.1:{ws_port}")
        ws_proxied = _ws(server.port, ws_host, ws_cookie, origin=f"http://{ws_host}")
        _ws_round_trips(ws_direct, 200)
        _ws_round_trips(ws_proxied, 200)
        ws_direct_ms, ws_proxied_ms = [], []
        for _ in range(REPEAT // 100):
            ws_direct_ms += _ws_round_trips(ws_direct, 100)
            ws_proxied_ms += _ws_round_trips(ws_proxied, 100)
        ws_direct.close()
        ws_proxied.close()

        stream_direct = Client(http_upstream.port, f"127.0.0.1:{http_upstream.port}")
        start = time.perf_counter()
        stream_direct.get("/big")
        direct_seconds = time.perf_counter() - start
        stream_direct.close()
        start = time.perf_counter()
        assert proxied.get("/big") == BIG
        proxied_seconds = time.perf_counter() - start
        proxied.close()
    finally:
        if server is not None:
            server.stop()
        subprocess.run(
            [sys.executable, "-m", "bench.preview_child", "cleanup"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        shutil.rmtree(data_dir, ignore_errors=True)
        http_upstream.close()
        ws_server.shutdown()

    p50_direct, p50_proxied = statistics.median(direct_ms), statistics.median(proxied_ms)
    overhead = p50_proxied - p50_direct
    ws_overhead = statistics.median(ws_proxied_ms) - statistics.median(ws_direct_ms)
    rate = BIG / proxied_seconds / 1e6
    where = "one uvicorn process on config.asgi, SQLite, a private service, the preview cookie"
    return [
        Result(
            name="preview proxy overhead over a direct request, p50",
            value=round(overhead, 3),
            unit="ms",
            target="<= 2 ms",
            met=overhead <= 2,
            detail=(
                f"through the preview host p50 {p50_proxied:.3f} ms (p99 "
                f"{_percentile(proxied_ms, 0.99):.3f}), direct p50 {p50_direct:.3f} ms, "
                f"n={REPEAT} each, kept-alive connections; {where}"
            ),
        ),
        Result(
            name="websocket message round-trip overhead, p50",
            value=round(ws_overhead, 3),
            unit="ms",
            target="<= 1 ms",
            met=ws_overhead <= 1,
            detail=(
                f"through the preview host p50 {statistics.median(ws_proxied_ms):.3f} ms, "
                f"direct p50 {statistics.median(ws_direct_ms):.3f} ms, 16-byte binary "
                f"messages, n={len(ws_proxied_ms)} each"
            ),
        ),
        Result(
            name="streaming a 1 GiB response through the preview host",
            value=round(rate, 1),
            unit="MB/s",
            target=">= 200 MB/s",
            met=rate >= 200,
            detail=(
                f"{proxied_seconds:.2f} s; straight from the upstream "
                f"{BIG / direct_seconds / 1e6:.0f} MB/s"
            ),
        ),
    ]
