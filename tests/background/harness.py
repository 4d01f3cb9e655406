"""The providers the background tests run against, and real django-q2 worker processes.

Every provider in the conformance suite (``tests/conformance/harnesses.py``) is a
background-test provider too: the service layer is pointed at the harness's provider
object, so whatever the conformance suite can run here (memory, filestore, local with
bubblewrap, pve-lxc against its simulator, ...) the key background scenarios run against.

Two kinds of scenario need more than the contract:

* **Real worker processes** (TTL acted on once with two workers; a worker killed
  mid-start): the provider must be shared between processes and rebuilt in each worker
  from settings. A harness opts in by setting ``ProviderUnderTest.config``, and its
  provider name must be listed in ``CROSS_PROCESS``.
* **HTTP through the service proxy** (an idle sandbox woken by a request): something must
  answer on an exposed port. ``HTTP_SERVICES`` says how, per provider.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from django.db import connection
from django.utils import timezone

from providers.base import META_SANDBOX_ID, Instance, InstanceStatus, Provider
from providers.presets import format_preset_id
from sandboxes.models import Preset, Sandbox, Snapshot
from sandboxes.services import backends
from sandboxes.services.actors import Actor
from sandboxes.services.snapshots import import_snapshot
from tests.conformance.harnesses import HARNESSES, ProviderUnderTest

ROOT = Path(__file__).resolve().parents[2]

#: Providers whose harness gives settings another process can build the provider from
#: (``ProviderUnderTest.config``) and whose back end other processes can reach.
CROSS_PROCESS = tuple(
    name for name in ("filestore", "local", "pve-lxc", "pve-vm", "aws-ec2") if name in HARNESSES
)
ALL = tuple(sorted(HARNESSES))
#: Providers whose ``create`` already boots the instance (EC2 has no "made, not booted"
#: state): what reconciliation observes of an instance a dead worker made is then running.
BOOTS_AT_CREATE = frozenset({"aws-ec2", "morph"})


@dataclass
class Backend:
    """One provider, switched on in the service layer, with a ready active version."""

    name: str
    put: ProviderUnderTest
    preset_id: str
    snapshot: Snapshot

    @property
    def provider(self) -> Provider:
        return self.put.provider

    def instances_of(self, sandbox_id: str) -> list[Instance]:
        return [i for i in self.provider.list() if i.metadata.get(META_SANDBOX_ID) == sandbox_id]

    def status_of(self, ref: str) -> InstanceStatus:
        return self.provider.get(ref).status

    def worker_env(self, **extra: str) -> dict[str, str]:
        assert self.put.config is not None, f"the {self.name} harness gives no config"
        return {**self.put.config, **extra}


def activate(name: str, put: ProviderUnderTest) -> Backend:
    """Point the service layer at ``put.provider`` and register a ready active version."""
    vcpus, memory_mb, disk_gb = put.size
    preset_id = format_preset_id(vcpus, memory_mb, disk_gb)
    preset, _ = Preset.objects.get_or_create(
        id=preset_id,
        defaults={"vcpus": vcpus, "memory_mb": memory_mb, "disk_gb": disk_gb, "providers": []},
    )
    if not preset.offered_on(name):
        preset.providers = [*preset.providers, name]
        preset.save(update_fields=["providers"])
    inject(name, put.provider)
    snapshot = import_snapshot(
        provider=name,
        preset_id=preset_id,
        ref=put.snapshot_ref,
        actor=Actor.system(),
        label="base",
        activate=True,
    )
    return Backend(name=name, put=put, preset_id=preset_id, snapshot=snapshot)


def inject(name: str, provider: Provider) -> None:
    """Make ``provider`` the only enabled provider of the service layer (tests only)."""
    with backends._lock:
        backends._built = backends.Backends({name: provider}, name)


def clean_up(backend: Backend) -> None:
    """Delete every instance the test left on the provider."""
    for instance in backend.provider.list():
        with contextlib.suppress(Exception):
            instance.delete()
    backends.reset()


@contextlib.contextmanager
def harness(name: str, tmp_path_factory) -> Iterator[ProviderUnderTest]:
    with HARNESSES[name](tmp_path_factory) as put:
        yield put


# --- waiting without timing assertions ---------------------------------------------------


def wait_until(condition: Callable[[], object], *, what: str, seconds: float = 90) -> object:
    """Poll ``condition`` until it is truthy; fail saying ``what`` never happened."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.1)


# --- an HTTP service "inside" a sandbox ----------------------------------------------------


class FakeService:
    """An HTTP service standing in for one running inside a sandbox.

    It refuses (503) while the instance is not running, as a frozen process would not
    answer, so a test sees whether the wake happened before the request was served.
    ``port`` is what to expose: the memory and filestore providers point a service of
    port P at ``127.0.0.1:20000+P`` (``offset``); providers that point at the guest's own
    address (the PVE simulator's guests live on loopback addresses) use offset 0.
    """

    def __init__(
        self,
        running: Callable[[], bool],
        body: bytes,
        *,
        host: str = "127.0.0.1",
        offset: int = 20000,
    ) -> None:
        self.running = running
        self.body = body
        self.seen: list[dict] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.answer(self)

            do_POST = do_GET

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1] - offset
        assert 0 < self.port < 65536, "the ephemeral port range starts above 20000 here"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        self.seen.append(
            {
                "path": request.path,
                "headers": dict(request.headers),
                "body": request.rfile.read(length) if length else b"",
            }
        )
        status, body = (200, self.body) if self.running() else (503, b"not running")
        request.send_response(status)
        request.send_header("Content-Type", "text/plain")
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Set-Cookie", "from_sandbox=1; Path=/")
        request.end_headers()
        request.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _running(backend: Backend, sandbox: Sandbox) -> Callable[[], bool]:
    return lambda: backend.status_of(sandbox.provider_ref) == InstanceStatus.RUNNING


