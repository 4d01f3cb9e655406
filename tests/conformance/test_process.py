"""Streamed processes (``Instance.open_process``), checked against every provider.

A provider without ``supports_process`` must say why and raise ``Unsupported``; the others
pass bytes both ways untouched, keep stdout and stderr apart, deliver the end of the input,
and report the exit status. Timeouts only stop a broken session from hanging the suite.
"""

from __future__ import annotations

import hashlib
import threading

import pytest

from providers.errors import Unsupported

PATIENCE = 30.0


def collect(process) -> tuple[bytes, bytes]:
    out, err = b"", b""
    while True:
        stream, chunk = process.read(timeout=PATIENCE)
        if not chunk:
            return out, err
        if stream == process.STDERR:
            err += chunk
        else:
            out += chunk


@pytest.fixture
def instance(pt):
    capabilities = pt.provider.capabilities
    if not capabilities.supports_process:
        pytest.skip(f"no streamed processes here: {capabilities.reason('supports_process')}")
    return pt.running()


def test_process_or_unsupported(pt):
    capabilities = pt.provider.capabilities
    if capabilities.supports_process:
        return
    assert capabilities.reason("supports_process")
    instance = pt.running()
    with pytest.raises(Unsupported) as raised:
        instance.open_process("true")
    assert raised.value.capability == "supports_process"


def test_streams_apart_and_the_exit_status(instance):
    with instance.open_process("echo out; echo err >&2; exit 3") as process:
        process.close_stdin()
        assert collect(process) == (b"out\n", b"err\n")
        assert process.wait(timeout=PATIENCE) == 3


def test_input_is_binary_safe_and_its_end_is_delivered(instance):
    data = bytes(range(256)) * 1024 + b"\r\n\x00\x03\x04"  # control bytes a tty would eat
    with instance.open_process(["cat"]) as process:

        def feed() -> None:  # while the output is read: cat writes as it reads
            process.write(data)
            process.close_stdin()

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        out, err = collect(process)
        writer.join(PATIENCE)
        assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()
        assert err == b""
        assert process.wait(timeout=PATIENCE) == 0


def test_close_ends_a_running_process(instance):
    process = instance.open_process(["sleep", "300"])
    process.close()
    assert process.exit_code is not None
