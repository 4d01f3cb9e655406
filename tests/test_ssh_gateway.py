"""The SSH gateway with the real OpenSSH client, into real ``local`` sandboxes.

Logins (a registered key, a token from the API, refused ones), an interactive shell on a
pseudo-terminal, ``ssh host cmd`` with its exit status and its two streams, ``ssh -L`` to
an exposed service (and nowhere else), scp both ways, a paused sandbox woken by the
connection, and the audit trail of each.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from datetime import timedelta

import pytest
from django.utils import timezone

from sandboxes.models import Outcome, SandboxEvent, SshToken
from sandboxes.services import interactive, lifecycle
from sandboxes.services import ssh as ssh_service
from sandboxes.services.actors import Actor
from tests.local_support import require_local_runtime
from tests.ssh_support import Interactive, gateway, keypair, require_openssh, scp, ssh

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def actor(member) -> Actor:
    return Actor.for_user(member)


@pytest.fixture
def gw(tmp_path, settings, transactional_db):
    require_openssh()
    with gateway(tmp_path, settings) as running:
        yield running


@pytest.fixture
def key(tmp_path, actor):
    path, public = keypair(tmp_path / "alice")
    ssh_service.add_key(actor=actor, name="laptop", public_key=public)
    return path


@pytest.fixture
def box(local_backend, team, actor, settings):
    require_local_runtime()
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": True}
    created = lifecycle.create_sandbox(team=team, actor=actor, preset_id="1vcpu_1gb_8gb")
    created.refresh_from_db()
    assert created.status == "running", created.last_error
    return created


def sessions(sandbox) -> list[SandboxEvent]:
    return list(SandboxEvent.objects.filter(sandbox=sandbox, action="ssh_session").order_by("id"))


def test_a_command_returns_its_exit_status_and_its_two_streams(gw, box, key):
    done = ssh(gw.port, box.pk, "echo out-$((6*7)); echo err-$((7*7)) >&2; exit 3", identity=key)
    assert done.returncode == 3, done.stderr
    assert done.stdout == b"out-42\n"
    assert done.stderr == b"err-49\n"
    opened, closed = sessions(box)
    assert (opened.data["phase"], opened.data["kind"], opened.data["method"]) == (
        "open",
        "exec",
        "key",
    )
    assert opened.actor_user.username == "alice"
    assert closed.data["phase"] == "close"
    assert closed.data["exit_code"] == 3
    assert closed.data["opened_event"] == opened.pk
    assert closed.data["duration_seconds"] >= 0


def test_a_command_reads_its_input_to_the_end(gw, box, key):
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value: binary-safe both ways
    done = ssh(gw.port, box.pk, "cat | sha256sum; cat >/dev/null", identity=key, input=data)
    assert done.returncode == 0, done.stderr
    import hashlib

    assert done.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_an_interactive_shell_on_a_terminal(gw, box, key):
    session = Interactive(gw.port, box.pk, key)
    try:
        session.expect(box.provider_ref.encode(), timeout=30)  # the prompt
        session.send(b"echo sum-$((6*7))\r")
        session.expect(b"sum-42")
        session.send(b"echo size-$(stty size | tr ' ' x)\r")  # the client's window
        session.expect(b"size-30x100")
        session.resize(120, 40)
        time.sleep(0.5)  # the window-change message is asynchronous; retried below
        for _ in range(20):
            session.send(b"echo size-$(stty size | tr ' ' x)\r")
            try:
                session.expect(b"size-40x120", timeout=1)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError("the resize never reached the sandbox's terminal")
        session.send(b"tty\r")
        session.expect(b"/dev/pts/")
        session.send(b"exit 7\r")
        assert session.wait() == 7
    finally:
        session.kill()
    opened, closed = sessions(box)
    assert opened.data["kind"] == "shell"
    assert closed.data["exit_code"] == 7
    events = SandboxEvent.objects.filter(sandbox=box, action__startswith="terminal_")
    assert [e.action for e in events.order_by("id")] == ["terminal_open", "terminal_close"]


def test_token_login_for_one_sandbox(gw, box, actor, team, local_backend):
    issued = ssh_service.issue_token(sandbox=box, actor=actor)
    assert issued.command == f"ssh -p {gw.port} {issued.token}@127.0.0.1"
    assert SshToken.objects.get().digest != issued.token  # hashed at rest
    assert issued.token not in str(list(SshToken.objects.values()))
    done = ssh(gw.port, issued.token, "hostname", identity=None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == box.provider_ref
    assert sessions(box)[0].data["method"] == "token"


def test_an_expired_token_is_refused(gw, box, actor):
    issued = ssh_service.issue_token(sandbox=box, actor=actor)
    SshToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    done = ssh(gw.port, issued.token, "true", identity=None)
    assert done.returncode == 255
    assert b"Permission denied" in done.stderr
    assert not sessions(box)
    refused = SandboxEvent.objects.get(sandbox=box, action="ssh_login")
    assert refused.outcome == Outcome.REFUSED
    assert "expired" in refused.message


def test_an_unknown_key_or_token_is_refused(gw, box, tmp_path):
    stranger, _ = keypair(tmp_path / "stranger")
    assert ssh(gw.port, box.pk, "true", identity=stranger).returncode == 255
    forged = ssh_service.TOKEN_PREFIX + "a" * 40
    assert ssh(gw.port, forged, "true", identity=None).returncode == 255
    assert not sessions(box)


def test_another_teams_sandbox_and_a_viewer_are_refused(
    gw, box, tmp_path, outsider, viewer, local_backend
):
    other_key, other_public = keypair(tmp_path / "mallory")
    ssh_service.add_key(actor=Actor.for_user(outsider), name="m", public_key=other_public)
    refused = ssh(gw.port, box.pk, "true", identity=other_key)
    assert refused.returncode == 255
    assert b"Permission denied" in refused.stderr
    viewer_key, viewer_public = keypair(tmp_path / "victor")
    ssh_service.add_key(actor=Actor.for_user(viewer), name="v", public_key=viewer_public)
    assert ssh(gw.port, box.pk, "true", identity=viewer_key).returncode == 255
    with pytest.raises(ssh_service.NotAllowed):
        ssh_service.issue_token(sandbox=box, actor=Actor.for_user(viewer))
    with pytest.raises(ssh_service.NotAllowed):
        ssh_service.issue_token(sandbox=box, actor=Actor.for_user(outsider))
    assert not sessions(box)
    # The viewer's attempt is on the record (a stranger's says nothing about the sandbox).
    refusals = SandboxEvent.objects.filter(sandbox=box, action="ssh_login")
    assert {e.actor_user.username for e in refusals} == {"victor"}


_CONNECT = "import socket; socket.create_connection(('127.0.0.1', %d))"


def _serve_in(box, actor, port: int) -> None:
    interactive.exec_command(
        sandbox=box,
        actor=actor,
        command=(
            "mkdir -p /tmp/www && echo hello-from-$(hostname) > /tmp/www/index.html && "
            f"cd /tmp/www && setsid python3 -m http.server {port} --bind 127.0.0.1 "
            "</dev/null >/dev/null 2>&1 &"
        ),
    )
    for _ in range(100):
        probe = interactive.exec_command(
            sandbox=box,
            actor=actor,
            command=[
                "python3",
                "-c",
                f"import socket; socket.create_connection(('127.0.0.1', {port}))",
            ],
        )
        if probe.exit_code == 0:
            return
        time.sleep(0.1)
    raise AssertionError("the service did not start")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Forward:
    """``ssh -N -L <local port>:<host>:<port>`` in the background."""

    def __init__(self, gw, box, key, host: str, port: int) -> None:
        from tests.ssh_support import ssh_options

        self.local = _free_port()
        self.process = subprocess.Popen(
            [
                "ssh",
                *ssh_options(gw.port, key),
                "-N",
                *("-L", f"127.0.0.1:{self.local}:{host}:{port}"),
                *("-p", str(gw.port)),
                f"{box.pk}@127.0.0.1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.local), timeout=1).close()
                break
            except OSError:
                assert self.process.poll() is None, self.process.stderr.read()
                time.sleep(0.05)

    def __enter__(self) -> Forward:
        return self

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait(10)


def test_ssh_L_reaches_an_exposed_service_of_the_sandbox(gw, box, key, actor):
    _serve_in(box, actor, 8123)
    interactive.expose_service(sandbox=box, actor=actor, name="web", port=8123)
    with Forward(gw, box, key, "localhost", 8123) as forward:
        url = f"http://127.0.0.1:{forward.local}/"
        answer = urllib.request.urlopen(url, timeout=20)
        with answer:
            assert answer.read().decode().strip() == f"hello-from-{box.provider_ref}"
    kinds = [e.data.get("kind") for e in sessions(box) if e.data.get("phase") == "open"]
    assert "forward" in kinds


def _refused(forward: Forward) -> bytes:
    with socket.create_connection(("127.0.0.1", forward.local), timeout=20) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.settimeout(20)
        try:
            return sock.recv(100)
        except ConnectionResetError:
            return b""


def test_ssh_L_goes_nowhere_but_the_sandboxs_exposed_services(gw, box, key, actor):
    # Hosts the gateway itself could reach: a service on the host's loopback, and another
    # address (127.0.0.2) standing for "anywhere else"; both must receive nothing.
    host_service = socket.socket()
    host_service.bind(("127.0.0.1", 0))
    host_service.listen()
    host_port = host_service.getsockname()[1]
    elsewhere = socket.socket()
    elsewhere.bind(("127.0.0.2", 0))
    elsewhere.listen()
    elsewhere_port = elsewhere.getsockname()[1]
    # The sandbox serves on 8124 and exposes it: only "localhost" names it.
    _serve_in(box, actor, 8124)
    interactive.expose_service(sandbox=box, actor=actor, name="web", port=8124)
    other_sandbox = "sbx-" + "x" * 10  # another sandbox's name as the destination
    try:
        targets = [
            ("127.0.0.1", host_port),  # not a service of this sandbox: the host's
            ("localhost", gw.port),  # the gateway itself
            ("127.0.0.2", elsewhere_port),  # anywhere else
            (other_sandbox, 8124),  # another sandbox
            ("127.0.0.2", 8124),
        ]
        for host, port in targets:
            with Forward(gw, box, key, host, port) as forward:
                assert _refused(forward) == b"", (host, port)
        for listener in (host_service, elsewhere):
            listener.settimeout(0.5)
            with pytest.raises(TimeoutError):
                listener.accept()  # nothing reached it
    finally:
        host_service.close()
        elsewhere.close()
    refusals = SandboxEvent.objects.filter(sandbox=box, action="ssh_forward")
    # (Each forward was tried twice: once when Forward waited for its port.)
    assert {(e.data["host"], e.data["port"]) for e in refusals} == set(targets)
    assert all(e.outcome == Outcome.REFUSED for e in refusals)


def test_scp_both_ways(gw, box, key, tmp_path):
    payload = bytes(range(256)) * 2048 + b"\r\n\x00\x04\x03"  # binary, control bytes too
    source = tmp_path / "up.bin"
    source.write_bytes(payload)
    up = scp(gw.port, key, str(source), f"{box.pk}@127.0.0.1:/tmp/up.bin")
    assert up.returncode == 0, up.stderr
    back = tmp_path / "back.bin"
    down = scp(gw.port, key, f"{box.pk}@127.0.0.1:/tmp/up.bin", str(back))
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == payload
    # The original protocol (scp -O runs `scp -t` / `scp -f` as commands) too.
    legacy = tmp_path / "legacy.bin"
    assert scp(gw.port, key, "-O", f"{box.pk}@127.0.0.1:/tmp/up.bin", str(legacy)).returncode == 0
    assert legacy.read_bytes() == payload
    kinds = {e.data.get("kind") for e in sessions(box)}
    assert "sftp" in kinds


def test_a_paused_sandbox_is_woken_by_the_connection(gw, box, key, actor):
    lifecycle.pause_sandbox(sandbox=box, actor=actor)
    box.refresh_from_db()
    assert box.status == "paused"
    refused = ssh(gw.port, box.pk, "true", identity=key)
    assert refused.returncode == 255
    assert b"resume it first" in refused.stderr
    interactive.set_wake_on(sandbox=box, actor=actor, http=False, ssh=True)
    done = ssh(gw.port, box.pk, "echo awake", identity=key)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"awake\n"
    box.refresh_from_db()
    assert box.status == "running"


def test_a_client_that_goes_away_ends_its_session(gw, box, key, actor):
    session = Interactive(gw.port, box.pk, key)
    session.expect(box.provider_ref.encode(), timeout=30)
    session.send(b"sleep 4242\r")
    time.sleep(0.5)
    session.kill()  # the client dies: no exit, no EOF, the connection just drops
    deadline = time.monotonic() + 30
    while not SandboxEvent.objects.filter(sandbox=box, action="terminal_close").exists():
        assert time.monotonic() < deadline, "the session was never closed"
        time.sleep(0.1)
    closed = SandboxEvent.objects.get(sandbox=box, action="terminal_close")
    assert closed.data["reason"] == "the client disconnected"
    # Its processes went with it.
    left = interactive.exec_command(sandbox=box, actor=actor, command="ps -eo args")
    assert "sleep 4242" not in left.stdout
    while sessions(box)[-1].data.get("phase") != "close":
        assert time.monotonic() < deadline, "the ssh session's end was never recorded"
        time.sleep(0.1)


def test_a_shell_without_a_terminal_reads_its_commands_from_stdin(gw, box, key):
    done = ssh(gw.port, box.pk, identity=key, extra=["-T"], input=b"echo piped-$((2*21))\nexit 5\n")
    assert done.returncode == 5, done.stderr
    assert b"piped-42" in done.stdout
