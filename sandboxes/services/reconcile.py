"""Reconciliation: the database says what was asked for, the provider says what exists.

* **Stuck operations.** A sandbox in a transitional status whose worker died (its lease
  expired, or it never had one) is resolved against the provider: when the provider
  already shows the operation's result, the row settles on it; otherwise the operation is
  enqueued again and resumes by reference (start finds its instance by the saved
  ``provider_ref`` or by ``provider.create``'s idempotency per sandbox id). Retries back
  off; after ``SANDBOX_RECONCILE_MAX_ATTEMPTS`` the row settles on what the provider shows
  (failed when nothing), so nothing stays stuck. A delete that failed is retried the same
  way.
* **Stuck snapshot versions.** A capture or deletion whose worker died is enqueued
  again the same way (both are idempotent and leased).
* **Drift.** A settled sandbox whose instance the provider reports in another state
  (stopped in PVE's own UI, paused from the command line) is corrected by
  compare-and-set and a ``drift`` event; one whose instance is gone is deleted.

Everything is judged from the sweep's inventory (one ``list()`` per provider), never a
``get`` per sandbox; only an instance missing from the list is confirmed with ``get``
before its sandbox is given up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from providers.base import Instance, InstanceStatus
from providers.errors import NotFound, ProviderError
from sandboxes.models import Outcome, Sandbox, SandboxEvent, Snapshot, SnapshotStatus
from sandboxes.services import lifecycle, scheduled, transitions
from sandboxes.services.actors import Actor
from sandboxes.services.backends import get_provider
from sandboxes.services.events import Audit, record_event
from sandboxes.services.inventory import Inventory, ProviderInventory
from sandboxes.services.queue import enqueue_on_commit
from sandboxes.states import Status, can_transition

logger = logging.getLogger(__name__)
S = Status

#: Where each operation ends when it succeeded (None: the instance is gone).
TARGET: dict[str, Status | None] = {
    "start": S.RUNNING,
    "stop": S.STOPPED,
    "pause": S.PAUSED,
    "hibernate": S.HIBERNATED,
    "resume": S.RUNNING,
    "delete": None,
}
STUCK_STATUSES = (S.STARTING, S.PAUSING, S.RESUMING, S.STOPPING, S.DELETING)
DRIFT_STATUSES = (S.RUNNING, S.PAUSED, S.HIBERNATED, S.STOPPED)
MAX_BACKOFF = timedelta(hours=6)
CANDIDATES_PER_ACTION = 4
ABSENT = "absent"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class LiveRow:
    """The few columns of a not-deleted sandbox the sweep compares with the providers."""

    pk: str
    team_id: int
    provider: str
    provider_ref: str
    status: str

    def stub(self) -> Sandbox:
        """An unsaved Sandbox with the pk and team, enough to attach an audit event to."""
        return Sandbox(pk=self.pk, team_id=self.team_id, status=self.status)


def live_rows() -> list[LiveRow]:
    """Every sandbox that is not deleted: one query, a handful of columns (no datetimes:
    converting ten thousand of them is most of the cost of this read on SQLite)."""
    fields = ("pk", "team_id", "provider", "provider_ref", "status")
    return [
        LiveRow(*values)
        for values in Sandbox.objects.exclude(status=S.DELETED).values_list(*fields)
    ]


# --- stuck operations --------------------------------------------------------------------


def _attempts(rows: list[Sandbox]) -> dict[str, list[datetime]]:
    """When the reconciler already retried each row's current operation (one query)."""
    if not rows:
        return {}
    since = min(row.status_changed_at for row in rows)
    history: dict[str, list[datetime]] = {}
    events = SandboxEvent.objects.filter(
        sandbox_id__in=[row.pk for row in rows], action="reconcile", created_at__gte=since
    ).values_list("sandbox_id", "created_at")
    changed = {row.pk: row.status_changed_at for row in rows}
    for sandbox_id, created_at in events:
        if created_at >= changed[sandbox_id]:
            history.setdefault(sandbox_id, []).append(created_at)
    return history


def _backoff(attempts: int) -> timedelta:
    base = timedelta(seconds=max(settings.SANDBOX_STUCK_SECONDS, 1))
    return min(base * 2 ** max(attempts - 1, 0), MAX_BACKOFF)


