"""``exec`` through SSM Run Command (the ``AWS-RunShellScript`` document).

The command runs as root through the SSM agent, which must run in the image (it does in
Amazon Linux, Ubuntu and Windows AMIs from AWS) with an instance profile that allows SSM
(``AmazonSSMManagedInstanceCore``). The script changes to ``WORKDIR`` (created on first
use; it is on the root volume, so it survives stop/start and snapshots) and runs the
argv under ``timeout -s KILL``, so the command dies when its time is up even though SSM's
own ``executionTimeout`` is whole seconds and slower to act.

What SSM does not do, and so neither does this: it keeps at most 24,000 characters of
stdout and 8,000 of stderr in the invocation (more needs an S3 bucket; the result is
marked truncated at that length), and it keeps the command text in its history, so the
variables of ``env`` (a team's secrets) are readable by anyone allowed
``ssm:ListCommands`` in the account (docs/providers/aws-ec2.md says so).
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Mapping, Sequence

from providers.aws_ec2.client import Ec2Backend
from providers.base import ExecResult, with_env
from providers.errors import NotFound, OperationFailed, ProviderError, Timeout, Unavailable

DOCUMENT = "AWS-RunShellScript"
WORKDIR = "/var/lib/sandboxes/work"
#: SSM's limits on the output an invocation keeps.
STDOUT_LIMIT = 24_000
STDERR_LIMIT = 8_000
#: Exit codes of ``timeout`` when it killed the command (KILL: 128 + 9; TERM: 124).
_TIMEOUT_CODES = (124, 137)
_DONE = {"Success", "Failed"}
_PENDING = {"Pending", "InProgress", "Delayed"}
#: How long an instance that just started may take before its agent takes commands.
AGENT_PATIENCE = 120.0


def script(command: str | Sequence[str], timeout: float, env: Mapping[str, str] | None) -> str:
    """The shell script SSM runs for ``command`` (``with_env`` checks ``env``)."""
    argv = with_env(command, env)
    seconds = max(1, int(timeout + 0.999))
    return (
        f"mkdir -p {WORKDIR} && cd {WORKDIR} || exit 126\n"
        f"exec timeout -s KILL {seconds} {shlex.join(argv)}\n"
    )


def send_parameters(ref: str, command: str, timeout: float) -> dict:
    """The SendCommand request (its shape is what the tests check against moto)."""
    seconds = max(1, int(timeout + 0.999))
    return {
        "InstanceIds": [ref],
        "DocumentName": DOCUMENT,
        "Parameters": {
            "commands": [command],
            # SSM's own limit, a backstop behind the script's ``timeout``.
            "executionTimeout": [str(seconds + 30)],
        },
        # How long SSM may take to deliver it (its minimum is 30 s).
        "TimeoutSeconds": 30 + seconds,
        "Comment": "sandboxes exec",
    }


def run(
    backend: Ec2Backend,
    ref: str,
    command: str | Sequence[str],
    timeout: float,
    env: Mapping[str, str] | None,
) -> ExecResult:
    text = script(command, timeout, env)
    params = send_parameters(ref, text, timeout)
    started = time.monotonic()
    command_id = _send(backend, ref, params)
    deadline = started + timeout + 60
    delay = min(backend.settings.poll_interval, 0.05)
    while True:
        invocation = _invocation(backend, ref, command_id)
        status = invocation.get("Status", "Pending") if invocation else "Pending"
        if status in _DONE or status == "TimedOut":
            break
        if status not in _PENDING:
            detail = invocation.get("StatusDetails", status) if invocation else status
            raise OperationFailed(f"SSM command on {ref} ended {detail}", ref=ref)
        if time.monotonic() > deadline:
            _cancel(backend, ref, command_id)
            raise Timeout(f"SSM command on {ref} did not finish within {timeout + 60:g}s", ref=ref)
        time.sleep(delay)
        delay = min(delay * 2, backend.settings.poll_interval)
    elapsed = time.monotonic() - started
    code = int(invocation.get("ResponseCode", -1))
    stdout = invocation.get("StandardOutputContent", "") or ""
    stderr = invocation.get("StandardErrorContent", "") or ""
    timed_out = status == "TimedOut" or (code in _TIMEOUT_CODES and elapsed >= timeout)
    return ExecResult(
        exit_code=-1 if status == "TimedOut" else code,
        stdout=stdout,
        stderr=stderr,
        stdout_truncated=len(stdout) >= STDOUT_LIMIT,
        stderr_truncated=len(stderr) >= STDERR_LIMIT,
        timed_out=timed_out,
    )


def _send(backend: Ec2Backend, ref: str, params: dict) -> str:
    """SendCommand, waiting for the agent of an instance that just started to register."""
    deadline = time.monotonic() + min(AGENT_PATIENCE, backend.settings.boot_timeout)
    while True:
        try:
            answer = backend.call(
                f"send command to {ref}", lambda: backend.ssm.send_command(**params), ref=ref
            )
            return answer["Command"]["CommandId"]
        except OperationFailed as exc:
            # InvalidInstanceId: the agent has not registered (yet); anything else is final.
            if "InvalidInstanceId" not in exc.message or time.monotonic() > deadline:
                raise
        time.sleep(backend.settings.poll_interval)


def _invocation(backend: Ec2Backend, ref: str, command_id: str) -> dict | None:
    try:
        return backend.call(
            f"read command {command_id} on {ref}",
            lambda: backend.ssm.get_command_invocation(CommandId=command_id, InstanceId=ref),
            ref=ref,
        )
    except (NotFound, Unavailable):
        return None  # InvocationDoesNotExist right after sending; a blip: ask again
    except ProviderError as exc:
        if "InvocationDoesNotExist" in exc.message:
            return None
        raise


def _cancel(backend: Ec2Backend, ref: str, command_id: str) -> None:
    # Best effort: the command's own executionTimeout ends it anyway.
    with contextlib.suppress(ProviderError):
        backend.call(
            f"cancel command {command_id}",
            lambda: backend.ssm.cancel_command(CommandId=command_id, InstanceIds=[ref]),
            ref=ref,
        )
