"""How the scheduler asks for a lifecycle operation.

Every scheduler action goes through the same request service people use
(``lifecycle.request_operation``) with ``Actor.scheduler()``, so it is one compare-and-set
from the settled status plus one audit event carrying the reason. When two sweeps race
(two workers, two machines), exactly one compare-and-set wins; the loser records nothing
and moves on.
"""

from __future__ import annotations

import logging

from django.db.models import Q

from sandboxes.models import Sandbox
from sandboxes.services import lifecycle
from sandboxes.services.actors import Actor
from sandboxes.services.backends import capabilities
from sandboxes.services.errors import IllegalTransition, ServiceError

logger = logging.getLogger(__name__)


def request(
    sandbox: Sandbox,
    operation: str,
    *,
    reason: str,
    only_if: Q | None = None,
    fields: dict | None = None,
    data: dict | None = None,
) -> bool:
    """Request ``operation`` as the scheduler; False when another actor got there first."""
    try:
        lifecycle.request_operation(
            sandbox=sandbox,
            operation=operation,
            actor=Actor.scheduler(),
            data={"reason": reason, **(data or {})},
            fields=fields,
            only_if=only_if,
            record_refusal=False,
        )
    except IllegalTransition:
        return False
    except ServiceError as exc:  # the provider was switched off, a capability went away
        logger.warning("scheduler could not %s %s: %s", operation, sandbox.pk, exc.message)
        return False
    return True


def park_operation(provider: str) -> tuple[str, str]:
    """How to park a sandbox on ``provider``: pause, else hibernate, else stop; and why."""
    caps = capabilities(provider)
    if caps.supports_pause:
        return "pause", ""
    if caps.supports_hibernate:
        return "hibernate", f"pause unsupported: {caps.reason('supports_pause')}"
    return "stop", (
        f"pause unsupported: {caps.reason('supports_pause')}; "
        f"hibernate unsupported: {caps.reason('supports_hibernate')}"
    )
