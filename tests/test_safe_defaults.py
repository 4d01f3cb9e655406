"""`make run`'s defaults are safe: DEBUG off, a private persisted SECRET_KEY, a private data
dir and database, static files served, plain HTTP on 127.0.0.1 working."""

from __future__ import annotations

import contextlib
import http.cookiejar
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from django.test import Client, override_settings
from django.urls import path

ROOT = Path(__file__).resolve().parent.parent
CANARY = "canary-password-in-the-environment"


def mode(target: Path) -> int:
    return stat.S_IMODE(os.stat(target).st_mode)


def clean_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """What a shell gives `make run`: no DEBUG, no SECRET_KEY, no DATABASE_URL (and no
    first-start Debian image build in the background: tests/test_image_builds.py)."""
    base = {"PATH": os.environ["PATH"], "SANDBOXES_DATA_DIR": str(data_dir)}
    return {**base, "SANDBOX_DEFAULT_IMAGE": "off", **extra}


# --- DEBUG


def test_make_run_leaves_debug_off_unless_it_is_set():
    env = {k: v for k, v in os.environ.items() if k != "DEBUG"}
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    (line,) = [line for line in dry.stdout.splitlines() if "manage.py serve" in line]
    # The recipe's line with `env` for the server: the environment serve would start with.
    shown = subprocess.run(
        ["sh", "-c", re.sub(r"\S*python\S* manage\.py serve.*", "env", line)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "DEBUG=" not in shown.stdout
    shown = subprocess.run(
        ["sh", "-c", re.sub(r"\S*python\S* manage\.py serve.*", "env", line)],
        cwd=ROOT,
        env={**env, "DEBUG": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "DEBUG=1" in shown.stdout.splitlines()  # still opt-in


def boom(request):
    raise RuntimeError("a bug")


urlpatterns = [path("boom/", boom)]
handler500 = "sandboxes.api.errors.server_error"


@pytest.mark.django_db
@pytest.mark.parametrize("debug", [True, False])
def test_a_500_shows_the_environment_only_with_debug(debug):
    """Why DEBUG must stay off: its error page shows settings built from the environment
    (REDIS_URL, with its password, is in Q_CLUSTER and CACHES unmasked)."""
    redis_url = f"redis://:{CANARY}@redis.internal:6379/0"
    with override_settings(
        ROOT_URLCONF=__name__, DEBUG=debug, Q_CLUSTER={"name": "x", "redis": redis_url}
    ):
        client = Client(raise_request_exception=False)
        response = client.get("/boom/")
    assert response.status_code == 500
    assert (CANARY in response.content.decode()) is debug


# --- SECRET_KEY, the data dir, the database file (settings as every process loads them)


def load_settings(env: dict[str, str], *names: str) -> subprocess.CompletedProcess:
    code = "import config.settings as s; " + "; ".join(f"print(s.{name})" for name in names)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_the_embedded_setup_generates_a_private_key_once_and_keeps_it(tmp_path):
    data = tmp_path / "data"
    env = clean_env(data, SANDBOXES_EMBEDDED="1")
    first = load_settings(env, "SECRET_KEY", "DEBUG")
    assert first.returncode == 0, first.stderr
    key, debug = first.stdout.split()
    assert debug == "False"
    assert len(key) >= 50
    assert (data / "secret-key").read_text().strip() == key
    assert mode(data / "secret-key") == 0o600
    assert load_settings(env, "SECRET_KEY").stdout.strip() == key  # reused
    assert [p.name for p in data.iterdir() if p.name.startswith(".")] == []  # no temporaries


def test_production_still_refuses_to_start_without_a_key(tmp_path):
    done = load_settings(clean_env(tmp_path), "SECRET_KEY")
    assert done.returncode != 0
    assert "SECRET_KEY must be set" in done.stderr
    assert not (tmp_path / "secret-key").exists()


def test_the_embedded_setup_serves_plain_http_and_production_stays_strict(tmp_path):
    names = ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE")
    embedded = load_settings(clean_env(tmp_path, SANDBOXES_EMBEDDED="1"), *names)
    assert embedded.stdout.split() == ["False"] * 3, embedded.stderr
    assert load_settings(
        clean_env(tmp_path, SANDBOXES_EMBEDDED="1", SECURE_SSL_REDIRECT="1"), *names
    ).stdout.split() == ["True", "False", "False"]
    production = load_settings(clean_env(tmp_path, SECRET_KEY="x" * 60), *names)
    assert production.stdout.split() == ["True"] * 3, production.stderr


def test_the_data_dir_and_the_database_are_private_and_tightened(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # noqa: S103 - as an earlier version left it
    for name in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm", "dev-secret-key"):
        (data / name).write_text("k" * 60 if name == "dev-secret-key" else "")
        os.chmod(data / name, 0o644)
    done = load_settings(clean_env(data, SANDBOXES_EMBEDDED="1"), "SECRET_KEY")
    assert done.returncode == 0, done.stderr
    assert mode(data) == 0o700
    for name in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm", "secret-key"):
        assert mode(data / name) == 0o600, name
    assert done.stdout.strip() == "k" * 60  # the key of DEBUG=1 runs, kept: no sign-outs
    fresh = tmp_path / "fresh"
    assert load_settings(clean_env(fresh, SECRET_KEY="x" * 60), "DEBUG").returncode == 0
    assert mode(fresh) == 0o700
    assert mode(fresh / "db.sqlite3") == 0o600


# --- `manage.py serve` as `make run` starts it


def get(opener, url: str, data: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=data, headers=headers or {})  # noqa: S310
    try:
        return opener.open(request, timeout=10)
    except urllib.error.HTTPError as error:
        return error


class Serve:
    def __init__(self, env: dict[str, str]):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--addr", f"127.0.0.1:{self.port}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.groups: list[int] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.base}/login/", timeout=2).close()  # noqa: S310
                return
            time.sleep(0.3)
        self.stop()
        pytest.fail("the dashboard did not answer within 90 s")

    def stop(self) -> None:
        self.groups = self._children()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for pgid in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)

    def _children(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.process.pid:
                    found.append(int(entry.name))
        return found


def test_serve_without_debug_or_a_key_works_on_plain_http_and_keeps_secrets(tmp_path):
    data = tmp_path / "data"
    env = clean_env(
        data,
        ADMIN_PASSWORD="correct horse battery staple",
        SOME_SERVICE_URL=f"postgres://user:{CANARY}@db.internal/x",
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        ssh_port = probe.getsockname()[1]
    env["SANDBOX_SSH_PORT"] = str(ssh_port)
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    server = Serve(env)
    try:
        login = get(browser, f"{server.base}/login/")
        assert (login.status, login.url) == (200, f"{server.base}/login/")  # no HTTPS redirect
        page = login.read().decode()
        css = re.search(r'href="(/static/[^"]+\.css)"', page).group(1)
        stylesheet = get(browser, server.base + css)
        assert stylesheet.status == 200
        assert stylesheet.headers["Content-Type"].startswith("text/css")
        # Whole, as collected: WhiteNoise streams it to the ASGI server.
        collected = data / "staticfiles" / css.removeprefix("/static/")
        assert stylesheet.read() == collected.read_bytes()

        # The web server is uvicorn serving the ASGI application (a thread per request:
        # long calls hold no worker), not runserver or a WSGI server.
        assert stylesheet.headers["Server"] == "uvicorn"
        commands = [
            (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
            for pid in server._children()
        ]
        (web,) = [c for c in commands if b"uvicorn" in c]
        assert b"config.asgi:application" in web
        # The SSH gateway is a child too, answering on SANDBOX_SSH_PORT (docs/ssh.md).
        assert any(b"ssh_gateway" in c for c in commands)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", ssh_port), timeout=5) as ssh:
                    assert ssh.recv(100).startswith(b"SSH-2.0-")
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the SSH gateway did not listen"
                time.sleep(0.2)
        key = data / "ssh_host_ed25519_key"  # made once, for the owner only
        assert key.stat().st_mode & 0o777 == 0o600

        # Signing in works over plain HTTP (cookies are not HTTPS-only here).
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        form = {"username": "admin", "password": env["ADMIN_PASSWORD"]}
        form["csrfmiddlewaretoken"] = token
        signed_in = get(
            browser,
            f"{server.base}/login/",
            urllib.parse.urlencode(form).encode(),
            {"Referer": f"{server.base}/login/"},
        )
        assert signed_in.status == 200
        assert "/login/" not in signed_in.url

        # An error page holds none of the environment (with DEBUG it would show it all).
        too_big = get(
            browser,
            f"{server.base}/login/",
            b"x=" + b"a" * 3_000_000,
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert too_big.status == 400
        assert CANARY not in too_big.read().decode()

        assert mode(data) == 0o700
        key = (data / "secret-key").read_text()
        assert mode(data / "secret-key") == 0o600
        databases = list(data.glob("db.sqlite3*"))
        assert data / "db.sqlite3" in databases
        assert {p.name: mode(p) for p in databases} == {p.name: 0o600 for p in databases}
    finally:
        server.stop()

    # A second start reuses the key: the session of the first still signs in.
    server = Serve(env)
    try:
        assert (data / "secret-key").read_text() == key
        page = get(browser, f"{server.base}/sandboxes/")
        assert (page.status, page.url) == (200, f"{server.base}/sandboxes/")
    finally:
        server.stop()
