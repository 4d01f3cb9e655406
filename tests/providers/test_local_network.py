"""Exposed services of local sandboxes: a unix socket only the control plane can use,
forwarding real HTTP; never a TCP port, never a wake-up behind the control plane's back."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from providers import unix_http
from providers.base import InstanceStatus
from providers.errors import Unsupported
from providers.local import LocalProvider, forwarder, sockets
from tests.providers.conftest import sh, wait_for

PORT = 8080


def serve(box, body: str) -> None:
    sh(box, f"mkdir -p /workspace/site && echo {body} > /workspace/site/index.html")
    sh(
        box,
        f"cd /workspace/site && nohup python3 -m http.server {PORT} --bind 127.0.0.1 "
        ">/dev/null 2>&1 &",
    )


def get(url: str) -> tuple[int, str]:
    with unix_http.session() as session:
        response = session.get(url, timeout=10)
        return response.status_code, response.text


def answered(url: str) -> tuple[int, str] | None:
    try:
        status, body = get(url)
    except requests.ConnectionError:
        return None
    return (status, body) if status != 502 else None


@pytest.fixture
def site(local, sandboxes):
    box = sandboxes.running(local)
    body = f"hello-{secrets.token_hex(6)}"
    serve(box, body)
    return box, body


def forwarder_pid(root: Path) -> int:
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"providers.local.forwarder" in argv and str(root).encode() in b" ".join(argv):
                return int(entry.name)
    raise AssertionError(f"no forwarder runs for {root}")


def tcp_listeners(pid: int) -> list[str]:
    """Local addresses of the TCP sockets in LISTEN state that process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    found.append(f"{table} {fields[1]}")
    return found


@contextlib.contextmanager
def searchable_by_others(path: Path) -> Iterator[None]:
    """Let other users traverse every directory above ``path`` (restored afterwards)."""
    saved = []
    for directory in path.parents:
        mode = stat.S_IMODE(directory.stat().st_mode)
        if not mode & 0o001:
            saved.append((directory, mode))
            os.chmod(directory, mode | 0o001)
    try:
        yield
    finally:
        for directory, mode in saved:
            os.chmod(directory, mode)


AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
NOBODY_CLIENT = """
import errno, os, socket, sys
path = sys.argv[1]
try:
    os.chdir(os.path.dirname(path))
    client = socket.socket(socket.AF_UNIX)
    client.connect(os.path.basename(path))
    client.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    print("connected", client.recv(100))
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc.errno))
"""


