"""Terminal sessions (``Instance.open_terminal``), checked against every provider.

A provider without ``supports_terminal`` must say why and raise ``Unsupported``
(``test_terminal_or_unsupported``); the other tests run for every provider that has it.
Timeouts below only stop a broken session from hanging the suite: nothing asserts how long
anything took.
"""

from __future__ import annotations

import re

import pytest

from providers.base import MAX_TERMINAL_CELLS, TerminalSession
from providers.errors import Conflict, Unsupported
from tests.conformance.harnesses import ProviderUnderTest

#: Guards against a session that never answers (a failure, not a measurement).
PATIENCE = 30.0


def read_until(session: TerminalSession, pattern: bytes) -> bytes:
    """Everything read until ``pattern`` (a regular expression) matched the output."""
    seen = b""
    while not re.search(pattern, seen):
        chunk = session.read(timeout=PATIENCE)
        assert chunk, f"the output ended before {pattern!r}; it was {seen[-500:]!r}"
        seen += chunk
    return seen


def read_to_end(session: TerminalSession) -> bytes:
    seen = b""
    while chunk := session.read(timeout=PATIENCE):
        seen += chunk
    return seen


def processes(instance) -> list[str]:
    """The command line of every live process in the instance, read from /proc (this
    checker's own command line names no marker)."""
    listing = instance.exec(
        "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\"; echo; done", timeout=PATIENCE
    )
    return [line.strip() for line in listing.stdout.splitlines() if line.strip()]


@pytest.fixture
def instance(pt: ProviderUnderTest):
    capabilities = pt.provider.capabilities
    if not capabilities.supports_terminal:
        pytest.skip(f"no terminal here: {capabilities.reason('supports_terminal')}")
    return pt.running()


def test_terminal_or_unsupported(pt):
    capabilities = pt.provider.capabilities
    if capabilities.supports_terminal:
        return  # the tests below hold it to the contract
    assert capabilities.reason("supports_terminal")
    instance = pt.running()
    with pytest.raises(Unsupported) as raised:
        instance.open_terminal()
    assert raised.value.capability == "supports_terminal"


def test_an_interactive_shell_runs_what_is_typed(instance):
    with instance.open_terminal(cols=80, rows=24) as session:
        session.write(b"echo sbx-$((6*7))-ok\n")
        # The typed line is echoed as typed; only the shell's answer has 42 in it.
        read_until(session, rb"sbx-42-ok")
        session.write(b"echo $TERM; tty\n")
        output = read_until(session, rb"/dev/pts/\d+")
        assert b"xterm-256color" in output
        assert session.exit_code is None


def test_the_window_size_is_set_and_resized(instance):
    with instance.open_terminal("/bin/sh", cols=100, rows=30) as session:
        session.write(b"stty size\n")
        read_until(session, rb"\b30 100\b")
        session.resize(132, 43)
        session.write(b"stty size\n")
        read_until(session, rb"\b43 132\b")
        with pytest.raises(ValueError, match="from 1 to"):
            session.resize(0, 10)
        with pytest.raises(ValueError, match="from 1 to"):
            session.resize(80, MAX_TERMINAL_CELLS + 1)


def test_the_exit_status_is_reported(instance):
    with instance.open_terminal(cols=80, rows=24) as session:
        session.write(b"exit 3\n")
        assert session.wait(timeout=PATIENCE) == 3
        assert session.exit_code == 3
        read_to_end(session)  # the output ends with the process
    with instance.open_terminal("echo from-a-command; exit 7") as session:
        assert b"from-a-command" in read_to_end(session)
        assert session.wait(timeout=PATIENCE) == 7


def test_environment_and_working_directory(instance):
    command = ["/bin/sh", "-c", 'echo "[$GREETING]" "[$TERM]"; pwd']
    with instance.open_terminal(command, env={"GREETING": "hello there", "TERM": "vt100"}) as s:
        output = read_to_end(s).decode()
    assert "[hello there] [vt100]" in output
    assert instance.exec("pwd", timeout=PATIENCE).stdout.strip() in output
    with pytest.raises(ValueError, match="BAD=NAME"):
        instance.open_terminal("true", env={"BAD=NAME": "x"})


def test_a_never_ending_stream_is_read_as_fast_as_it_comes(instance):
    wanted = 8 * 1024 * 1024
    with instance.open_terminal("yes sbx-stream") as session:
        received = 0
        tail = b""
        while received < wanted:
            chunk = session.read(timeout=PATIENCE)
            assert chunk, "the stream ended early"
            received += len(chunk)
            tail = (tail + chunk)[-4096:]
        # Nothing was dropped or mangled on the way: whole lines of what `yes` prints
        # (the terminal turns each newline into CR LF).
        lines = tail.split(b"\r\n")[1:-1]
        assert len(lines) > 100
        assert set(lines) == {b"sbx-stream"}
        assert session.exit_code is None  # still streaming when we let go
    assert not [p for p in processes(instance) if p.startswith("yes sbx-stream")]


def test_closing_the_client_ends_the_session_and_its_processes(instance):
    session = instance.open_terminal("/bin/sh", cols=80, rows=24)
    # A background job (its own process group under job control) and a foreground one.
    session.write(b"sleep 31234 & sleep 31235 & echo started-$((1+1))\n")
    read_until(session, rb"started-2")
    session.write(b"sleep 31236\n")
    alive = processes(instance)
    assert "sleep 31234" in alive
    assert "sleep 31235" in alive
    session.close()
    left = [p for p in processes(instance) if p in {"sleep 31234", "sleep 31235", "sleep 31236"}]
    assert left == []
    assert session.read(timeout=PATIENCE) == b""
    with pytest.raises(Conflict):
        session.write(b"echo too late\n")
    session.close()  # idempotent
    assert session.exit_code is not None


def test_a_terminal_needs_a_running_instance(instance):
    instance.stop()
    with pytest.raises(Conflict):
        instance.open_terminal()
