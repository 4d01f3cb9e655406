"""Fair sharing (issue 13, item 6): another team's API latency while one team saturates its
long-call cap, and what the service proxy adds to a request.

A real server set up as docs/operations.md documents it: uvicorn serving
``config.asgi`` with two worker processes, PostgreSQL when one answers on 127.0.0.1:5432
(else SQLite), Redis for the rate counters and long-call slots when one answers on
127.0.0.1:6379 (else the database), the `local` provider. Team A runs more clients than
its cap (``SANDBOX_LONG_CALLS_PER_TEAM``), each looping ``exec sleep 5``; team B reads
``GET /api/v1/config`` one request after another. Target: team B's p99 at most 100 ms.
For comparison the same load runs against the set-up of the issue, two sync gunicorn
workers on ``config.wsgi``.

The proxy's overhead: the same GET sent straight to a loopback HTTP server and through
``/s/<id>/web/`` to it, turn about on keep-alive connections; the difference of the
medians. Target: at most 2 ms.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlsplit, urlunsplit

from bench import ROOT, Result, run_child

#: Written under the section's table by ``python -m bench``.
NOTES = """
**The proxy's 2 ms is not reached, and where its time goes.** The in-process rows time
each step of a proxied request inside the ASGI application (no HTTP server): two
PostgreSQL round trips (the token with its user, team and role; the sandbox), each
preceded by the pool's check of the connection it hands out; two Redis round trips
before the upstream is reached (the token-guessing check, the long-call slot) and one
after (the slot's release); the request to the upstream through requests/urllib3 on a
kept-alive connection (about 1.4 ms for what the upstream itself answers in 0.3 ms:
requests' and http.client's own work); and the rest of the view, Django's middleware
chain (sessions, CSRF, auth, messages, axes, htmx) and the ASGI handler (the request's
thread, its signals, the response). uvicorn's HTTP parsing and the event loop come on
top. On this shared two-core machine each of these is several times what it costs on a
quiet one; no step alone is near 2 ms, but together the steps every proxied request
must take (authenticate, find the sandbox, hold a slot, forward) are well beyond it, and
so is Django's fixed cost per request on this machine. Reaching 2 ms would need
the proxy outside Django (an ASGI or native front that checks a cached token-and-sandbox
grant and forwards without the middleware).

**Before and after (2026-12-03, this machine, other work running on it).** Before: a
new PostgreSQL connection per request (3 to 8 ms), a new Redis connection pool per
request (Django's cache object is per thread, and under ASGI each request runs in a new
thread), a thread switch for each middleware hook, a new upstream connection per
request, a sandbox query with three joins and an activity UPDATE each time: proxy overhead
23.76 ms p50, team B's unloaded GET /api/v1/config p50 20.90 ms. After: 7.5 to 11.3 ms
overhead and 10 to 13 ms for the config p50 across four runs; the same code A/B in turns
on one uvicorn server over HTTP gave proxy p50 23.1 to 33.7 ms before and 8.8 to 9.6 ms
after, config p50 21.2 to 21.7 ms before and 10.8 to 11.6 ms after. The p99 under load
swings with the machine's other work (47.7 ms in the run above; 87 to 211 ms in runs with
a load average of 5 to 7, where the code before gave 137 to 152 ms in turn with it).
"""
SECONDS = float(os.environ.get("BENCH_FAIRNESS_SECONDS", "20"))
CAP = 4  # SANDBOX_LONG_CALLS_PER_TEAM's default
#: Its own name per run: another checkout may be running the same bench on this server.
BENCH_DB = f"sbx_bench_fairness_{os.getpid()}"
REDIS_URL = "redis://127.0.0.1:6379/12"
EXEC = {"command": ["sleep", "5"], "timeout_seconds": 30}
UPSTREAM = """
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the head and the body go out as two writes

    def do_GET(self):
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres(sql: str) -> None:
    import psycopg

    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    admin = urlunsplit(urlsplit(url)._replace(path="/postgres", scheme="postgresql"))
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql)


