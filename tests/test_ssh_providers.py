"""The SSH gateway's core on the other providers, with the real OpenSSH client: a key and
a token login, ``ssh host cmd`` with its exit status and its two streams, a shell on a
pseudo-terminal, scp both ways, ``ssh -L`` to an exposed service and a paused sandbox
woken by the connection: ``docker`` (a real daemon), ``pve-lxc`` and ``pve-vm`` (the PVE simulator).
Each provider is set up once for the module, as in the background tests
(``tests/background/harness.py``). ``local`` has the whole set in test_ssh_gateway.py.
"""

from __future__ import annotations

import pytest

from sandboxes.models import SandboxEvent
from sandboxes.services import lifecycle
from sandboxes.services import ssh as ssh_service
from sandboxes.services.actors import Actor
from tests.background import harness
from tests.ssh_support import Interactive, gateway, keypair, require_openssh, scp, ssh

pytestmark = pytest.mark.django_db(transaction=True)
PROVIDERS = ("docker", "pve-lxc", "pve-vm")


@pytest.fixture(scope="module", params=PROVIDERS)
def put(request, tmp_path_factory):
    require_openssh()
    with harness.harness(request.param, tmp_path_factory) as under_test:
        yield request.param, under_test


@pytest.fixture
def box(put, presets, team, member, settings):
    name, under_test = put
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": True}
    backend = harness.activate(name, under_test)
    created = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(member), preset_id=backend.preset_id
    )
    created.refresh_from_db()
    assert created.status == "running", created.last_error
    yield created
    harness.clean_up(backend)


@pytest.fixture
def gw(tmp_path, settings, transactional_db):
    with gateway(tmp_path, settings) as running:
        yield running


@pytest.fixture
def key(tmp_path, member):
    path, public = keypair(tmp_path / "alice")
    ssh_service.add_key(actor=Actor.for_user(member), name="laptop", public_key=public)
    return path


def test_a_command_with_a_key(gw, box, key):
    done = ssh(gw.port, box.pk, "echo out-$((6*7)); echo err-$((7*7)) >&2; exit 3", identity=key)
    assert done.returncode == 3, done.stderr
    assert done.stdout == b"out-42\n"
    assert done.stderr == b"err-49\n"
    events = SandboxEvent.objects.filter(sandbox=box, action="ssh_session").order_by("id")
    phases = [e.data["phase"] for e in events]
    assert phases == ["open", "close"]


def test_a_command_with_a_token(gw, box, member):
    issued = ssh_service.issue_token(sandbox=box, actor=Actor.for_user(member))
    done = ssh(gw.port, issued.token, "echo via-token", identity=None)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"via-token\n"


def test_an_interactive_shell(gw, box, key):
    session = Interactive(gw.port, box.pk, key)
    try:
        session.send(b"echo sum-$((6*7))\r")
        session.expect(b"sum-42", timeout=60)
        session.send(b"exit 7\r")
        assert session.wait(timeout=60) == 7
    finally:
        session.kill()


def test_input_streams_where_the_provider_can(gw, box, key):
    if not ssh_service.streams_processes(box):
        pytest.skip(f"{box.provider}: {ssh_service.process_refusal(box)}")
    data = bytes(range(256)) * 512
    done = ssh(gw.port, box.pk, "wc -c", identity=key, input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == str(len(data)).encode()


def test_scp_both_ways(gw, box, key, tmp_path):
    """scp's SFTP protocol (an sftp-server in the sandbox) and the original one (``scp -t``
    and ``scp -f`` run as commands), binary bytes both ways. The remote path is relative:
    the sandbox's working directory. Not on docker here: its base image (busybox) has no
    sftp-server (test_ssh_gateway.py covers scp on ``local``)."""
    if box.provider == "docker":
        pytest.skip("docker: the base image has no sftp-server")
    assert ssh_service.streams_processes(box), ssh_service.process_refusal(box)
    payload = bytes(range(256)) * 1024 + b"\r\n\x00\x04\x03"  # control bytes too
    source = tmp_path / "up.bin"
    source.write_bytes(payload)
    remote = f"{box.pk}@127.0.0.1:scp-{box.pk}.bin"
    up = scp(gw.port, key, str(source), remote)
    assert up.returncode == 0, up.stderr
    back = tmp_path / "back.bin"
    down = scp(gw.port, key, remote, str(back))
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == payload
    legacy = tmp_path / "legacy.bin"
    done = scp(gw.port, key, "-O", remote, str(legacy))
    assert done.returncode == 0, done.stderr
    assert legacy.read_bytes() == payload
    kinds = {
        e.data.get("kind")
        for e in SandboxEvent.objects.filter(sandbox=box, action="ssh_session")
        if e.data.get("phase") == "open"
    }
    assert "sftp" in kinds, kinds


def test_ssh_L_reaches_an_exposed_service(gw, box, key, put, member):
    """Through the provider's service path (its guest address for PVE, the published port
    for Docker), as the preview URLs reach it."""
    import socket
    import subprocess
    import time
    import urllib.request

    from sandboxes.services import interactive
    from tests.ssh_support import ssh_options

    name, under_test = put
    backend = harness.activate(name, under_test)
    port, stop = harness.HTTP_SERVICES[name](backend, box, b"hello-through-ssh")
    try:
        interactive.expose_service(sandbox=box, actor=Actor.for_user(member), name="web", port=port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            local = probe.getsockname()[1]
        forward = subprocess.Popen(
            [
                "ssh",
                *ssh_options(gw.port, key),
                "-N",
                *("-L", f"127.0.0.1:{local}:localhost:{port}"),
                *("-p", str(gw.port)),
                f"{box.pk}@127.0.0.1",
            ],
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    answer = urllib.request.urlopen(f"http://127.0.0.1:{local}/hello", timeout=10)
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the forward never answered"
                    time.sleep(0.1)
            with answer:
                assert answer.read() == b"hello-through-ssh"
        finally:
            forward.kill()
            forward.wait(10)
    finally:
        stop()


def test_a_paused_sandbox_is_woken_by_the_connection(gw, box, key, member):
    from sandboxes.services import interactive
    from sandboxes.services.backends import capabilities

    if not capabilities(box.provider).supports_pause:
        pytest.skip(f"{box.provider}: {capabilities(box.provider).reason('supports_pause')}")
    actor = Actor.for_user(member)
    lifecycle.pause_sandbox(sandbox=box, actor=actor)
    box.refresh_from_db()
    assert box.status == "paused", box.last_error
    interactive.set_wake_on(sandbox=box, actor=actor, http=False, ssh=True)
    done = ssh(gw.port, box.pk, "echo awake", identity=key)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"awake\n"
    box.refresh_from_db()
    assert box.status == "running"
