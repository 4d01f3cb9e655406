"""Terminals and streamed processes in PVE VMs: the sandbox agent, put into the VM
through the QEMU guest agent.

PVE's API reaches a VM's inside only through qemu-guest-agent, whose exec has no terminal
(it pipes output and waits for the end). So the first terminal or streamed process of a
boot puts the same agent that containers run (``providers/pve/agent.py``, stdlib only,
needs ``python3`` in the image) into the VM: ``agent/file-write`` writes the agent and a
per-sandbox secret to ``/run`` (a tmpfs: gone at the next boot, never in a snapshot),
and ``agent/exec`` starts it in the background listening on the VM's own address.
Terminals and processes then go to it exactly as to a container's agent
(``providers/pve/terminal.py``, ``process.py``): a real pseudo-terminal or real pipes made
inside the VM, every frame authenticated.

The secret is derived, not stored: HMAC-SHA256 of the PVE API token's secret over the
VMID and the sandbox id. The control plane can compute it at any time, each sandbox's is
its own (knowing it opens no other sandbox's agent), and it never crosses the network.
The agent re-reads its secret file, so after the API token changed a rewrite is enough.

Why not SSH to the guest with a per-sandbox key: the image would need sshd, its host key
would have to be learnt through the guest agent anyway, and the session would add a
second authentication scheme next to the agent's; the agent is already in the code base,
its terminal protocol is shared with containers and tested against both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from providers.errors import OperationFailed, Unavailable
from providers.pve import agent as agent_module
from providers.pve.guest_exec import vm_exec
from providers.pve.process import AgentProcess
from providers.pve.process import open_process as open_agent_process
from providers.pve.terminal import AgentRefused, AgentTerminal, open_session

if TYPE_CHECKING:
    from providers.pve.guests import PveGuests

_T = TypeVar("_T")

AGENT_PATH = "/run/sandbox-agent.py"
SECRET_PATH = "/run/sandbox-agent.secret"  # noqa: S105 - a path, not a secret
#: How long a freshly started agent may take to accept connections.
STARTUP = 15.0
#: PVE's file-write takes at most this many characters of content.
FILE_WRITE_LIMIT = 61440


def vm_secret(token_secret: str, vmid: int, sandbox_id: str) -> str:
    """The agent secret of the VM ``vmid`` made for ``sandbox_id``."""
    message = f"sandbox-agent\nqemu\n{vmid}\n{sandbox_id}".encode()
    return hmac.new(token_secret.encode(), message, hashlib.sha256).hexdigest()


def open_terminal(
    guests: PveGuests,
    *,
    node: str,
    vmid: int,
    sandbox_id: str,
    address: str,
    argv: list[str],
    cols: int,
    rows: int,
    env: dict[str, str],
) -> AgentTerminal:
    """A terminal through the agent of VM ``vmid`` (at ``address``), starting the agent
    first when it is not there."""

    def attempt(port: int, secret: str) -> AgentTerminal:
        return open_session(address, port, secret, argv=argv, cols=cols, rows=rows, env=env)

    return through_agent(
        guests, node=node, vmid=vmid, sandbox_id=sandbox_id, address=address, attempt=attempt
    )


def open_process(
    guests: PveGuests,
    *,
    node: str,
    vmid: int,
    sandbox_id: str,
    address: str,
    argv: list[str],
    env: dict[str, str],
) -> AgentProcess:
    """A streamed process through the agent of VM ``vmid`` (at ``address``), starting the
    agent first when it is not there."""

    def attempt(port: int, secret: str) -> AgentProcess:
        return open_agent_process(address, port, secret, argv=argv, env=env)

    return through_agent(
        guests, node=node, vmid=vmid, sandbox_id=sandbox_id, address=address, attempt=attempt
    )


def through_agent(
    guests: PveGuests,
    *,
    node: str,
    vmid: int,
    sandbox_id: str,
    address: str,
    attempt: Callable[[int, str], _T],
) -> _T:
    """``attempt(port, secret)`` against the agent of VM ``vmid``; when no agent answers
    with this sandbox's secret, put it there (``install``) and try until it listens."""
    secret = vm_secret(guests.settings.token_secret, vmid, sandbox_id)
    port = guests.settings.agent_port
    try:
        return attempt(port, secret)
    except AgentRefused as exc:
        if exc.status == 404:  # started from an older agent.py; /run keeps it until a reboot
            raise AgentRefused(
                f"the sandbox agent running in VM {vmid} is from an older version of the "
                "control plane and lacks this; it is replaced when the VM reboots (stop and "
                "start the sandbox)",
                404,
            ) from None
        if exc.status != 401:  # the agent is there and refused the request itself
            raise
    except Unavailable:
        pass
    install(guests, node, vmid, address, port, secret)
    deadline = time.monotonic() + STARTUP
    while True:
        try:
            return attempt(port, secret)
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def install(guests: PveGuests, node: str, vmid: int, address: str, port: int, secret: str) -> None:
    """Write the agent and its secret into the VM and start it (a no-op start when one
    already listens: it then reads the new secret from the file)."""
    provider = guests
    source = Path(agent_module.__file__).read_bytes()
    base = guests.kind.path(node, vmid, "agent")
    for path, content in ((AGENT_PATH, source), (SECRET_PATH, secret.encode())):
        encoded = base64.b64encode(content).decode()
        if len(encoded) > FILE_WRITE_LIMIT:
            raise OperationFailed(f"{path} is too large for PVE's guest file-write")
        provider.client.post(f"{base}/file-write", file=path, content=encoded, encode=0)
    host = f"[{address}]" if ":" in address else address
    started = vm_exec(
        provider.client,
        node,
        vmid,
        workdir=provider.settings.guest_workdir,
        command=[
            "python3",
            AGENT_PATH,
            "--daemon",
            "--listen",
            f"{host}:{port}",
            "--workdir",
            provider.settings.guest_workdir,
            "--secret-file",
            SECRET_PATH,
        ],
        timeout=30,
    )
    if started.exit_code != 0:
        detail = (started.stderr or started.stdout).strip().splitlines()[-1:] or ["no output"]
        raise OperationFailed(
            f"could not start the sandbox agent in VM {vmid} (exit "
            f"{started.exit_code}: {detail[0][:300]}); the image needs python3"
        )
