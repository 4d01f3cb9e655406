"""Compare-and-set status changes and operation leases on the Sandbox row.

A request moves a sandbox from a settled status to a transitional one (``request``); the
worker that carries the operation out takes a lease on the row (``claim``), does the
provider work, and moves it on to the settled result only if it still holds the lease and
the status is still the one it claimed (``finish``). Every write is one
``UPDATE ... WHERE`` so concurrent workers and clicks cannot both win.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from sandboxes.models import Outcome, Sandbox
from sandboxes.services import leases
from sandboxes.services.actors import Actor
from sandboxes.services.errors import IllegalTransition
from sandboxes.services.events import Audit, record_event
from sandboxes.states import Status, can_transition


def current_status(sandbox_id: str) -> str | None:
    return Sandbox.objects.filter(pk=sandbox_id).values_list("status", flat=True).first()


def request(
    sandbox: Sandbox,
    *,
    action: str,
    to: Status,
    allowed_from: Iterable[Status],
    actor: Actor,
    operation: str = "",
    fields: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    only_if: Q | None = None,
    record_refusal: bool = True,
) -> Sandbox:
    """Move ``sandbox`` to ``to`` if its current status is in ``allowed_from``.

    Refusals raise IllegalTransition after recording a ``refused`` event; the sandbox is
    left exactly as it was. On success ``sandbox`` is refreshed in place and returned.

    ``only_if`` adds a condition to the compare-and-set (the scheduler: "still expired",
    "still idle"); when it no longer holds, the request is refused without a retry.
    ``record_refusal=False`` skips the refused event (the scheduler losing a race to
    another sweep or a person is not an action).
    """
    allowed = [Status(s) for s in allowed_from]
    observed = sandbox.status
    for _ in range(3):
        if observed not in allowed or not (observed == to or can_transition(observed, to)):
            break
        now = timezone.now()
        values = {"status": to, "status_changed_at": now, "operation": operation, **(fields or {})}
        rows = Sandbox.objects.filter(pk=sandbox.pk, status=observed)
        if only_if is not None:
            rows = rows.filter(only_if)
        with transaction.atomic():
            won = rows.update(**values)
            if won:
                record_event(
                    actor=actor,
                    action=action,
                    outcome=Outcome.REQUESTED,
                    sandbox=sandbox,
                    from_status=observed,
                    to_status=to,
                    data=data,
                )
        if won:
            sandbox.refresh_from_db()
            return sandbox
        observed = current_status(sandbox.pk)  # someone else moved it: look again
        if observed is None or only_if is not None:
            break
    refuse(
        sandbox,
        action=action,
        status=observed or "gone",
        actor=actor,
        allowed=allowed,
        record=record_refusal,
    )
    raise AssertionError("unreachable")  # pragma: no cover


def refuse(
    sandbox: Sandbox,
    *,
    action: str,
    status: str,
    actor: Actor,
    allowed: list[Status],
    record: bool = True,
) -> None:
    """Record a refused action (unless ``record`` is off) and raise IllegalTransition."""
    error = IllegalTransition(action, status, allowed=[str(s) for s in allowed])
    if record:
        record_event(
            actor=actor,
            action=action,
            outcome=Outcome.REFUSED,
            sandbox=sandbox,
            from_status=status,
            message=error.message,
        )
    raise error


def claim(sandbox_id: str, *, status: str) -> str | None:
    """Take the operation lease on a sandbox in ``status``; None if another worker holds it."""
    return leases.claim(
        Sandbox, sandbox_id, status=status, seconds=settings.SANDBOX_OPERATION_LEASE_SECONDS
    )


def born_leased() -> tuple[str, datetime]:
    """The operation lease for a sandbox row inserted already leased (``leases.new_lease``)."""
    return leases.new_lease(seconds=settings.SANDBOX_OPERATION_LEASE_SECONDS)


def finish(
    sandbox_id: str,
    *,
    token: str,
    from_status: str,
    to: Status,
    audit: Audit,
    fields: dict[str, Any] | None = None,
    row: Sandbox | None = None,
) -> bool:
    """Settle the operation: move from ``from_status`` to ``to``, release the lease and
    write ``audit``'s event, all in one transaction (both or neither).

    Returns False (changing nothing, recording nothing) when the lease was lost or the
    status moved on. ``row``, the caller's instance of the sandbox, is given what was
    written when it wins (the caller needs no second read of the row).
    """
    values = {
        "status": to,
        "status_changed_at": timezone.now(),
        "operation": "",
        "lease_token": "",
        "lease_expires_at": None,
        **(fields or {}),
    }
    with transaction.atomic():
        won = bool(
            Sandbox.objects.filter(pk=sandbox_id, status=from_status, lease_token=token).update(
                **values
            )
        )
        if won:
            audit.record(from_status=from_status, to_status=to)
    if won and row is not None:
        for name, value in values.items():
            setattr(row, name, value)
    return won


def update_leased(sandbox_id: str, *, token: str, **fields: Any) -> bool:
    """Write fields while holding the lease (the provider reference right after create)."""
    return bool(Sandbox.objects.filter(pk=sandbox_id, lease_token=token).update(**fields))


def release(sandbox_id: str, *, token: str, **fields: Any) -> None:
    """Give the lease back without changing the status (the operation will be retried)."""
    Sandbox.objects.filter(pk=sandbox_id, lease_token=token).update(
        lease_token="", lease_expires_at=None, **fields
    )
