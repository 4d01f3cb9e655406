"""The sandbox agent's process endpoint (``POST /v1/process``): only this sandbox's secret
opens it, a frame that is forged, replayed, out of order or from a terminal session ends
the session (its processes with it), and closing kills what the command started.

The conformance suite (tests/conformance/test_process.py) holds pve-lxc and pve-vm to the
streamed-process contract; these tests attack the protocol underneath.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from providers.errors import Conflict
from providers.pve.agent import TO_AGENT, AgentServer, frame, session_key, sign
from providers.pve.process import PATH, AgentProcess, open_process
from providers.pve.terminal import AgentRefused, connect
from tests.providers.test_pve_terminal import _alive, _wait_alive, _wait_gone

PATIENCE = 30.0


@pytest.fixture
def agent(tmp_path):
    server = AgentServer("127.0.0.1", 0, secret="right", workdir=tmp_path).start(0.02)
    yield server.address[1]
    server.close()


def _open(port: int, command: str, secret: str = "right"):  # noqa: S107 - a test value
    return open_process("127.0.0.1", port, secret, argv=["/bin/sh", "-c", command], env={})


def _open_with_nonce(port: int, command: str) -> tuple[AgentProcess, str]:
    """As ``open_process`` does, keeping the request's nonce."""
    body = json.dumps({"argv": ["/bin/sh", "-c", command], "env": {}}).encode()
    conn, nonce, early, where = connect("127.0.0.1", port, "right", PATH, body, "process")
    return AgentProcess(conn, session_key("right", nonce, "process"), early, where), nonce


def _read_until(process, wanted: bytes) -> bytes:
    seen = b""
    while wanted not in seen:
        _stream, chunk = process.read(timeout=PATIENCE)
        assert chunk, seen
        seen += chunk
    return seen


def test_a_wrong_secret_starts_no_process(agent):
    with pytest.raises(AgentRefused) as refused:
        _open(agent, "exec sleep 31401", secret="wrong")
    assert refused.value.status == 401
    assert not _alive("sleep 31401")


@pytest.mark.parametrize("attack", ["forged", "replayed", "reordered", "terminal-key"])
def test_a_bad_frame_ends_the_session_and_its_processes(agent, attack):
    process, nonce = _open_with_nonce(agent, "echo ready; exec sleep 31402")
    _read_until(process, b"ready")
    assert _wait_alive("sleep 31402")
    process.write(b"typed\n")  # frame 0, accepted
    key, seq = process._key, process._seq
    if attack == "forged":  # the right sequence number, but not made with the session's key
        bad = frame(b"not the session key", TO_AGENT, b"i", seq, b"more\n")
    elif attack == "replayed":  # frame 0 again, exactly as the client sent it
        bad = frame(key, TO_AGENT, b"i", 0, b"typed\n")
    elif attack == "reordered":  # authentic, but ahead of its turn
        bad = frame(key, TO_AGENT, b"i", seq + 1, b"later\n")
    else:  # made with the key a terminal opened with this nonce would have
        bad = frame(session_key("right", nonce, "terminal"), TO_AGENT, b"i", seq, b"more\n")
    process._conn.sendall(bad)
    assert process.wait(timeout=PATIENCE) == -9
    while process.read(timeout=PATIENCE)[1]:
        pass
    assert _wait_gone("sleep 31402")
    process.close()


def test_the_end_of_input_reaches_the_command_and_input_after_it_is_refused(agent):
    process = _open(agent, "wc -c; echo done >&2")
    process.write(b"x" * 100_000)
    process.close_stdin()
    with pytest.raises(Conflict):
        process.write(b"late")
    out, err = b"", b""
    while True:
        stream, chunk = process.read(timeout=PATIENCE)
        if not chunk:
            break
        if stream == process.STDERR:
            err += chunk
        else:
            out += chunk
    assert (out.strip(), err) == (b"100000", b"done\n")
    assert process.wait(timeout=PATIENCE) == 0
    process.close()


def test_input_to_an_ended_command_is_refused(agent):
    with _open(agent, "exit 5") as process:
        assert process.wait(timeout=PATIENCE) == 5
        with pytest.raises(Conflict):
            process.write(b"too late")


def test_close_kills_the_commands_background_children(agent):
    process = _open(agent, "sleep 31403 & echo started; wait")
    _read_until(process, b"started")
    assert _wait_alive("sleep 31403")
    process.close()
    assert process.exit_code is not None
    assert _wait_gone("sleep 31403")


def test_output_ends_with_the_command_even_when_a_child_holds_the_pipes(agent):
    with _open(agent, "sleep 31404 & echo bye") as process:
        process.close_stdin()
        assert _read_until(process, b"bye")
        assert process.read(timeout=PATIENCE) == (0, b"")
        assert process.wait(timeout=PATIENCE) == 0


def test_the_agent_checks_the_command_it_is_asked_for(agent):
    def post(body: dict, nonce: str | None = None) -> requests.Response:
        data = json.dumps(body).encode()
        stamp, nonce = f"{time.time():.3f}", nonce or f"nonce-{time.monotonic_ns()}"
        headers = {
            "X-Sandbox-Time": stamp,
            "X-Sandbox-Nonce": nonce,
            "X-Sandbox-Signature": sign("right", "POST", "/v1/process", stamp, nonce, data),
        }
        return requests.post(
            f"http://127.0.0.1:{agent}/v1/process", data=data, headers=headers, timeout=10
        )

    assert post({"argv": []}).status_code == 400
    assert post({"argv": ["sh"], "env": {"A=B": "x"}}).status_code == 400
    assert post({"argv": ["/nonexistent/program"]}).status_code == 400
    # A request is good once: its nonce again is refused before anything runs.
    assert post({"argv": ["/nonexistent/program"]}, nonce="once-only-nonce").status_code == 400
    assert post({"argv": ["sleep", "31405"]}, nonce="once-only-nonce").status_code == 401
    assert not _alive("sleep 31405")