def as_nobody(path: Path) -> str:
    result = subprocess.run(
        [*AS_NOBODY, "/usr/bin/python3", "-c", NOBODY_CLIENT, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return (result.stdout + result.stderr).strip()


def test_an_exposed_service_answers_real_http_on_a_unix_socket(local, site):
    box, body = site
    url = box.expose_http_service("web", PORT)
    path = local.store.sandbox_dir(box.id) / "services" / "web.sock"
    assert url.startswith("http+unix://")
    assert unix_http.socket_path(url) == str(path)
    status, text = wait_for(lambda: answered(url))
    assert (status, text.strip()) == (200, body)
    services = local.get(box.id).networking.http_services
    assert [(s.name, s.port, s.url) for s in services] == [("web", PORT, url)]
    # Exposing again gives the same URL; a new provider object (a restart) sees it too.
    assert box.expose_http_service("web", PORT) == url
    fresh = LocalProvider.from_config(local.config_mapping())
    assert [s.url for s in fresh.get(box.id).networking.http_services] == [url]


def test_traffic_through_the_forwarder_counts_as_activity(local, site):
    box, _ = site
    url = box.expose_http_service("web", PORT)
    wait_for(lambda: answered(url))
    before = local.get(box.id).last_activity
    for _ in range(3):
        get(url)
    wait_for(lambda: local.get(box.id).last_activity > before)


def test_hiding_a_service_closes_its_socket(local, site):
    box, _ = site
    url = box.expose_http_service("web", PORT)
    wait_for(lambda: answered(url))
    box.hide_http_service("web")
    assert local.get(box.id).networking.http_services == ()
    assert not Path(unix_http.socket_path(url)).exists()
    with pytest.raises(requests.ConnectionError):
        get(url)
    box.hide_http_service("web")  # idempotent


def test_a_paused_sandbox_answers_503_and_is_never_woken_by_its_socket(local, site):
    """Wake-on-HTTP belongs to the control plane's proxy (tests/background): a connection
    to the socket must not resume a sandbox the database says is paused, even with the
    flag an earlier version kept in the state file."""
    box, _ = site
    url = box.expose_http_service("web", PORT)
    wait_for(lambda: answered(url))
    assert not local.capabilities.supports_wake_on
    with pytest.raises(Unsupported):
        box.set_wake_on(True, False)
    state_path = local.store.state_path(box.id)
    state = json.loads(state_path.read_text())
    state["wake_on_http"] = True
    state_path.write_text(json.dumps(state))
    box.pause()
    for _ in range(3):
        status, text = get(url)
        assert status == 503
        assert "paused" in text
    assert local.get(box.id).status == InstanceStatus.PAUSED
    box.resume()
    assert wait_for(lambda: answered(url))[0] == 200


def test_a_stopped_sandboxs_service_answers_503(local, site):
    box, _ = site
    url = box.expose_http_service("web", PORT)
    wait_for(lambda: answered(url))
    box.stop()
    status, text = get(url)
    assert status == 503
    assert "stopped" in text


def test_nothing_listening_inside_gives_502(local, sandboxes):
    box = sandboxes.running(local)
    url = box.expose_http_service("idle", 9999)
    status, _ = get(url)
    assert status == 502


def test_bad_service_names_and_ports_are_refused(local, sandboxes):
    box = sandboxes.running(local)
    for name, port in (("Bad Name", 80), ("web", 0), ("web", 70000)):
        with pytest.raises(ValueError, match=r"service name|port"):
            box.expose_http_service(name, port)
    assert local.get(box.id).networking.http_services == ()


def test_exposed_sockets_come_back_when_the_forwarder_restarts(local, site):
    box, body = site
    url = box.expose_http_service("web", PORT)
    wait_for(lambda: answered(url))
    forwarder.stop(local.store.root)  # as after a crash or a host reboot
    wait_for(lambda: not (local.store.root / forwarder.SOCKET_NAME).exists())
    with pytest.raises(requests.ConnectionError):
        get(url)
    assert local.get(box.id).status == InstanceStatus.RUNNING  # sandboxes do not need it
    fresh = LocalProvider.from_config(local.config_mapping())
    assert box.id in {i.id for i in fresh.list()}  # reconciliation lists regularly
    status, text = wait_for(lambda: answered(url))
    assert (status, text.strip()) == (200, body)


def test_only_the_control_planes_user_can_connect(local, site):
    box, body = site
    url = box.expose_http_service("web", PORT)
    wait_for(lambda: answered(url))
    path = Path(unix_http.socket_path(url))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(local.store.sandboxes.stat().st_mode) == 0o700
    assert as_nobody(path) == "EACCES"
    # Each layer holds on its own: with every directory above open to others, the
    # services directory still refuses; opened too, the socket's own mode refuses.
    with searchable_by_others(path.parent):
        assert as_nobody(path) == "EACCES"
        with searchable_by_others(path):
            assert as_nobody(path) == "EACCES"
    assert get(url) == (200, f"{body}\n")  # root (the control plane) can


def test_no_tcp_port_listens_for_an_exposed_service(local, site):
    box, _ = site
    url = box.expose_http_service("web", PORT)
    wait_for(lambda: answered(url))
    assert tcp_listeners(forwarder_pid(local.store.root)) == []


def test_a_state_file_with_a_host_port_is_served_on_its_socket(local, site):
    """State files from before unix sockets name a host port: they load, the restarted
    forwarder serves their services on sockets, and the port is dropped from the file."""
    box, body = site
    url = box.expose_http_service("web", PORT)
    wait_for(lambda: answered(url))
    forwarder.stop(local.store.root)
    wait_for(lambda: not (local.store.root / forwarder.SOCKET_NAME).exists())
    state_path = local.store.state_path(box.id)
    state = json.loads(state_path.read_text())
    state["services"] = {"web": {"port": PORT, "host_port": 34567}}
    state_path.write_text(json.dumps(state))
    Path(unix_http.socket_path(url)).unlink(missing_ok=True)
    fresh = LocalProvider.from_config(local.config_mapping())
    assert [s.url for s in fresh.get(box.id).networking.http_services] == [url]
    fresh.list()  # starts the forwarder, which restores from the state files
    status, text = wait_for(lambda: answered(url))
    assert (status, text.strip()) == (200, body)
    wait_for(lambda: "host_port" not in state_path.read_text())
    assert json.loads(state_path.read_text())["services"] == {"web": {"port": PORT}}
    assert tcp_listeners(forwarder_pid(local.store.root)) == []


def test_a_forwarder_from_before_the_upgrade_is_replaced(local, site):
    """A daemon of the loopback-port version outlives an upgrade (it is detached): it
    answers without the protocol number, so the provider stops it and starts its own."""
    box, body = site
    forwarder.stop(local.store.root)
    path = local.store.root / forwarder.SOCKET_NAME
    wait_for(lambda: not path.exists())
    asked = []
    old = sockets.listen(path)

    def answer_like_version_one() -> None:
        while True:
            client, _ = old.accept()
            with client:
                message = json.loads(client.makefile().readline())
                asked.append(message["op"])
                if message["op"] == "stop":
                    client.sendall(b'{"ok": true}\n')
                    path.unlink()
                    old.close()
                    return
                client.sendall(b'{"error": "KeyError: \'host_port\'"}\n')

    thread = threading.Thread(target=answer_like_version_one, daemon=True)
    thread.start()
    url = box.expose_http_service("web", PORT)
    thread.join(10)
    assert asked == ["bind", "stop"]
    status, text = wait_for(lambda: answered(url))
    assert (status, text.strip()) == (200, body)
