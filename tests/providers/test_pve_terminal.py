"""The sandbox agent's terminal endpoint: only this sandbox's secret opens it, and a frame
that is forged, replayed or out of order ends the session (its processes with it).

The conformance suite (tests/conformance/test_terminal.py) holds pve-lxc and pve-vm to the
terminal contract; these tests attack the protocol underneath.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import requests

from providers.base import InstanceSpec
from providers.pve.agent import TO_AGENT, AgentServer, frame, sign
from providers.pve.terminal import AgentRefused, open_session
from providers.pve.vm_agent import SECRET_PATH, vm_secret
from tests.pve_sim.harness import simulated, template_for

PATIENCE = 30.0


def _alive(marker: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().replace(b"\0", b" ").strip() == marker.encode():
                return True
        except OSError:
            continue
    return False


def _wait_alive(marker: str) -> bool:
    deadline = time.monotonic() + PATIENCE
    while not _alive(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _wait_gone(marker: str) -> bool:
    deadline = time.monotonic() + PATIENCE
    while _alive(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _read_until(session, pattern: bytes) -> bytes:
    seen = b""
    while not re.search(pattern, seen):
        chunk = session.read(timeout=PATIENCE)
        assert chunk, seen
        seen += chunk
    return seen


@pytest.fixture
def agent(tmp_path):
    server = AgentServer("127.0.0.1", 0, secret="right", workdir=tmp_path).start(0.02)
    yield server.address[1]
    server.close()


def _open(port: int, command: str, secret: str = "right"):  # noqa: S107 - a test value
    return open_session(
        "127.0.0.1", port, secret, argv=["/bin/sh", "-c", command], cols=80, rows=24, env={}
    )


def test_a_wrong_secret_opens_no_terminal(agent):
    with pytest.raises(AgentRefused) as refused:
        _open(agent, "exec sleep 31301", secret="wrong")
    assert refused.value.status == 401
    assert not _alive("sleep 31301")


@pytest.mark.parametrize("attack", ["forged", "replayed"])
def test_a_forged_or_replayed_frame_ends_the_session_and_its_processes(agent, attack):
    session = _open(agent, "echo ready; exec sleep 31302")
    _read_until(session, rb"ready")
    assert _wait_alive("sleep 31302")
    session.write(b"typed\n")  # frame 0, accepted
    if attack == "forged":  # the right sequence number, but not made with the session's key
        bad = frame(b"not the session key", TO_AGENT, b"i", session._seq, b"kill\n")
    else:  # frame 0 again, exactly as the client sent it
        bad = frame(session._key, TO_AGENT, b"i", 0, b"typed\n")
    session._conn.sendall(bad)
    assert session.wait(timeout=PATIENCE) == -9
    while session.read(timeout=PATIENCE):
        pass
    assert _wait_gone("sleep 31302")
    session.close()


def test_the_agent_checks_the_size_and_command_it_is_asked_for(agent):
    def post(body: dict) -> requests.Response:
        data = json.dumps(body).encode()
        stamp, nonce = f"{time.time():.3f}", f"nonce-{time.monotonic_ns()}"
        headers = {
            "X-Sandbox-Time": stamp,
            "X-Sandbox-Nonce": nonce,
            "X-Sandbox-Signature": sign("right", "POST", "/v1/terminal", stamp, nonce, data),
        }
        return requests.post(
            f"http://127.0.0.1:{agent}/v1/terminal", data=data, headers=headers, timeout=10
        )

    assert post({"argv": ["sh"], "cols": 0, "rows": 24}).status_code == 400
    assert post({"argv": ["sh"], "cols": 80, "rows": 5000}).status_code == 400
    assert post({"argv": []}).status_code == 400
    assert post({"argv": ["sh"], "env": {"A=B": "x"}}).status_code == 400
    assert post({"argv": ["/nonexistent/program"]}).status_code == 400


def test_each_vm_has_its_own_agent_secret_kept_out_of_pve(tmp_path):
    with simulated("pve-vm", tmp_path) as (_sim, provider):
        made = []
        try:
            for n in (1, 2):
                spec_id = f"sbx-vmterm{n}"
                spec = InstanceSpec(spec_id, "p", 1, 512, 4)
                instance = provider.create(spec, template_for("pve-vm"), {"sandbox_id": spec_id})
                made.append(instance)
                instance.start()
            first, second = (provider.get(i.id) for i in made)
            with first.open_terminal("echo in-first") as session:
                assert b"in-first" in _read_until(session, rb"in-first")
            with second.open_terminal("echo in-second") as session:
                _read_until(session, rb"in-second")
            token = provider.settings.token_secret
            secrets_ = [vm_secret(token, i.vmid, i.sandbox_id) for i in (first, second)]
            assert secrets_[0] != secrets_[1]
            # The secret is in the guest (a 0600 file of /run) and nowhere in PVE's config.
            inside = first.exec(f"cat {SECRET_PATH}; echo; stat -c %a {SECRET_PATH}", timeout=30)
            assert inside.stdout.split() == [secrets_[0], "600"]
            for instance in (first, second):
                config = json.dumps(provider.guest_config(instance.node, instance.vmid))
                assert not any(s in config for s in secrets_)
            # The second sandbox's secret does not open the first one's agent.
            with pytest.raises(AgentRefused):
                open_session(
                    first._address_of(),
                    provider.settings.agent_port,
                    secrets_[1],
                    argv=["true"],
                    cols=80,
                    rows=24,
                    env={},
                )
        finally:
            for instance in made:
                instance.delete()


@pytest.mark.parametrize("kind", ["pve-lxc", "pve-vm"])
def test_a_terminal_ends_with_its_guest_and_a_restarted_guest_has_terminals(tmp_path, kind):
    with simulated(kind, tmp_path) as (_sim, provider):
        spec = InstanceSpec(f"sbx-restart-{kind}", "p", 1, 512, 4)
        instance = provider.create(spec, template_for(kind), {"sandbox_id": spec.sandbox_id})
        try:
            instance.start()
            instance = provider.get(instance.id)
            session = instance.open_terminal("/bin/sh")
            session.write(b"echo up-$((2+3))\n")
            _read_until(session, rb"up-5")
            instance.stop()
            while session.read(timeout=PATIENCE):  # the output ends with the guest
                pass
            assert session.wait(timeout=PATIENCE) == -9
            session.close()
            instance.start()  # a VM boots without the agent: the next terminal brings it
            with provider.get(instance.id).open_terminal("echo again-$((3+4))") as again:
                _read_until(again, rb"again-7")
                assert again.wait(timeout=PATIENCE) == 0
        finally:
            instance.delete()