def _connect_ms(url: str, repeat: int = 30) -> float:
    """The median cost of opening a PostgreSQL connection (one per request under ASGI)."""
    import psycopg

    url = urlunsplit(urlsplit(url)._replace(scheme="postgresql"))
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        with psycopg.connect(url) as connection:
            connection.execute("SELECT 1")
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def _database_url(data_dir: str) -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = "postgres://postgres@127.0.0.1:5432/postgres" if _answers(5432) else ""
    if not url:
        return f"sqlite:///{data_dir}/bench.sqlite3"
    return urlunsplit(urlsplit(url)._replace(path=f"/{BENCH_DB}"))


class Server:
    """uvicorn (``asgi``) or gunicorn (``wsgi``) with two workers, as a process group."""

    def __init__(self, kind: str, env: dict[str, str]) -> None:
        self.port = _free_port()
        if kind == "asgi":
            command = [
                *(sys.executable, "-m", "uvicorn", "config.asgi:application"),
                *("--workers", "2", "--host", "127.0.0.1", "--port", str(self.port)),
                *("--no-proxy-headers", "--no-access-log", "--log-level", "warning"),
            ]
        else:
            command = [
                *(sys.executable, "-m", "gunicorn", "config.wsgi:application"),
                *("--workers", "2", f"--bind=127.0.0.1:{self.port}", "--log-level=warning"),
                "--timeout=120",
            ]
        self.process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{command[2]} exited with {self.process.returncode}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/login/")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{command[2]} did not answer in time")

    def stop(self) -> None:
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


def _get(connection: http.client.HTTPConnection, path: str, headers: dict) -> float:
    """One GET on a keep-alive connection; its milliseconds."""
    start = time.perf_counter()
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    response.read()
    elapsed = (time.perf_counter() - start) * 1000
    if response.status != 200:
        raise RuntimeError(f"GET {path} answered {response.status}")
    return elapsed


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def under_load(port: int, made: dict) -> dict:
    """Team A saturates its cap with long execs while team B reads its config."""
    a_headers = {
        "Authorization": f"Bearer {made['team-a']['token']}",
        "Content-Type": "application/json",
    }
    b_headers = {"Authorization": f"Bearer {made['team-b']['token']}"}
    exec_path = f"/api/v1/sandboxes/{made['team-a']['sandbox']}/exec"
    deadline = time.monotonic() + SECONDS
    statuses: list[int] = []

    def team_a() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < deadline:
            connection.request("POST", exec_path, body=json.dumps(EXEC), headers=a_headers)
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            if response.status == 429:
                time.sleep(0.2)  # a client that keeps trying: the cap stays full
            elif response.status != 200:
                raise RuntimeError(f"exec answered {response.status}")

    clients = [threading.Thread(target=team_a) for _ in range(CAP + 2)]
    for client in clients:
        client.start()
    time.sleep(1)  # the first long execs are running
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    samples = []
    while time.monotonic() < deadline:
        samples.append(_get(connection, "/api/v1/config", b_headers))
        time.sleep(0.01)
    for client in clients:
        client.join()
    return {
        "samples": samples,
        "execs": statuses.count(200),
        "refused": statuses.count(429),
    }