def _observe(listed: ProviderInventory | None, row: Sandbox) -> tuple[str, Instance | None]:
    """('running'|... , instance) from the inventory; ABSENT or UNKNOWN when it cannot say."""
    if listed is None:
        return UNKNOWN, None
    instance = listed.find(ref=row.provider_ref, sandbox_id=row.pk)
    if instance is None:
        return ABSENT, None
    return str(instance.status), instance


def resolve_stuck(*, now: datetime, inventory: Inventory, limit: int, stuck_seconds: int) -> int:
    """Settle or resume sandboxes stuck in a transitional status; return how many."""
    stale = now - timedelta(seconds=stuck_seconds)
    free = Q(lease_token="") | Q(lease_expires_at__lt=timezone.now())
    rows = list(
        Sandbox.objects.filter(free, status__in=STUCK_STATUSES, status_changed_at__lt=stale)
        .select_related("team")
        .order_by("status_changed_at")[: limit * CANDIDATES_PER_ACTION]
    )
    history = _attempts(rows)
    acted = 0
    for row in rows:
        if acted >= limit:
            break
        done = history.get(row.pk, [])
        if done and now < max(done) + _backoff(len(done)):
            continue
        if row.provider not in inventory.providers and row.provider not in inventory.unavailable:
            continue  # the provider is not enabled any more: nothing to ask
        acted += _resolve(row, inventory.get(row.provider), attempts=len(done))
    return acted


def _resolve(row: Sandbox, listed: ProviderInventory | None, *, attempts: int) -> bool:
    operation = row.operation
    known = operation in lifecycle.OPERATIONS
    if known and lifecycle.OPERATIONS[operation].transitional != row.status:
        known = False
    observed, instance = _observe(listed, row)
    target = TARGET.get(operation) if known else S.FAILED
    if known and operation != "start":
        reached = (observed == ABSENT) if target is None else (observed == target)
        if reached:
            return _settle(row, instance, target or S.DELETED, observed, resolution="settled")
    if known and attempts < settings.SANDBOX_RECONCILE_MAX_ATTEMPTS:
        return _retry(row, observed, attempts + 1)
    if observed == UNKNOWN:
        return False  # never give up on what cannot be seen
    return _give_up(row, instance, observed, attempts)


def _retry(row: Sandbox, observed: str, attempt: int) -> bool:
    """Enqueue the operation again. The lease columns are compare-and-set first, so two
    sweeps racing enqueue it once; the worker then claims the (free) lease as usual."""
    with transaction.atomic():
        won = Sandbox.objects.filter(
            pk=row.pk,
            status=row.status,
            lease_token=row.lease_token,
            lease_expires_at=row.lease_expires_at,
        ).update(lease_token="", lease_expires_at=timezone.now())
        if not won:
            return False
        record_event(
            actor=Actor.scheduler(),
            action="reconcile",
            outcome=Outcome.REQUESTED,
            sandbox=row,
            from_status=row.status,
            to_status=row.status,
            message=f"{row.operation} was stuck; enqueued again (attempt {attempt})",
            data={
                "reason": "stuck",
                "operation": row.operation,
                "resolution": "retried",
                "attempt": attempt,
                "observed": observed,
            },
        )
        lifecycle.enqueue_operation(row)
    return True


def _settle_fields(row: Sandbox, instance: Instance | None, to: Status) -> dict:
    now = timezone.now()
    fields: dict = {}
    if to == S.DELETED:
        fields.update(deleted_at=now, services=[], provider_ref="")
    elif instance is not None:
        fields["provider_ref"] = instance.id
        fields["services"] = [
            {"name": s.name, "port": s.port, "url": s.url}
            for s in instance.networking.http_services
        ]
    if to == S.RUNNING:
        fields["last_activity_at"] = now
        if row.started_at is None:
            fields["started_at"] = now
    return fields


