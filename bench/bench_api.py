"""The API's list endpoint: latency in-process, query count, throughput under gunicorn.

Targets (issue 5): ``GET /api/v1/sandboxes`` (a page of 50) with 10,000 sandboxes in the
team at 15 ms or less at the median, with the same number of SQL queries whatever the page
holds; under gunicorn on PostgreSQL, at least half the throughput of a bare Django JSON
view (``bench/api_urls.py``) measured in the same run.

The database is a throwaway one made and dropped here: on PostgreSQL when DATABASE_URL
points there or one answers on 127.0.0.1:5432, else SQLite in a temporary directory.
The throttle counters use the production setting (Redis with REDIS_URL, else the
database cache). Load comes from ``wrk`` (Debian package; `make bench` installs it) or,
without it, a threaded Python client with keep-alive connections.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from bench import ROOT, Result, median_result, run_child

PAGE = "/api/v1/sandboxes"
BARE = "/bench/bare"
SECONDS = float(os.environ.get("BENCH_API_SECONDS", "8"))
#: Its own name per run: another checkout may be running the same bench on this server.
BENCH_DB = f"sbx_bench_api_{os.getpid()}"


@dataclass(frozen=True)
class Database:
    url: str
    admin_url: str = ""  # PostgreSQL: where CREATE/DROP DATABASE run

    @property
    def vendor(self) -> str:
        return "postgresql" if self.admin_url else "sqlite"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(sql)

    def create(self) -> None:
        if self.admin_url:
            self.drop()
            self._admin(f"CREATE DATABASE {BENCH_DB}")

    def drop(self) -> None:
        if self.admin_url:
            self._admin(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def _postgres_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


def choose_database(data_dir: str) -> Database:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = "postgres://postgres@127.0.0.1:5432/postgres" if _postgres_reachable() else ""
    if not url:
        return Database(url=f"sqlite:///{data_dir}/bench.sqlite3")
    parts = urlsplit(url)
    bench = urlunsplit(parts._replace(path=f"/{BENCH_DB}"))
    admin = urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))
    return Database(url=bench, admin_url=admin)


def in_process(env: dict[str, str]) -> dict:
    return run_child("api_child", env=env, timeout=1800)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gunicorn:
    def __init__(self, env: dict[str, str], workers: int) -> None:
        self.port = free_port()
        self.workers = workers
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "config.wsgi:application",
                f"--bind=127.0.0.1:{self.port}",
                f"--workers={workers}",
                "--log-level=warning",
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited: {self.process.stderr.read().decode()[-2000:]}"
                )
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", BARE)
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("gunicorn did not answer in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def load_wrk(
    port: int, path: str, headers: dict[str, str], seconds: float, connections: int
) -> float:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*command, f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    if "Non-2xx" in done.stdout:
        raise RuntimeError(f"wrk saw errors on {path}: {done.stdout[-500:]}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))


def load_python(
    port: int, path: str, headers: dict[str, str], seconds: float, connections: int
) -> float:
    """Keep-alive clients in threads; bounded by time. Counts 200 answers per second."""
    counts = [0] * connections
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < deadline:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{path} answered {response.status}")
            counts[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - start)


def throughput(env: dict[str, str], token: str) -> tuple[float, float, str, int]:
    """Requests/s of the bare view and of the API, alternating, under one gunicorn."""
    workers = 2 * (os.cpu_count() or 1) + 1
    load, tool = (load_wrk, "wrk") if shutil.which("wrk") else (load_python, "python client")
    server = Gunicorn(env, workers)
    try:
        server.wait_ready()
        auth = {"Authorization": f"Bearer {token}"}
        connections = 2 * workers
        load(server.port, BARE, {}, 2, connections)  # warm every worker's connection
        load(server.port, PAGE, auth, 2, connections)
        bare, api = [], []
        for _ in range(2):
            bare.append(load(server.port, BARE, {}, SECONDS / 2, connections))
            api.append(load(server.port, PAGE, auth, SECONDS / 2, connections))
    finally:
        server.stop()
    return sum(bare) / len(bare), sum(api) / len(api), tool, workers


def run() -> list[Result]:
    data_dir = tempfile.mkdtemp(prefix="bench-api-")
    database = choose_database(data_dir)
    env = {
        **os.environ,
        "DATABASE_URL": database.url,
        "SANDBOXES_DATA_DIR": data_dir,
        "DJANGO_SETTINGS_MODULE": "bench.api_settings",
        "PYTHONPATH": str(ROOT),
    }
    try:
        database.create()
        data = in_process(env)
        token = data.pop("token")
        bare_rps, api_rps, tool, workers = throughput(env, token)
    finally:
        database.drop()
        shutil.rmtree(data_dir, ignore_errors=True)
    where = f"{data['vendor']}, throttle counters: {data['throttle_store']}"
    queries = data["queries"]
    counts = {queries["full"][0], queries["last"][0], queries["few"][0]}
    ratio = api_rps / bare_rps if bare_rps else 0.0
    on_postgres = data["vendor"] == "postgresql"
    return [
        median_result(
            "GET /api/v1/sandboxes, page of 50 of 10,000, in-process (Django test client)",
            data["samples"],
            at_most=15,
            detail=where,
        ),
        median_result(
            "bare Django JSON view, same page, in-process (for comparison)",
            data["bare_samples"],
            at_most=None,
        ),
        # Why services/tokens.py composes its own SQL: see _TokenLookup's docstring.
        median_result(
            "token lookup (token, user, team, role): the SQL services/tokens.py composes once",
            data["lookup_samples"],
            at_most=None,
            detail=data["vendor"],
        ),
        median_result(
            "the same lookup through the ORM (select_related and a Subquery), for comparison",
            data["orm_lookup_samples"],
            at_most=None,
            detail=data["vendor"],
        ),
        Result(
            name="SQL queries per list request",
            value=queries["full"][0],
            unit="queries",
            target="the same for every page",
            met=len(counts) == 1,
            detail=(
                f"page 1: {queries['full'][0]} for {queries['full'][1]} rows; page 200: "
                f"{queries['last'][0]} for {queries['last'][1]}; filtered: "
                f"{queries['few'][0]} for {queries['few'][1]}"
            ),
        ),
        Result(
            name="throughput under gunicorn: API list / bare Django JSON view",
            value=round(ratio, 2),
            unit="x",
            target=">= 0.5 (on PostgreSQL)",
            met=(ratio >= 0.5) if on_postgres else None,
            detail=(
                f"API {api_rps:.0f} req/s, bare view {bare_rps:.0f} req/s; {workers} sync "
                f"workers, {tool}, {2 * workers} connections, {SECONDS:g} s each; {where}"
            ),
        ),
    ]