def serve_fake(backend: Backend, sandbox: Sandbox, body: bytes) -> tuple[int, Callable[[], None]]:
    service = FakeService(_running(backend, sandbox), body)
    return service.port, service.close


def serve_on_guest_address(
    backend: Backend, sandbox: Sandbox, body: bytes
) -> tuple[int, Callable[[], None]]:
    """For providers whose service URL is ``http://<guest address>:<port>``: learn the
    address from a probe service, then listen there."""
    instance = backend.provider.get(sandbox.provider_ref)
    host = urlsplit(instance.expose_http_service("probe", 1)).hostname
    instance.hide_http_service("probe")
    service = FakeService(_running(backend, sandbox), body, host=host, offset=0)
    return service.port, service.close


def serve_inside(backend: Backend, sandbox: Sandbox, body: bytes) -> tuple[int, Callable[[], None]]:
    """A real HTTP server in the sandbox (providers that run real processes: local)."""
    instance = backend.provider.get(sandbox.provider_ref)
    port = 8080
    script = (
        'mkdir -p site && cd site && printf %s "$BODY" > hello && '
        f"nohup python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 &"
    )
    result = instance.exec(["/bin/sh", "-c", script.replace("$BODY", body.decode())], timeout=30)
    assert result.exit_code == 0, result.stderr
    probe = (
        "import time, urllib.request\n"
        "for _ in range(100):\n"
        "    try:\n"
        f"        urllib.request.urlopen('http://127.0.0.1:{port}/hello', timeout=1); break\n"
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
    )
    assert instance.exec(["python3", "-c", probe], timeout=60).exit_code == 0
    return port, lambda: None


def serve_with_busybox(
    backend: Backend, sandbox: Sandbox, body: bytes
) -> tuple[int, Callable[[], None]]:
    """busybox's httpd in the sandbox (the Docker base image is a static busybox)."""
    instance = backend.provider.get(sandbox.provider_ref)
    port = 8080
    script = f'mkdir -p /www && printf %s "$BODY" > /www/hello && httpd -p {port} -h /www'
    result = instance.exec(["/bin/sh", "-c", script.replace("$BODY", body.decode())], timeout=30)
    assert result.exit_code == 0, result.stderr
    return port, lambda: None


#: provider -> how to make something answer HTTP in a sandbox: returns (port, stop).
#: Morph is missing on purpose: the fake Morph API hands out service URLs on Morph's
#: domain, which nothing on this machine answers.
HTTP_SERVICES: dict[str, Callable[[Backend, Sandbox, bytes], tuple[int, Callable[[], None]]]] = {
    "memory": serve_fake,
    "filestore": serve_fake,
    "pve-lxc": serve_on_guest_address,
    "pve-vm": serve_on_guest_address,
    "local": serve_inside,
    "docker": serve_with_busybox,
}


# --- real django-q2 workers -------------------------------------------------------------


def database_url() -> str:
    """The test database as a URL, so worker processes open the same one."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


@contextlib.contextmanager
def tasks_to_the_broker() -> Iterator[None]:
    """Enqueue tasks for real workers instead of running them in this process."""
    from django_q.conf import Conf

    saved = Conf.SYNC
    Conf.SYNC = False
    try:
        yield
    finally:
        Conf.SYNC = saved


class Cluster:
    """One ``manage.py qcluster`` process group (one worker) on the test database, or with
    ``command="worker"`` the supervisor that runs one (and restarts it)."""

    def __init__(self, env: dict[str, str], log: Path, command: str = "qcluster") -> None:
        full = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.background.worker_settings",
            "DATABASE_URL": database_url(),
            "Q_SYNC": "0",
            "Q_WORKERS": "1",
            "LOG_LEVEL": "INFO",
            **env,
        }
        self.name = full.get("Q_CLUSTER_NAME", "sandboxes")
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", command],
            cwd=ROOT,
            env=full,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """Kill the whole process group: the tests wait for the work they need first."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)


@contextlib.contextmanager
def clusters(
    env: dict[str, str], log_dir: Path, names: tuple[str, ...] = ("sandboxes",)
) -> Iterator[list[Cluster]]:
    """One cluster per name; each takes tasks from its own queue (the name)."""
    started = [
        Cluster({**env, "Q_CLUSTER_NAME": name}, log_dir / f"qcluster-{name}.log") for name in names
    ]
    try:
        yield started
    finally:
        for cluster in started:
            cluster.kill()


def lease_expired(sandbox_id: str) -> bool:
    row = Sandbox.objects.values("lease_expires_at").get(pk=sandbox_id)
    return row["lease_expires_at"] is None or row["lease_expires_at"] < timezone.now()
