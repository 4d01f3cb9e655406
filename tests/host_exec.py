"""``exec`` for the test doubles: a real command, run on the host in an instance's folder.

No isolation at all (the in-memory and file-backed test providers are never offered to
users); what it gives the contract tests is real exit codes, output, timeouts and files.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from providers.base import EXEC_OUTPUT_LIMIT, ExecResult, as_argv


def run_in(workdir: Path, command: str | Sequence[str], timeout: float) -> ExecResult:
    try:
        done = subprocess.run(as_argv(command), cwd=workdir, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return ExecResult(-1, _text(exc.stdout), _text(exc.stderr), timed_out=True)
    except OSError as exc:
        # What a shell (and every real back end) answers for a program it cannot run:
        # 127 when it does not exist, 126 when it cannot be executed.
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        return ExecResult(code, "", f"{as_argv(command)[0]}: {exc.strerror}\n")
    return ExecResult(
        done.returncode,
        _text(done.stdout),
        _text(done.stderr),
        stdout_truncated=len(done.stdout) > EXEC_OUTPUT_LIMIT,
        stderr_truncated=len(done.stderr) > EXEC_OUTPUT_LIMIT,
    )


def _text(data: bytes | None) -> str:
    return (data or b"")[:EXEC_OUTPUT_LIMIT].decode("utf-8", "replace")
