"""Running commands in guests.

* VMs: the QEMU guest agent through PVE's API (``agent/exec``, then ``agent/exec-status``
  until it exited). The guest agent has no working directory or timeout of its own, so
  the command runs under ``/bin/sh`` that makes and enters the sandbox's working
  directory and ``timeout`` (coreutils) that kills it when its time is up.
* Containers: PVE's API has no exec for LXC, so each container runs our small agent
  (``providers/pve/agent.py``) and we call it over the network with a per-sandbox
  secret (HMAC-signed requests; see that module).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Sequence

import requests

from providers.base import EXEC_OUTPUT_LIMIT, ExecResult, as_argv
from providers.errors import OperationFailed, ProviderError, Timeout, Unavailable
from providers.pve.agent import sign
from providers.pve.client import PveClient

#: How long past its own timeout we wait for a command before giving up on it.
GRACE = 10.0
_WRAPPER = 'd=$1; t=$2; shift 2; mkdir -p "$d" && cd "$d" && exec timeout -k 2 "$t" "$@"'


def vm_exec(
    client: PveClient,
    node: str,
    vmid: int,
    *,
    workdir: str,
    command: str | Sequence[str],
    timeout: float,
) -> ExecResult:
    seconds = max(1, round(timeout))
    argv = ["/bin/sh", "-c", _WRAPPER, "sandbox-exec", workdir, str(seconds), *as_argv(command)]
    base = f"nodes/{node}/qemu/{vmid}/agent"
    started = time.monotonic()
    pid = client.post(f"{base}/exec", command=argv)["pid"]
    delay = 0.02
    while True:
        status = client.get(f"{base}/exec-status", pid=pid)
        if _truthy(status.get("exited")):
            break
        if time.monotonic() - started > seconds + GRACE:
            raise Timeout(f"the command in VM {vmid} did not end {GRACE:g} s after its timeout")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    elapsed = time.monotonic() - started
    code = status.get("exitcode")
    if code is None:
        code = -int(status.get("signal", 9))
    timed_out = code in (124, 137, -9, -15) and elapsed >= seconds * 0.95
    out, err = str(status.get("out-data", "")), str(status.get("err-data", ""))
    return ExecResult(
        exit_code=int(code),
        stdout=out[:EXEC_OUTPUT_LIMIT],
        stderr=err[:EXEC_OUTPUT_LIMIT],
        stdout_truncated=_truthy(status.get("out-truncated")) or len(out) > EXEC_OUTPUT_LIMIT,
        stderr_truncated=_truthy(status.get("err-truncated")) or len(err) > EXEC_OUTPUT_LIMIT,
        timed_out=timed_out,
    )


def lxc_exec(
    address: str, port: int, secret: str, command: str | Sequence[str], timeout: float
) -> ExecResult:
    body = json.dumps({"argv": as_argv(command), "timeout": timeout}).encode()
    stamp, nonce = f"{time.time():.3f}", secrets.token_hex(16)
    path = "/v1/exec"
    host = f"[{address}]" if ":" in address else address
    headers = {
        "Content-Type": "application/json",
        "X-Sandbox-Time": stamp,
        "X-Sandbox-Nonce": nonce,
        "X-Sandbox-Signature": sign(secret, "POST", path, stamp, nonce, body),
    }
    where = f"the sandbox agent at {host}:{port}"
    try:
        # The agent is plain HTTP on the guest network; the HMAC keeps the secret off the
        # wire and proves both ends (see docs/providers/pve.md for the network set-up).
        response = requests.post(
            f"http://{host}:{port}{path}",
            data=body,
            headers=headers,
            timeout=(5, timeout + GRACE),
        )
    except requests.exceptions.Timeout:
        raise Timeout(f"{where} did not answer within {timeout + GRACE:g} s") from None
    except requests.exceptions.RequestException as exc:
        raise Unavailable(
            f"cannot reach {where} ({type(exc).__name__}); is the agent installed in the "
            "template and the container's network reachable from the control plane?"
        ) from None
    expected = sign(secret, "response", nonce, response.content)
    if not secrets.compare_digest(response.headers.get("X-Sandbox-Signature", ""), expected):
        raise OperationFailed(
            f"{where} answered without this sandbox's signature (HTTP {response.status_code})"
        )
    payload = _json(response, where)
    if response.status_code != 200:
        raise OperationFailed(
            f"{where} refused the command: {payload.get('error', response.status_code)}"
        )
    return ExecResult(
        exit_code=int(payload["exit_code"]),
        stdout=_text(payload.get("stdout_b64", "")),
        stderr=_text(payload.get("stderr_b64", "")),
        stdout_truncated=bool(payload.get("stdout_truncated")),
        stderr_truncated=bool(payload.get("stderr_truncated")),
        timed_out=bool(payload.get("timed_out")),
    )


def _json(response: requests.Response, where: str) -> dict:
    try:
        data = response.json()
    except ValueError:
        raise OperationFailed(f"{where} answered something that is not JSON") from None
    if not isinstance(data, dict):
        raise OperationFailed(f"{where} answered an unexpected shape")
    return data


def _text(encoded: str) -> str:
    raw = base64.b64decode(encoded or "")
    return raw[:EXEC_OUTPUT_LIMIT].decode("utf-8", "replace")


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true")
    return bool(value)


__all__ = ["ProviderError", "lxc_exec", "vm_exec"]