def _settle(
    row: Sandbox,
    instance: Instance | None,
    to: Status,
    observed: str,
    *,
    resolution: str,
    error: str = "",
) -> bool:
    token = transitions.claim(row.pk, status=row.status)
    if token is None:
        return False  # a worker took it over meanwhile
    fields = {**_settle_fields(row, instance, to), "last_error": error}
    audit = Audit(
        actor=Actor.scheduler(),
        action="reconcile",
        sandbox=row,
        outcome=Outcome.FAILED if error else Outcome.SUCCEEDED,
        message=error,
        data={
            "reason": "stuck",
            "operation": row.operation,
            "resolution": resolution,
            "observed": observed,
        },
    )
    # The change and its event in one transaction (see transitions.finish).
    try:
        settled = transitions.finish(
            row.pk, token=token, from_status=row.status, to=to, fields=fields, audit=audit
        )
    except BaseException:
        transitions.release(row.pk, token=token)  # nothing was written: let the next sweep
        raise
    if not settled:
        transitions.release(row.pk, token=token)
    return settled


def _give_up(row: Sandbox, instance: Instance | None, observed: str, attempts: int) -> bool:
    """Stop retrying: settle on what the provider shows, failed when that is nothing usable.

    A failed sandbox keeps its ``provider_ref`` (found by marker if it was never saved), so
    the failed-sandbox cleanup removes the instance after its grace period.
    """
    to = lifecycle.OBSERVED_STATUS.get(InstanceStatus(observed)) if instance else None
    if to is None or to == S.STARTING or not can_transition(row.status, to):
        to = S.FAILED
    what = row.operation or "the operation"
    error = f"{what} did not complete after {attempts} attempt(s); the provider shows {observed}"
    if row.last_error:
        error += f" (last error: {row.last_error[:500]})"
    return _settle(row, instance, to, observed, resolution="gave_up", error=error)


# --- drift ---------------------------------------------------------------------------


def correct_drift(*, rows: list[LiveRow], inventory: Inventory, limit: int) -> int:
    """Correct settled sandboxes whose instance the provider reports otherwise."""
    if not inventory.providers:
        return 0
    # Rows that changed after a list was taken are not judged by it (a person's pause
    # may have settled between the list and now).
    earliest = min(listed.taken_at for listed in inventory.providers.values())
    recent = set(
        Sandbox.objects.filter(status_changed_at__gte=earliest).values_list("pk", flat=True)
    )
    acted = 0
    vanished: list[tuple[LiveRow, ProviderInventory]] = []
    for row in rows:
        if acted >= limit:
            break
        if row.status not in DRIFT_STATUSES or not row.provider_ref or row.pk in recent:
            continue
        listed = inventory.get(row.provider)
        if listed is None:
            continue
        instance = listed.by_ref.get(row.provider_ref)
        if instance is None:
            vanished.append((row, listed))
            continue
        if instance.status == InstanceStatus.CREATING:
            continue
        observed = lifecycle.OBSERVED_STATUS[instance.status]
        if observed != row.status:
            acted += _correct(row, instance, observed, listed.taken_at)
    for row, listed in vanished[: max(limit - acted, 0)]:
        acted += _vanished(row, listed.taken_at)
    return acted


def _correct(row: LiveRow, instance: Instance, observed: Status, taken_at: datetime) -> bool:
    if not can_transition(row.status, observed):
        logger.warning("drift %s: %s -> %s is not a transition", row.pk, row.status, observed)
        return False
    now = timezone.now()
    fields: dict = {"status": observed, "status_changed_at": now}
    if observed == S.RUNNING:
        fields["last_activity_at"] = now  # just seen running: idle counts from here
    if observed == S.FAILED:
        fields["last_error"] = f"{row.provider} reports the instance in an error state"
    with transaction.atomic():
        won = Sandbox.objects.filter(
            pk=row.pk,
            status=row.status,
            status_changed_at__lt=taken_at,
            provider_ref=row.provider_ref,
        ).update(**fields)
        if won:
            record_event(
                actor=Actor.scheduler(),
                action="drift",
                outcome=Outcome.SUCCEEDED,
                sandbox=row.stub(),
                from_status=row.status,
                to_status=observed,
                message=f"{row.provider} reports {instance.status}; the row was {row.status}",
                data={
                    "reason": "drift",
                    "provider": row.provider,
                    "provider_ref": row.provider_ref,
                    "provider_status": str(instance.status),
                },
            )
    return bool(won)


