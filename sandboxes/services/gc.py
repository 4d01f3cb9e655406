"""Garbage collection: expired TTLs, failed sandboxes, snapshot versions past retention.

Each function acts on at most ``limit`` rows per call (the sweep's batch size) and finds
its candidates with one indexed query, so a sweep's cost does not grow with the number
of sandboxes that need nothing.
"""

from __future__ import annotations

import logging
import operator
from datetime import datetime, timedelta
from functools import reduce

from django.conf import settings
from django.db import transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Q, Value
from django.utils import timezone

from sandboxes.models import (
    ActiveSnapshot,
    Outcome,
    Sandbox,
    Snapshot,
    SnapshotStatus,
    TtlAction,
)
from sandboxes.services import scheduled
from sandboxes.services.actors import Actor
from sandboxes.services.errors import ServiceError
from sandboxes.services.events import record_event
from sandboxes.services.idle import Seconds
from sandboxes.services.snapshots import delete_snapshot
from sandboxes.states import SETTLED, Status

logger = logging.getLogger(__name__)
S = Status

#: The statuses a TTL action still has something to do in.
TTL_APPLIES_TO: dict[str, frozenset[Status]] = {
    TtlAction.PAUSE: frozenset({S.RUNNING}),
    TtlAction.STOP: frozenset({S.RUNNING, S.PAUSED, S.HIBERNATED}),
    TtlAction.DELETE: frozenset({S.RUNNING, S.PAUSED, S.HIBERNATED, S.STOPPED, S.FAILED}),
}
#: Settled statuses in which an expired deadline is simply dropped: the sandbox is already
#: at rest the way (or further than) its TTL action would put it. Not ``states.PARKED``
#: (what a wake resumes): stopped and failed sandboxes are at rest too.
_AT_REST = SETTLED - {S.RUNNING, S.DELETED}
#: A version whose delete the provider refused is not asked again for this long.
REFUSED_DELETE_BACKOFF = timedelta(days=1)


def _applies() -> Q:
    return reduce(
        operator.or_,
        (Q(ttl_action=action, status__in=statuses) for action, statuses in TTL_APPLIES_TO.items()),
    )


def expire_ttls(*, now: datetime, limit: int) -> int:
    """Take the TTL action of sandboxes whose deadline passed; return how many were acted on.

    The action is one compare-and-set that also clears ``expires_at``, so it is taken
    exactly once however many sweeps race; the next start counts a fresh TTL.
    """
    return drop_lapsed(now=now, limit=limit) + act_on_expired(
        ttl_candidates(now=now, limit=limit), now=now
    )


def drop_lapsed(*, now: datetime, limit: int) -> int:
    """Deadlines that passed while the sandbox was already parked: nothing to do but note
    it and drop the deadline (so a later start re-arms the TTL)."""
    lapsed = (
        Sandbox.objects.filter(expires_at__lte=now, status__in=_AT_REST)
        .exclude(_applies())
        .values_list("pk", "team_id", "status", "ttl_action", "expires_at")[:limit]
    )
    dropped = 0
    for pk, team_id, status, ttl_action, expires_at in lapsed:
        with transaction.atomic():
            won = Sandbox.objects.filter(pk=pk, status=status, expires_at=expires_at).update(
                expires_at=None
            )
            if won:
                record_event(
                    actor=Actor.scheduler(),
                    action="ttl_expired",
                    outcome=Outcome.SUCCEEDED,
                    sandbox=Sandbox(pk=pk, team_id=team_id),
                    from_status=status,
                    to_status=status,
                    message=f"the TTL ran out while it was {status}: nothing to {ttl_action}",
                    data={
                        "reason": "ttl_expired",
                        "ttl_action": ttl_action,
                        "expired_at": expires_at.isoformat(),
                        "skipped": True,
                    },
                )
        dropped += won
    return dropped


def ttl_candidates(*, now: datetime, limit: int) -> list[Sandbox]:
    return list(
        Sandbox.objects.filter(expires_at__lte=now)
        .filter(_applies())
        .select_related("team")
        .order_by("expires_at")[:limit]
    )


def act_on_expired(candidates: list[Sandbox], *, now: datetime) -> int:
    acted = 0
    for sandbox in candidates:
        operation, why = sandbox.ttl_action, ""
        if operation == TtlAction.PAUSE:
            try:
                operation, why = scheduled.park_operation(sandbox.provider)
            except ServiceError:
                continue  # its provider is switched off: nothing can be done now
        data = {"ttl_action": sandbox.ttl_action, "expired_at": sandbox.expires_at.isoformat()}
        if why:
            data["instead"] = why
        acted += scheduled.request(
            sandbox,
            operation,
            reason="ttl_expired",
            only_if=Q(expires_at__lte=now),
            fields={"expires_at": None},
            data=data,
        )
    return acted


#: Parked long enough, a sandbox is deleted (its ``delete_parked_after_seconds``). Failed
#: sandboxes are not among them: one that ran may hold work a person must look at.
_LONG_PARKED = (S.STOPPED, S.PAUSED, S.HIBERNATED)


