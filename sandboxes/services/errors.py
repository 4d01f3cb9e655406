"""Errors the service layer raises. The API and the dashboard turn them into responses.

Each has a stable ``code`` (the API's ``error.code``) and a message a person can act on.
"""

from __future__ import annotations


class ServiceError(Exception):
    code = "error"

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}

    def __str__(self) -> str:
        return self.message


class InvalidInput(ServiceError):
    """The request is malformed or names something that does not exist; nothing changed."""

    code = "invalid"


class NotAllowed(ServiceError):
    """The actor's role in the team does not allow this."""

    code = "forbidden"


class IllegalTransition(ServiceError):
    """The sandbox's current status does not allow this action; nothing changed."""

    code = "illegal_transition"

    def __init__(self, action: str, status: str, *, allowed: list[str] | None = None) -> None:
        hint = f" (possible from: {', '.join(allowed)})" if allowed else ""
        super().__init__(f"cannot {action} a sandbox that is {status}{hint}")
        self.action = action
        self.status = status


class CapabilityMissing(ServiceError):
    """The sandbox's provider cannot do this at all."""

    code = "capability_missing"

    def __init__(self, provider: str, capability: str, reason: str) -> None:
        super().__init__(f"{provider} does not support this ({capability}): {reason}")
        self.provider = provider
        self.capability = capability
        self.reason = reason


class QuotaExceeded(ServiceError):
    """A team quota would be exceeded. ``code`` names the quota, e.g. quota_max_vcpus."""

    def __init__(
        self, quota: str, *, limit: int, used: int, requested: int, message: str = ""
    ) -> None:
        super().__init__(
            message
            or f"team quota {quota} is {limit}; {used} in use and this needs {requested} more"
        )
        self.quota = quota
        self.code = f"quota_{quota}"
        self.limit = limit
        self.used = used
        self.requested = requested


class Conflict(ServiceError):
    """The object is in use or busy (a snapshot version that sandboxes stand on, ...)."""

    code = "conflict"


class IdempotencyKeyReused(Conflict):
    """A create retried with its ``Idempotency-Key`` asks for something else than the first
    one did; ``fields`` names what differs. Nothing changed."""

    code = "idempotency_key_reused"


class ProviderFailure(ServiceError):
    """The provider failed an operation that the caller waited for (exec, expose)."""

    def __init__(self, message: str, *, provider_code: str, retryable: bool) -> None:
        super().__init__(message)
        self.code = f"provider_{provider_code}"
        self.retryable = retryable


class TooManyLongCalls(ServiceError):
    """The team (or the whole site) already runs as many long calls as it may; try later.

    ``retry_after`` is a hint in seconds; ``scope`` is ``team`` or ``site``.
    """

    code = "too_many_long_calls"

    def __init__(self, *, kind: str, scope: str, limit: int, retry_after: int) -> None:
        who = "your team has" if scope == "team" else "the site has"
        super().__init__(
            f"{who} {limit} long calls (exec, waits, proxied requests) running already; "
            f"this {kind} was refused: try again in {retry_after} s"
        )
        self.kind = kind
        self.scope = scope
        self.limit = limit
        self.retry_after = retry_after
