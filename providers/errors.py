"""Typed provider errors.

The service layer decides what to do from the type alone: retry (``retryable``),
roll back, or fail the sandbox with the message. Messages are written for a person
and must never contain a secret (API token, password, key).
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base class for every error a provider raises."""

    #: Whether trying the same call again later may succeed.
    retryable: bool = False
    #: A short, stable machine-readable code (the API exposes it).
    code: str = "provider_error"

    def __init__(self, message: str, *, ref: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: The provider reference the error is about, when there is one.
        self.ref = ref

    def __str__(self) -> str:
        return self.message


class NotFound(ProviderError):
    """The instance or snapshot does not exist (any more) on the provider."""

    code = "not_found"


class Conflict(ProviderError):
    """The object is locked, busy or already exists; waiting and retrying may help."""

    code = "conflict"
    retryable = True


class InvalidState(Conflict):
    """The instance is in the wrong state for this call (exec on a stopped instance).

    Not retryable: waiting does not help; the caller has to change the state first.
    """

    code = "invalid_state"
    retryable = False


class QuotaExceeded(ProviderError):
    """The back end is out of capacity (disk, VMIDs, account limits)."""

    code = "provider_quota"


class Unavailable(ProviderError):
    """The back end cannot be reached or answered with a server error."""

    code = "unavailable"
    retryable = True


class Timeout(ProviderError):
    """The back end did not finish in time; the operation may still complete."""

    code = "timeout"
    retryable = True


class OperationFailed(ProviderError):
    """The back end ran the operation and it failed."""

    code = "operation_failed"


class Unsupported(ProviderError):
    """The provider cannot do this at all (a capability is missing)."""

    code = "unsupported"

    def __init__(self, message: str, *, capability: str, ref: str | None = None) -> None:
        super().__init__(message, ref=ref)
        self.capability = capability


class InvalidSnapshotId(ValueError):
    """A string is not a valid snapshot id; the message says which part is wrong."""


class InvalidPresetId(ValueError):
    """A string is not a valid preset id (``<n>vcpu_<n>gb_<n>gb``)."""
