"""Orphans: provider instances carrying our marker that no live sandbox owns.

An instance is an orphan when the sandbox id in its metadata has no row, a deleted row,
a failed row that does not own it (a failed row that does own it is the failed-sandbox
cleanup's), a row on another provider, or a settled row that owns a different instance
(a duplicate). Rows in a transitional status are never judged: their worker may be about
to record the instance.

The first sweep that sees an orphan records an ``orphan_found`` event; after
``SANDBOX_ORPHAN_GRACE_SECONDS`` the policy (``SANDBOX_ORPHAN_POLICY``) applies:

* ``delete``: a ``remove_orphan`` task re-checks and deletes the instance;
* ``adopt``: an instance whose row is simply missing gets its row rebuilt from its
  metadata (sandbox id, team, preset, snapshot id) when those exist; every other orphan
  is deleted;
* ``keep``: only the ``orphan_found`` event (for operators sharing a provider).

The events are also the memory between sweeps (when an orphan was first seen, when its
removal was last asked for), so there is no extra table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from providers.base import (
    META_POOL,
    META_PRESET,
    META_SANDBOX_ID,
    META_SNAPSHOT_ID,
    META_TEAM,
    Instance,
    InstanceStatus,
)
from providers.errors import NotFound, ProviderError
from sandboxes.models import Outcome, Preset, Sandbox, SandboxEvent, Snapshot, Team
from sandboxes.services import leases, lifecycle
from sandboxes.services.actors import Actor
from sandboxes.services.backends import get_provider
from sandboxes.services.errors import ServiceError
from sandboxes.services.events import record_event
from sandboxes.services.inventory import Inventory
from sandboxes.services.queue import enqueue_on_commit
from sandboxes.services.reconcile import LiveRow
from sandboxes.states import TRANSITIONAL, Status

logger = logging.getLogger(__name__)
S = Status

FOUND, DELETE, ADOPT = "orphan_found", "orphan_delete", "orphan_adopt"
REASONS = {
    "no_row": "no sandbox has this id",
    "deleted_row": "its sandbox is deleted",
    "failed_row": "its sandbox failed and does not own it",
    "other_provider": "its sandbox lives on another provider",
    "duplicate": "its sandbox owns another instance",
}


@dataclass
class Orphan:
    provider: str
    instance: Instance
    sandbox_id: str
    reason: str
    #: The sandbox row the id names, when there is one (for the audit event).
    row: Sandbox | None = None

    @property
    def ref(self) -> str:
        return self.instance.id


@dataclass
class History:
    found_at: datetime | None = None
    last_delete_at: datetime | None = None
    adopt_failed: bool = False
    extra: dict = field(default_factory=dict)


def judge(row_status: str, row_provider: str, row_ref: str, provider: str, ref: str) -> str:
    """Why the instance ``ref`` on ``provider`` is an orphan of its row ('' if it is not)."""
    if row_status == S.DELETED:
        return "deleted_row"
    if row_provider != provider:
        return "other_provider"
    if row_status in TRANSITIONAL:
        return ""
    if row_status == S.FAILED:
        return "" if row_ref == ref else "failed_row"
    if row_ref and row_ref != ref:
        return "duplicate"
    return ""


def find_orphans(*, rows: list[LiveRow], inventory: Inventory) -> list[Orphan]:
    """Every orphan in the inventory (one extra query for ids without a live row)."""
    live = {row.pk: row for row in rows}
    orphans: list[Orphan] = []
    unknown: list[tuple[str, Instance, str]] = []
    for name, listed in inventory.providers.items():
        for sandbox_id, instances in listed.by_sandbox_id.items():
            row = live.get(sandbox_id)
            for instance in instances:
                if instance.metadata.get(META_POOL):
                    continue  # a warm pool's member: services/pools.reconcile_members
                if row is None:
                    unknown.append((name, instance, sandbox_id))
                    continue
                reason = judge(row.status, row.provider, row.provider_ref, name, instance.id)
                if reason:
                    orphans.append(Orphan(name, instance, sandbox_id, reason, row.stub()))
    if unknown:
        # Ids without a live row: deleted rows, rows made after ``rows`` was read (judged
        # like the others), or none at all.
        ids = {sandbox_id for _, _, sandbox_id in unknown}
        found = {
            pk: (status, provider, ref, team_id)
            for pk, status, provider, ref, team_id in Sandbox.objects.filter(
                pk__in=ids
            ).values_list("pk", "status", "provider", "provider_ref", "team_id")
        }
        for name, instance, sandbox_id in unknown:
            if sandbox_id not in found:
                orphans.append(Orphan(name, instance, sandbox_id, "no_row"))
                continue
            status, provider, ref, team_id = found[sandbox_id]
            reason = judge(status, provider, ref, name, instance.id)
            if reason:
                row = Sandbox(pk=sandbox_id, team_id=team_id, status=status)
                orphans.append(Orphan(name, instance, sandbox_id, reason, row))
    return orphans


def _history(orphans: list[Orphan]) -> dict[tuple[str, str], History]:
    """What earlier sweeps did about these instances (one query)."""
    refs = [orphan.ref for orphan in orphans]
    history: dict[tuple[str, str], History] = {}
    events = SandboxEvent.objects.filter(
        action__in=(FOUND, DELETE, ADOPT), data__ref__in=refs
    ).values_list("action", "outcome", "created_at", "data")
    for action, outcome, created_at, data in events:
        seen = history.setdefault((data.get("provider", ""), data.get("ref", "")), History())
        if action == FOUND:
            seen.found_at = min(filter(None, (seen.found_at, created_at)))
        elif action == DELETE:
            seen.last_delete_at = max(filter(None, (seen.last_delete_at, created_at)))
        elif action == ADOPT and outcome == Outcome.FAILED:
            seen.adopt_failed = True
    return history


def _data(orphan: Orphan, policy: str) -> dict:
    meta = orphan.instance.metadata
    return {
        "reason": orphan.reason,
        "provider": orphan.provider,
        "ref": orphan.ref,
        "sandbox_id": orphan.sandbox_id,
        "team": meta.get(META_TEAM, ""),
        "preset": meta.get(META_PRESET, ""),
        "snapshot_id": meta.get(META_SNAPSHOT_ID, ""),
        "provider_status": str(orphan.instance.status),
        "policy": policy,
    }


def collect(*, rows: list[LiveRow], inventory: Inventory, now: datetime, limit: int) -> int:
    """Record new orphans; delete or adopt those past their grace period. Returns actions."""
    orphans = find_orphans(rows=rows, inventory=inventory)
    if not orphans:
        return 0
    policy = settings.SANDBOX_ORPHAN_POLICY
    grace = timedelta(seconds=settings.SANDBOX_ORPHAN_GRACE_SECONDS)
    retry_after = timedelta(seconds=max(settings.SANDBOX_STUCK_SECONDS, 60))
    history = _history(orphans)
    slugs = {o.instance.metadata.get(META_TEAM, "") for o in orphans}
    teams = {team.slug: team for team in Team.objects.filter(slug__in=slugs)}
    acted = 0
    for orphan in orphans:
        if acted >= limit:
            break
        seen = history.get((orphan.provider, orphan.ref)) or History()
        team = teams.get(orphan.instance.metadata.get(META_TEAM, ""))
        if seen.found_at is None:
            seen.found_at = _record_found(orphan, team, policy)
            acted += 1
        if (grace and now < seen.found_at + grace) or policy == "keep":
            continue
        if policy == "adopt" and orphan.reason == "no_row":
            if not seen.adopt_failed:
                acted += _adopt(orphan, team)
            continue
        if seen.last_delete_at is None or now >= seen.last_delete_at + retry_after:
            _request_removal(orphan, team, policy)
            acted += 1
    return acted


def _record_found(orphan: Orphan, team: Team | None, policy: str) -> datetime:
    event = record_event(
        actor=Actor.scheduler(),
        action=FOUND,
        outcome=Outcome.SUCCEEDED,
        sandbox=orphan.row,
        team=team if orphan.row is None else None,
        message=(
            f"{orphan.provider} instance {orphan.ref} carries sandbox id {orphan.sandbox_id} "
            f"but {REASONS[orphan.reason]}"
        ),
        data=_data(orphan, policy),
    )
    return event.created_at


def _request_removal(orphan: Orphan, team: Team | None, policy: str) -> None:
    with transaction.atomic():
        record_event(
            actor=Actor.scheduler(),
            action=DELETE,
            outcome=Outcome.REQUESTED,
            sandbox=orphan.row,
            team=team if orphan.row is None else None,
            data=_data(orphan, policy),
        )
        enqueue_on_commit(
            "sandboxes.tasks.remove_orphan",
            orphan.provider,
            orphan.ref,
            orphan.sandbox_id,
            name=f"orphan-{orphan.provider}-{orphan.ref}"[:100],
        )


def _adopt(orphan: Orphan, team: Team | None) -> bool:
    """Rebuild the lost row from the instance's metadata (exactly once: the id is the key)."""
    meta = orphan.instance.metadata
    preset = Preset.objects.filter(pk=meta.get(META_PRESET, "")).first()
    snapshot_id = meta.get(META_SNAPSHOT_ID, "")
    snapshot = Snapshot.objects.filter(snapshot_id=snapshot_id).first() if snapshot_id else None
    missing = [
        what
        for what, ok in (
            (f"team {meta.get(META_TEAM, '')!r}", team is not None),
            (f"preset {meta.get(META_PRESET, '')!r}", preset is not None),
            (f"snapshot {snapshot_id!r}", snapshot is not None or not snapshot_id),
            (f"a valid sandbox id ({orphan.sandbox_id!r})", 0 < len(orphan.sandbox_id) <= 32),
        )
        if not ok
    ]
    data = _data(orphan, "adopt")
    if missing:
        record_event(
            actor=Actor.scheduler(),
            action=ADOPT,
            outcome=Outcome.FAILED,
            team=team,
            message=f"cannot rebuild the row: no {', '.join(missing)}; the instance is kept",
            data=data,
        )
        return True
    if orphan.instance.status == InstanceStatus.CREATING:
        return False
    status = lifecycle.OBSERVED_STATUS[orphan.instance.status]
    now = timezone.now()
    try:
        with transaction.atomic():
            sandbox = Sandbox.objects.create(
                id=orphan.sandbox_id,
                team=team,
                provider=orphan.provider,
                preset=preset,
                snapshot=snapshot,
                **preset.size(),
                provider_ref=orphan.ref,
                status=status,
                status_changed_at=now,
                services=[
                    {"name": s.name, "port": s.port, "url": s.url}
                    for s in orphan.instance.networking.http_services
                ],
                last_activity_at=now,
                started_at=now if status == S.RUNNING else None,
                last_error="rebuilt from the provider's metadata" if status != S.FAILED else "",
            )
            record_event(
                actor=Actor.scheduler(),
                action=ADOPT,
                outcome=Outcome.SUCCEEDED,
                sandbox=sandbox,
                to_status=status,
                message=f"row rebuilt from {orphan.provider} instance {orphan.ref}",
                data=data,
            )
    except IntegrityError:
        return False  # another sweep adopted it first
    return True