def delete_long_parked(*, now: datetime, limit: int) -> int:
    """Delete sandboxes stopped, paused or hibernated for longer than their
    ``delete_parked_after_seconds`` (the team's lifecycle default, fixed at create)."""
    parked_until = ExpressionWrapper(
        Value(now) - Seconds(F("delete_parked_after_seconds")), output_field=DateTimeField()
    )
    candidates = (
        Sandbox.objects.filter(status__in=_LONG_PARKED, delete_parked_after_seconds__isnull=False)
        .alias(parked_until=parked_until)
        .filter(status_changed_at__lt=F("parked_until"))
        .select_related("team")
        .order_by("status_changed_at")[:limit]
    )
    acted = 0
    for sandbox in candidates:
        acted += scheduled.request(
            sandbox,
            "delete",
            reason="parked_too_long",
            only_if=Q(status=sandbox.status, status_changed_at=sandbox.status_changed_at),
            data={
                "parked_since": sandbox.status_changed_at.isoformat(),
                "delete_parked_after_seconds": sandbox.delete_parked_after_seconds,
            },
        )
    return acted


def clean_failed(*, now: datetime, limit: int) -> int:
    """Delete sandboxes that failed before they ever ran, after the grace period.

    A failed start whose rollback failed too still holds a provider instance
    (``provider_ref`` is kept for exactly this); the delete removes it. A sandbox that
    has run may hold someone's work: it stays failed until a person (or its TTL) acts.
    """
    cutoff = now - timedelta(seconds=settings.SANDBOX_FAILED_GRACE_SECONDS)
    old = Q(status_changed_at__lt=cutoff, started_at__isnull=True)
    candidates = (
        Sandbox.objects.filter(old, status=S.FAILED)
        .select_related("team")
        .order_by("status_changed_at")[:limit]
    )
    acted = 0
    for sandbox in candidates:
        acted += scheduled.request(
            sandbox,
            "delete",
            reason="failed_cleanup",
            only_if=old,
            data={
                "failed_since": sandbox.status_changed_at.isoformat(),
                "provider_ref": sandbox.provider_ref,
                "last_error": sandbox.last_error[:500],
            },
        )
    return acted


def retention_candidates(*, keep: int, now: datetime | None = None) -> list[Snapshot]:
    """Versions older than the newest ``keep`` of their scope, not active, not in use.

    A scope is (team or shared, provider, preset). Ranking counts every version that is
    not deleted; only ready and failed ones are candidates.
    """
    if keep <= 0:
        return []
    now = now or timezone.now()
    rows = list(
        Snapshot.objects.exclude(
            status__in=[SnapshotStatus.DELETED, SnapshotStatus.DELETING]
        ).values_list("pk", "team_id", "provider", "preset_id", "version", "status")
    )
    active = set(ActiveSnapshot.objects.values_list("snapshot_id", flat=True))
    in_use = set(
        Sandbox.objects.exclude(status=S.DELETED)
        .filter(snapshot__isnull=False)
        .values_list("snapshot_id", flat=True)
        .distinct()
    )
    scopes: dict[tuple, list[tuple[int, int, str]]] = {}
    for pk, team_id, provider, preset_id, version, status in rows:
        scopes.setdefault((team_id, provider, preset_id), []).append((version, pk, status))
    chosen: list[int] = []
    for versions in scopes.values():
        versions.sort(reverse=True)
        for _version, pk, status in versions[keep:]:
            deletable = status in (SnapshotStatus.READY, SnapshotStatus.FAILED)
            if deletable and pk not in active and pk not in in_use:
                chosen.append(pk)
    recently_refused = Q(error__startswith="delete ", updated_at__gt=now - REFUSED_DELETE_BACKOFF)
    return list(
        Snapshot.objects.filter(pk__in=chosen)
        .exclude(recently_refused)
        .select_related("team")
        .order_by("version")
    )


def enforce_snapshot_retention(*, limit: int, now: datetime | None = None) -> int:
    """Delete versions beyond ``SNAPSHOT_RETENTION``; never an active one or one in use."""
    candidates = retention_candidates(keep=settings.SNAPSHOT_RETENTION, now=now)
    return delete_snapshots(candidates[:limit])


def delete_snapshots(candidates: list[Snapshot]) -> int:
    """Ask for the deletion of each version. ``delete_snapshot`` re-checks "active"
    and "in use" under a row lock, so a sandbox that started from a candidate since it was
    chosen makes that delete refuse (Conflict) instead of racing it."""
    acted = 0
    for snapshot in candidates:
        try:
            delete_snapshot(
                snapshot=snapshot,
                actor=Actor.scheduler(),
                data={"reason": "retention", "keep": settings.SNAPSHOT_RETENTION},
            )
        except ServiceError as exc:
            logger.info("retention kept %s: %s", snapshot.snapshot_id, exc.message)
            continue
        acted += 1
    return acted