def _vanished(row: LiveRow, taken_at: datetime) -> bool:
    """The instance is missing from the list: confirm with ``get``, then delete the row's
    sandbox (the delete finds nothing to remove and settles deleted)."""
    try:
        get_provider(row.provider).get(row.provider_ref)
        return False  # it exists after all (the list was taken mid-change)
    except NotFound:
        pass
    except ProviderError as exc:
        logger.info("drift %s: cannot confirm the instance is gone: %s", row.pk, exc.message)
        return False
    sandbox = Sandbox.objects.select_related("team").filter(pk=row.pk).first()
    if sandbox is None or sandbox.status != row.status:
        return False
    unchanged = Q(status_changed_at__lt=taken_at, provider_ref=row.provider_ref)
    with transaction.atomic():
        record_event(
            actor=Actor.scheduler(),
            action="drift",
            outcome=Outcome.SUCCEEDED,
            sandbox=sandbox,
            from_status=row.status,
            to_status=S.DELETING,
            message=f"{row.provider} no longer has instance {row.provider_ref}",
            data={
                "reason": "drift",
                "provider": row.provider,
                "provider_ref": row.provider_ref,
                "provider_status": ABSENT,
            },
        )
        requested = scheduled.request(
            sandbox,
            "delete",
            reason="drift",
            only_if=unchanged,
            data={"provider_status": ABSENT, "provider_ref": row.provider_ref},
        )
        if not requested:  # someone acted on it meanwhile: no drift to record after all
            transaction.set_rollback(True)
    return requested


# --- snapshot versions ----------------------------------------------------------------------


def resolve_stuck_snapshots(*, now: datetime, limit: int, stuck_seconds: int) -> int:
    """Enqueue again a version capture or deletion whose worker died (no live lease, no
    change for ``stuck_seconds``); after the last attempt a capture ends failed and a
    deletion goes back to ready, each with the reason."""
    stale = now - timedelta(seconds=stuck_seconds)
    free = Q(lease_token="") | Q(lease_expires_at__lt=timezone.now())
    rows = list(
        Snapshot.objects.filter(
            free,
            status__in=(SnapshotStatus.CREATING, SnapshotStatus.DELETING),
            updated_at__lt=stale,
        ).order_by("updated_at")[:limit]
    )
    tries: dict[tuple[int, str], int] = {}
    for snapshot_id, data in SandboxEvent.objects.filter(
        snapshot_id__in=[row.pk for row in rows], action="reconcile"
    ).values_list("snapshot_id", "data"):
        key = (snapshot_id, data.get("status", ""))
        tries[key] = tries.get(key, 0) + 1
    acted = 0
    for row in rows:
        attempt = tries.get((row.pk, row.status), 0) + 1
        gave_up = attempt > settings.SANDBOX_RECONCILE_MAX_ATTEMPTS
        acted += _retry_snapshot(row, attempt, gave_up=gave_up)
    return acted


def _retry_snapshot(row: Snapshot, attempt: int, *, gave_up: bool) -> bool:
    what = "capture" if row.status == SnapshotStatus.CREATING else "deletion"
    values: dict = {"lease_token": "", "lease_expires_at": None, "updated_at": timezone.now()}
    if gave_up:
        values["status"] = (
            SnapshotStatus.FAILED if row.status == SnapshotStatus.CREATING else SnapshotStatus.READY
        )
        values["error"] = f"the {what} did not complete after {attempt - 1} attempt(s)"
    with transaction.atomic():
        won = Snapshot.objects.filter(
            pk=row.pk,
            status=row.status,
            lease_token=row.lease_token,
            lease_expires_at=row.lease_expires_at,
            updated_at=row.updated_at,
        ).update(**values)
        if not won:
            return False
        record_event(
            actor=Actor.scheduler(),
            action="reconcile",
            outcome=Outcome.FAILED if gave_up else Outcome.REQUESTED,
            snapshot=row,
            message=values.get("error", f"the {what} was stuck; enqueued again"),
            data={
                "reason": "stuck",
                "status": row.status,
                "snapshot_id": row.snapshot_id,
                "resolution": "gave_up" if gave_up else "retried",
                "attempt": attempt,
            },
        )
        if not gave_up:
            enqueue_on_commit(
                "sandboxes.tasks.run_snapshot_operation", row.pk, name=f"snapshot-{row.pk}"
            )
    return True
