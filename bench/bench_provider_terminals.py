"""Terminal sessions of the providers that reach them over the network: ``pve-lxc`` and
``pve-vm`` (the sandbox agent in the guest, against the PVE simulator) and ``morph``
(Morph's SSH gateway, against the fake one in tests/morph_fake/ssh.py).

Per provider, in-process through ``Instance.open_terminal`` (no web server):

* open -> prompt: from the call to the login shell's first output, median of 20 sessions
  (``pve-vm``: the first terminal of a boot also puts the agent into the VM through the
  guest agent; it is reported on its own);
* echo: one key typed into ``cat`` until the guest's line discipline echoes it back, then
  a backspace until its erase comes back, 1000 of each;
* close: until every process of the session is gone (Morph: a kill script run through
  the API's exec).

Everything runs on this host's loopback: the numbers are the protocol's and our code's
cost, not a network's.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import Result, median_result
from providers.base import Instance, InstanceSpec, Provider

OPENS = 20
KEYS = int(os.environ.get("BENCH_TERMINAL_REPEAT", "1000"))
PATIENCE = 30.0

NOTES = """
The guests are simulated on this host (PVE containers: the real agent on a loopback
address; PVE VMs: a bubblewrap namespace with the real agent started through the
simulated guest agent; Morph: a paramiko SSH server running a real PTY), so a real
deployment adds its network round trips to each figure. The echo goes through the whole
path: our framing (PVE: a MAC per frame each way; Morph: SSH's encryption), the
transport, and the guest's terminal.
"""


def _spec(sandbox_id: str) -> InstanceSpec:
    return InstanceSpec(sandbox_id, "1vcpu_512mb_4gb", vcpus=1, memory_mb=512, disk_gb=4)


@contextlib.contextmanager
def _pve(kind: str, root: Path) -> Iterator[tuple[Provider, str]]:
    from tests.pve_sim.harness import simulated, template_for

    with simulated(kind, root / kind) as (_sim, provider):
        yield provider, template_for(kind)


@contextlib.contextmanager
def _morph(root: Path) -> Iterator[tuple[Provider, str]]:
    from providers.morph import MorphProvider
    from tests.morph_fake import FakeMorph

    fake = FakeMorph("morph-bench-key").start()
    try:
        provider = MorphProvider(
            fake.api_key,
            fake.base_url,
            poll_interval=0.01,
            ssh_hostname=fake.ssh.hostname,
            ssh_port=fake.ssh.port,
        )
        yield provider, fake.state.BASE_SNAPSHOT
    finally:
        fake.stop()


def _first_output(instance: Instance) -> tuple[float, object]:
    began = time.perf_counter()
    session = instance.open_terminal(cols=80, rows=24)
    session.read(timeout=PATIENCE)
    return (time.perf_counter() - began) * 1000, session


def _until(session, pattern: bytes) -> None:
    seen = b""
    while not re.search(pattern, seen):
        chunk = session.read(timeout=PATIENCE)
        if not chunk:
            raise RuntimeError(f"the session ended before {pattern!r}")
        seen += chunk


def _echoes(instance: Instance) -> list[float]:
    samples = []
    with instance.open_terminal("exec cat", cols=80, rows=24) as session:
        session.write(b"w")  # warm up
        _until(session, rb"w")
        for index in range(KEYS):
            key, echo = (b"x", rb"x") if index % 2 == 0 else (b"\x7f", rb"\x08")
            began = time.perf_counter()
            session.write(key)
            _until(session, echo)
            samples.append((time.perf_counter() - began) * 1000)
    return samples


def _one(name: str, provider: Provider, template: str) -> list[Result]:
    instance = provider.create(_spec(f"sbx-bterm-{name}"), template, {"sandbox_id": "x"})
    try:
        instance.start()
        instance = provider.get(instance.id)
        first, session = _first_output(instance)
        session.close()
        opens, closes = [], []
        for _ in range(OPENS):
            took, session = _first_output(instance)
            opens.append(took)
            began = time.perf_counter()
            session.close()
            closes.append((time.perf_counter() - began) * 1000)
        results = []
        if name == "pve-vm":
            results.append(
                Result(
                    f"{name}: first terminal of a boot (puts the agent into the VM)",
                    round(first, 1),
                    "ms",
                )
            )
        results.append(median_result(f"{name}: open -> prompt", opens, at_most=None))
        results.append(median_result(f"{name}: keystroke echo", _echoes(instance), at_most=None))
        results.append(
            median_result(f"{name}: close (session's processes gone)", closes, at_most=None)
        )
        return results
    finally:
        with contextlib.suppress(Exception):
            instance.delete()


def run() -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-terminals-") as tmp:
        root = Path(tmp)
        for name, setup in (
            ("pve-lxc", lambda: _pve("pve-lxc", root)),
            ("pve-vm", lambda: _pve("pve-vm", root)),
            ("morph", lambda: _morph(root)),
        ):
            with setup() as (provider, template):
                results += _one(name, provider, template)
    return results
