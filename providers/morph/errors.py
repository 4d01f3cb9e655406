"""Turning what the morphcloud SDK raises into the typed errors of ``providers.errors``.

The SDK's own ``ApiError`` text carries the URL and the whole response body; we build a
short message of our own instead, and scrub the API key from anything we do quote, so no
error, log line or traceback we produce can carry it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

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
    from morphcloud.api import ApiError

_DETAIL_LIMIT = 300


def redact(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` replaced (no-op for an empty secret)."""
    return text.replace(secret, "[redacted]") if secret else text


def _detail(error: ApiError) -> str:
    detail = error.detail
    if detail is None:
        try:
            body = json.loads(error.response_body)
        except (TypeError, ValueError):
            body = error.response_body
        detail = body.get("detail", body) if isinstance(body, dict) else body
    text = detail if isinstance(detail, str) else json.dumps(detail)
    return text[:_DETAIL_LIMIT]


def translate(
    exc: BaseException, *, what: str, secret: str, ref: str | None = None
) -> ProviderError:
    """The typed error for ``exc`` raised while doing ``what`` (a short phrase)."""
    if isinstance(exc, ProviderError):
        return exc
    # The SDK and its libraries are imported where they are used: reading the provider's
    # config_keys (the registry does at start) must not need them.
    import httpx
    import pydantic
    from morphcloud.api import ApiError

    if isinstance(exc, ApiError):
        status = exc.status_code
        message = redact(f"Morph {what}: HTTP {status}: {_detail(exc)}", secret)
        if status == 404:
            return NotFound(message, ref=ref)
        if status in (409, 423):
            return Conflict(message, ref=ref)
        if status in (401, 403):
            return OperationFailed(
                f"Morph {what}: the API refused the key (HTTP {status}); check MORPH_API_KEY",
                ref=ref,
            )
        if status in (402, 507):
            return QuotaExceeded(message, ref=ref)
        if status == 429 or status >= 500:
            return Unavailable(message, ref=ref)
        return OperationFailed(message, ref=ref)
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return Timeout(f"Morph {what}: no answer in time", ref=ref)
    if isinstance(exc, httpx.TransportError):
        return Unavailable(
            redact(f"Morph {what}: cannot reach the API ({type(exc).__name__})", secret), ref=ref
        )
    if isinstance(exc, pydantic.ValidationError):
        return OperationFailed(f"Morph {what}: the API answered in an unexpected shape", ref=ref)
    return OperationFailed(redact(f"Morph {what}: {type(exc).__name__}: {exc}", secret), ref=ref)


@contextlib.contextmanager
def morph_call(what: str, *, secret: str, ref: str | None = None) -> Iterator[None]:
    """Run SDK calls inside; re-raise whatever they raise as a typed provider error.

    ``from None`` drops the SDK's exception from the chain: its text quotes the response
    body verbatim, and tracebacks end up in logs.
    """
    try:
        yield
    except ProviderError:
        raise
    except Exception as exc:
        raise translate(exc, what=what, secret=secret, ref=ref) from None
