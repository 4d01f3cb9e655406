"""Turning what the docker SDK raises into the typed errors of ``providers.errors``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import requests

from providers.errors import (
    Conflict,
    NotFound,
    OperationFailed,
    ProviderError,
    QuotaExceeded,
    Timeout,
    Unavailable,
)

if TYPE_CHECKING:
    from docker import errors as docker_errors


def _explanation(exc: docker_errors.APIError) -> str:
    text = exc.explanation
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text or exc)[:300]


def translate(exc: BaseException, *, what: str, ref: str | None = None) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    from docker import errors as docker_errors  # where it is used (see engine.py)

    if isinstance(exc, docker_errors.NotFound):
        return NotFound(f"Docker {what}: {_explanation(exc)}", ref=ref)
    if isinstance(exc, docker_errors.APIError):
        status = exc.status_code or 0
        message = f"Docker {what}: HTTP {status}: {_explanation(exc)}"
        if status == 409:
            return Conflict(message, ref=ref)
        if status in (502, 503, 504):
            return Unavailable(message, ref=ref)
        if "no space left" in message.lower():
            return QuotaExceeded(message, ref=ref)
        return OperationFailed(message, ref=ref)
    if isinstance(exc, requests.Timeout):
        return Timeout(f"Docker {what}: the daemon did not answer in time", ref=ref)
    if isinstance(exc, requests.ConnectionError | ConnectionError | docker_errors.DockerException):
        return Unavailable(
            f"Docker {what}: cannot reach the daemon ({type(exc).__name__})", ref=ref
        )
    return OperationFailed(f"Docker {what}: {type(exc).__name__}: {exc}", ref=ref)


@contextlib.contextmanager
def docker_call(what: str, *, ref: str | None = None) -> Iterator[None]:
    """Run docker SDK calls inside; re-raise failures as typed provider errors."""
    try:
        yield
    except ProviderError:
        raise
    except Exception as exc:
        raise translate(exc, what=what, ref=ref) from exc