# --- the worker half -------------------------------------------------------------------


def remove_orphan(*, provider: str, ref: str, sandbox_id: str) -> None:
    """Delete an orphan instance after judging it again against the database. Idempotent."""
    try:
        backend = get_provider(provider)
        instance = backend.get(ref)
    except (NotFound, ServiceError):
        return
    except ProviderError as exc:
        _removal_failed(provider, ref, sandbox_id, exc.message)
        return
    if instance.metadata.get(META_SANDBOX_ID) != sandbox_id:
        return  # not the instance that was judged
    row = Sandbox.objects.filter(pk=sandbox_id).select_related("team").first()
    token = None
    if row is not None:
        if not judge(row.status, row.provider, row.provider_ref, provider, ref):
            return  # it belongs to a sandbox now (adopted, or a start picked it up)
        # Hold the row's lease so a start retried meanwhile cannot pick the instance up
        # through create's idempotency while it is being deleted.
        token = leases.claim(
            Sandbox, row.pk, status=row.status, seconds=settings.SANDBOX_OPERATION_LEASE_SECONDS
        )
        if token is None:
            return
    try:
        lifecycle.retrying(instance.delete)
    except ProviderError as exc:
        _removal_failed(provider, ref, sandbox_id, exc.message, row=row)
        return
    finally:
        if token is not None:
            Sandbox.objects.filter(pk=row.pk, lease_token=token).update(
                lease_token="", lease_expires_at=None
            )
    record_event(
        actor=Actor.scheduler(),
        action=DELETE,
        outcome=Outcome.SUCCEEDED,
        sandbox=row,
        team=None if row is not None else _team(instance),
        message=f"deleted orphan {provider} instance {ref}",
        data={"provider": provider, "ref": ref, "sandbox_id": sandbox_id},
    )


def _team(instance: Instance) -> Team | None:
    return Team.objects.filter(slug=instance.metadata.get(META_TEAM, "")).first()


def _removal_failed(
    provider: str, ref: str, sandbox_id: str, message: str, *, row: Sandbox | None = None
) -> None:
    record_event(
        actor=Actor.scheduler(),
        action=DELETE,
        outcome=Outcome.FAILED,
        sandbox=row,
        message=f"deleting orphan {provider} instance {ref} failed: {message}",
        data={"provider": provider, "ref": ref, "sandbox_id": sandbox_id},
    )
