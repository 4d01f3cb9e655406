"""Sandbox back ends behind one contract. Plain Python: nothing here imports Django."""

from providers.base import (
    Capabilities,
    ExecResult,
    Health,
    HttpService,
    Instance,
    InstanceSpec,
    InstanceStatus,
    Networking,
    Provider,
    SnapshotResult,
)
from providers.errors import (
    Conflict,
    InvalidPresetId,
    InvalidSnapshotId,
    NotFound,
    OperationFailed,
    ProviderError,
    QuotaExceeded,
    Timeout,
    Unavailable,
    Unsupported,
)

__all__ = [
    "Capabilities",
    "Conflict",
    "ExecResult",
    "Health",
    "HttpService",
    "Instance",
    "InstanceSpec",
    "InstanceStatus",
    "InvalidPresetId",
    "InvalidSnapshotId",
    "Networking",
    "NotFound",
    "OperationFailed",
    "Provider",
    "ProviderError",
    "QuotaExceeded",
    "SnapshotResult",
    "Timeout",
    "Unavailable",
    "Unsupported",
]