def unloaded(port: int, made: dict, repeat: int = 200) -> list[float]:
    headers = {"Authorization": f"Bearer {made['team-b']['token']}"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    _get(connection, "/api/v1/config", headers)
    return [_get(connection, "/api/v1/config", headers) for _ in range(repeat)]


def proxy_overhead(port: int, upstream: int, made: dict, repeat: int = 400) -> tuple:
    headers = {"Authorization": f"Bearer {made['team-b']['token']}"}
    proxied_path = f"/s/{made['team-b']['sandbox']}/web/ping"
    direct = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
    proxied = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(20):  # warm both
        _get(direct, "/ping", {})
        _get(proxied, proxied_path, headers)
    straight: list[float] = []
    through: list[float] = []
    for _ in range(repeat // 10):  # turn about, so a busy moment hits both alike
        straight += [_get(direct, "/ping", {}) for _ in range(10)]
        through += [_get(proxied, proxied_path, headers) for _ in range(10)]
    return straight, through


def breakdown(env: dict[str, str], made: dict) -> dict[str, float]:
    """Where a proxied request's time goes: its steps timed in-process (fairness_child)."""
    team = made["team-b"]
    return run_child("fairness_child", "breakdown", team["sandbox"], team["token"], env=env)


def run() -> list[Result]:
    data_dir = tempfile.mkdtemp(prefix="bench-fairness-")
    database = _database_url(data_dir)
    redis = _answers(6379)
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "SANDBOXES_DATA_DIR": data_dir,
        "DJANGO_SETTINGS_MODULE": "bench.api_settings",
        "PYTHONPATH": str(ROOT),
        "SANDBOX_PROVIDERS": "local",
        "LOCAL_SANDBOX_CGROUP_PARENT": f"sbx-bench-fairness-{os.getpid()}",
        "SANDBOX_LONG_CALLS_PER_TEAM": str(CAP),
    }
    env.pop("REDIS_URL", None)
    if redis:
        env["REDIS_URL"] = REDIS_URL
    on_postgres = database.startswith("postgres")
    if on_postgres:
        _postgres(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        _postgres(f"CREATE DATABASE {BENCH_DB}")
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE, text=True)
    servers: list[Server] = []
    try:
        upstream_port = int(upstream.stdout.readline())
        made = run_child("fairness_child", "setup", f"http://127.0.0.1:{upstream_port}/", env=env)
        connect = _connect_ms(database) if on_postgres else 0.0

        servers.append(Server("asgi", env))
        port = servers[-1].port
        quiet = unloaded(port, made)
        loaded = under_load(port, made)
        straight, through = proxy_overhead(port, upstream_port, made)
        servers.pop().stop()
        parts = breakdown(env, made)

        servers.append(Server("wsgi", env))
        before = under_load(servers[-1].port, made)
        servers.pop().stop()
    finally:
        for server in servers:
            server.stop()
        upstream.kill()
        upstream.wait()
        subprocess.run(
            [sys.executable, "-m", "bench.fairness_child", "cleanup"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        if on_postgres:
            _postgres(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        shutil.rmtree(data_dir, ignore_errors=True)

    where = (
        f"{'PostgreSQL' if on_postgres else 'SQLite'}, slots and counters in "
        f"{'Redis' if redis else 'the database'}"
    )
    samples = loaded["samples"]
    p50, p99 = statistics.median(samples), _percentile(samples, 0.99)
    load = (
        f"team A: {CAP + 2} clients looping `exec sleep 5` against a cap of {CAP}, "
        f"{loaded['execs']} execs ran and {loaded['refused']} were refused (429) in "
        f"{SECONDS:g} s"
    )
    old = before["samples"]
    direct_p50, proxied_p50 = statistics.median(straight), statistics.median(through)
    overhead = proxied_p50 - direct_p50
    return [
        Result(
            name="fairness: team B's GET /api/v1/config p50 while team A saturates its cap",
            value=round(p50, 2),
            unit="ms",
            detail=(
                f"uvicorn config.asgi, 2 workers; n={len(samples)}; unloaded p50 "
                f"{statistics.median(quiet):.2f} ms, p99 {_percentile(quiet, 0.99):.2f} ms; {where}"
            ),
        ),
        Result(
            name="fairness: team B's GET /api/v1/config p99 while team A saturates its cap",
            value=round(p99, 2),
            unit="ms",
            target="<= 100 ms",
            met=p99 <= 100,
            detail=f"{load}; {where}",
        ),
        Result(
            name="for comparison: the same on 2 sync gunicorn workers (config.wsgi), p99",
            value=round(_percentile(old, 0.99), 2),
            unit="ms",
            detail=(
                f"p50 {statistics.median(old):.2f} ms, n={len(old)}; team A: "
                f"{before['execs']} execs ran, {before['refused']} refused"
            ),
        ),
        Result(
            name="fairness: the service proxy's overhead over a direct request, p50",
            value=round(overhead, 2),
            unit="ms",
            target="<= 2 ms",
            met=overhead <= 2,
            detail=(
                f"through /s/<id>/web/: p50 {proxied_p50:.2f} ms, p90 "
                f"{_percentile(through, 0.9):.2f} ms; direct to the loopback upstream: p50 "
                f"{direct_p50:.2f} ms; n={len(through)} each, keep-alive, turn about; {where}"
                + (
                    f"; opening the request's PostgreSQL connection alone takes {connect:.2f} ms"
                    if on_postgres
                    else ""
                )
            ),
        ),
        *(
            Result(
                name=f"the proxied request's time, in-process: {step}",
                value=round(ms, 2),
                unit="ms",
                detail="median of 400" + (f"; {where}" if index == 0 else ""),
            )
            for index, (step, ms) in enumerate(parts.items())
        ),
    ]
