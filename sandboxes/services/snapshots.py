"""Snapshot versions: resolve, take (a new version from a sandbox), import, activate, delete.

Versions of one (provider, preset) count up from 1 and are never reused: a deleted
version keeps its row (status ``deleted``), and numbers are allocated under a lock on the
preset row. A version belongs to a team, or to nobody (shared: every team may use it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from providers.errors import Conflict as ProviderConflict
from providers.errors import InvalidSnapshotId, NotFound, ProviderError
from providers.presets import parse_preset_id
from providers.snapshot_ids import (
    NoActiveVersion,
    format_snapshot_id,
    parse_snapshot_id,
    resolve_snapshot_id,
)
from sandboxes import selectors
from sandboxes.models import (
    ActiveSnapshot,
    Outcome,
    PoolMember,
    Preset,
    Sandbox,
    Snapshot,
    SnapshotStatus,
    Team,
    WarmPool,
)
from sandboxes.selectors import active_snapshot, visible_to
from sandboxes.services import leases, pools
from sandboxes.services.actors import Actor
from sandboxes.services.backends import capabilities, get_provider, preset_refusal
from sandboxes.services.errors import CapabilityMissing, Conflict, InvalidInput, NotAllowed
from sandboxes.services.events import record_event
from sandboxes.services.queue import enqueue_on_commit
from sandboxes.states import ACTION_STATUSES, Status, in_words

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


def is_snapshot_id(text: str) -> bool:
    """Whether ``text`` is written like one of our snapshot ids (with or without ``_vN``)."""
    try:
        parse_snapshot_id(text)
    except InvalidSnapshotId:
        return False
    return True


def resolve_snapshot(*, team: Team, snapshot_id: str) -> Snapshot:
    """A version by its id, or by the id without ``_vN`` (the team's active version).

    ``Snapshot.DoesNotExist`` for anything the team cannot see, as the selectors answer.
    """
    if not selectors.storable(snapshot_id):
        raise Snapshot.DoesNotExist(snapshot_id)
    visible = selectors.snapshots_for_team(team=team, include_deleted=True)
    exact = visible.filter(snapshot_id=snapshot_id).first()
    if exact is not None:
        return exact
    try:
        parsed = parse_snapshot_id(snapshot_id)
    except InvalidSnapshotId:
        raise Snapshot.DoesNotExist(snapshot_id) from None
    active = None
    if parsed.version is None:
        active = active_snapshot(team=team, provider=parsed.provider, preset_id=parsed.preset_id)
    if active is None:
        raise Snapshot.DoesNotExist(snapshot_id)
    return selectors.get_snapshot(team=team, snapshot_id=active.snapshot_id)


def _invalid_snapshot(message: str) -> InvalidInput:
    return InvalidInput(message, fields={"snapshot_id": [message]})


def resolve_for_start(
    *, team: Team, preset_id: str | None, provider: str | None, snapshot_id: str | None
) -> Snapshot:
    """The ready version a new sandbox starts from; InvalidInput saying why if none."""
    if snapshot_id:
        try:
            resolved = resolve_snapshot_id(
                snapshot_id,
                active_version=lambda p, preset: getattr(
                    active_snapshot(team=team, provider=p, preset_id=preset), "version", None
                ),
            )
        except InvalidSnapshotId as exc:
            raise _invalid_snapshot(str(exc)) from None
        except NoActiveVersion:
            raise _invalid_snapshot(
                f"{snapshot_id} has no active version; activate one or name a version (_vN)"
            ) from None
        if provider and resolved.provider != provider:
            raise _invalid_snapshot(
                f"{snapshot_id} is a {resolved.provider} snapshot, not {provider}"
            )
        if preset_id and resolved.preset_id != preset_id:
            raise _invalid_snapshot(
                f"{snapshot_id} is of preset {resolved.preset_id}, not {preset_id}"
            )
        snapshot = (
            Snapshot.objects.filter(visible_to(team=team), snapshot_id=str(resolved))
            .select_related("preset")
            .first()
        )
        if snapshot is None:
            raise _invalid_snapshot(f"no snapshot version {resolved} is visible to your team")
    else:
        if not preset_id:
            raise InvalidInput(
                "give a preset or a snapshot_id",
                fields={"preset": ["required without snapshot_id"]},
            )
        if not provider:
            raise InvalidInput("no provider is enabled", fields={"provider": ["none enabled"]})
        preset = Preset.objects.filter(pk=preset_id, enabled=True).first()
        if preset is None:
            raise InvalidInput(
                f"unknown preset {preset_id!r}",
                fields={"preset": [f"unknown preset {preset_id!r}"]},
            )
        get_provider(provider)  # InvalidInput naming the enabled ones when it is not
        refusal = preset_refusal(preset, provider)
        if refusal:
            raise InvalidInput(refusal, fields={"provider": [refusal]})
        snapshot = active_snapshot(team=team, provider=provider, preset_id=preset_id)
        if snapshot is None:
            raise _invalid_snapshot(
                f"preset {preset_id} has no active version on {provider}; an operator "
                "registers one with `manage.py import_snapshot`"
            )
        snapshot.preset = preset  # the version of this preset: no second query for it
    if snapshot.status != SnapshotStatus.READY:
        raise _invalid_snapshot(f"{snapshot.snapshot_id} is {snapshot.status}, not ready")
    return snapshot


def next_version(provider: str, preset: Preset) -> int:
    """Allocate the next version number; call inside a transaction."""
    Preset.objects.select_for_update().filter(pk=preset.pk).first()
    last = Snapshot.objects.filter(provider=provider, preset=preset).aggregate(v=Max("version"))
    return (last["v"] or 0) + 1


def take_snapshot(*, sandbox: Sandbox, actor: Actor, label: str = "") -> Snapshot:
    """Record the next version of the sandbox's preset and enqueue capturing it."""
    actor.require_write(sandbox.team, "take snapshots")
    caps = capabilities(sandbox.provider)
    if not caps.supports_snapshots:
        raise CapabilityMissing(
            sandbox.provider, "supports_snapshots", caps.reason("supports_snapshots")
        )
    label = _validate_label(label)
    sandbox = Sandbox.objects.select_related("team", "preset").get(pk=sandbox.pk)
    allowed = ACTION_STATUSES["snapshot"]
    if sandbox.status not in allowed or not sandbox.provider_ref:
        raise Conflict(
            f"a sandbox that is {sandbox.status} cannot be snapshotted "
            f"(it must be {in_words(allowed)})"
        )
    with transaction.atomic():
        version = next_version(sandbox.provider, sandbox.preset)
        snapshot = Snapshot.objects.create(
            snapshot_id=format_snapshot_id(sandbox.provider, sandbox.preset_id, version),
            provider=sandbox.provider,
            preset=sandbox.preset,
            version=version,
            team=sandbox.team,
            parent_id=sandbox.snapshot_id,
            source_sandbox=sandbox,
            # The image's declared ports stay declared in what is made from it.
            exposed_ports=sandbox.snapshot.exposed_ports if sandbox.snapshot_id else [],
            created_by=actor.user,
            label=label,
        )
        record_event(
            actor=actor,
            action="snapshot",
            outcome=Outcome.REQUESTED,
            sandbox=sandbox,
            snapshot=snapshot,
            data={"snapshot_id": snapshot.snapshot_id},
        )
        enqueue_on_commit(
            "sandboxes.tasks.run_snapshot_operation", snapshot.pk, name=f"snapshot-{snapshot.pk}"
        )
    return snapshot


def _validate_label(label: str | None) -> str:
    if label is None:
        return ""
    if not isinstance(label, str) or len(label) > 200:
        raise InvalidInput("label: at most 200 characters", fields={"label": ["200 at most"]})
    return label.strip()


def perform_snapshot_operation(*, snapshot_pk: int) -> None:
    """Worker half of taking or deleting a version. Idempotent."""
    snapshot = Snapshot.objects.select_related("source_sandbox").filter(pk=snapshot_pk).first()
    if snapshot is None or snapshot.status not in (
        SnapshotStatus.CREATING,
        SnapshotStatus.DELETING,
    ):
        return
    lease = settings.SANDBOX_OPERATION_LEASE_SECONDS
    token = leases.claim(Snapshot, snapshot.pk, status=snapshot.status, seconds=lease)
    if token is None:
        return
    try:
        if snapshot.status == SnapshotStatus.CREATING:
            _capture(snapshot, token)
        else:
            _destroy(snapshot, token)
    finally:
        # A settle releases the lease with its result; one that raised wrote nothing, so
        # hand the lease back for the retry (a no-op once settled: the token is gone).
        Snapshot.objects.filter(pk=snapshot.pk, lease_token=token).update(
            lease_token="", lease_expires_at=None
        )


def _settle(snapshot: Snapshot, token: str, *, event: dict, **fields) -> bool:
    """Write the worker's result and release the lease, with its audit ``event`` (the
    arguments of ``record_event``) in the same transaction: both or neither. Nothing is
    written when the lease was lost (another worker has taken over)."""
    with transaction.atomic():
        won = bool(
            Snapshot.objects.filter(pk=snapshot.pk, lease_token=token).update(
                lease_token="", lease_expires_at=None, updated_at=timezone.now(), **fields
            )
        )
        if won:
            record_event(actor=Actor.system(), snapshot=snapshot, **event)
    return won


def _capture(snapshot: Snapshot, token: str) -> None:
    sandbox = snapshot.source_sandbox
    try:
        if sandbox is None or not sandbox.provider_ref:
            raise NotFound("the sandbox this version was to be taken from is gone")
        result = get_provider(snapshot.provider).get(sandbox.provider_ref).snapshot()
    except ProviderError as exc:
        message = f"snapshot failed: {exc.message}"
        _settle(
            snapshot,
            token,
            status=SnapshotStatus.FAILED,
            error=message,
            event={
                "action": "snapshot",
                "outcome": Outcome.FAILED,
                "sandbox": sandbox,
                "message": message,
            },
        )
        return
    _settle(
        snapshot,
        token,
        status=SnapshotStatus.READY,
        provider_ref=result.ref,
        size_bytes=result.size_bytes,
        error="",
        event={
            "action": "snapshot",
            "outcome": Outcome.SUCCEEDED,
            "sandbox": sandbox,
            "data": {"snapshot_id": snapshot.snapshot_id, "size_bytes": result.size_bytes},
        },
    )


def _destroy(snapshot: Snapshot, token: str) -> None:
    # One image build registers the same stored image for several presets: the image
    # goes with the last version that names it.
    shared = (
        Snapshot.objects.filter(provider=snapshot.provider, provider_ref=snapshot.provider_ref)
        .exclude(pk=snapshot.pk)
        .exclude(status__in=(SnapshotStatus.DELETED, SnapshotStatus.FAILED))
        .exists()
    )
    try:
        if snapshot.provider_ref and not shared:
            get_provider(snapshot.provider).delete_snapshot(snapshot.provider_ref)
    except NotFound:
        pass
    except ProviderError as exc:
        refused = isinstance(exc, ProviderConflict)
        message = f"{'refused' if refused else 'failed'} by {snapshot.provider}: {exc.message}"
        _settle(
            snapshot,
            token,
            status=SnapshotStatus.READY,
            error=f"delete {message}",
            event={
                "action": "delete_version",
                "outcome": Outcome.REFUSED if refused else Outcome.FAILED,
                "message": message,
            },
        )
        return
    _settle(
        snapshot,
        token,
        status=SnapshotStatus.DELETED,
        error="",
        event={"action": "delete_version", "outcome": Outcome.SUCCEEDED},
    )


def update_snapshot_label(*, snapshot: Snapshot, label: str, actor: Actor) -> Snapshot:
    """Change a version's label (the only thing about a version that can be edited)."""
    _require_scope_manager(actor, snapshot.team, "edit")
    label = _validate_label(label)
    with transaction.atomic():
        locked = Snapshot.objects.select_for_update().get(pk=snapshot.pk)
        if locked.label != label:
            previous = locked.label
            locked.label = label
            locked.save(update_fields=["label", "updated_at"])
            record_event(
                actor=actor,
                action="edit_version",
                outcome=Outcome.SUCCEEDED,
                snapshot=locked,
                data={"snapshot_id": locked.snapshot_id, "label": [previous, label]},
            )
    return locked


def _require_scope_manager(actor: Actor, team: Team | None, what: str) -> None:
    if team is None:
        operator = actor.is_automation or (actor.user is not None and actor.user.is_superuser)
        if not operator or actor.token is not None:
            raise NotAllowed(f"only an operator can {what} shared versions")
    elif not actor.can_manage(team):
        raise NotAllowed(f"only the team's owners and admins can {what} its versions")


def import_snapshot(
    *,
    provider: str,
    preset_id: str,
    ref: str,
    actor: Actor,
    label: str = "",
    activate: bool = False,
    team: Team | None = None,
) -> Snapshot:
    """Register an image that already exists on a provider as the next version of a preset."""
    _require_scope_manager(actor, team, "import")
    get_provider(provider)
    preset = known_preset(preset_id)
    refusal = preset_refusal(preset, provider)
    if refusal:  # a version no sandbox could be started from
        raise InvalidInput(refusal, fields={"preset": [refusal]})
    if not isinstance(ref, str) or not ref.strip() or len(ref) > 255:
        raise InvalidInput("ref: the provider's image reference (1-255 characters)")
    label = _validate_label(label)
    with transaction.atomic():
        return register_snapshot(
            provider=provider,
            preset=preset,
            ref=ref.strip(),
            team=team,
            actor=actor,
            created_by=actor.user,
            label=label,
            activate=activate,
        )


def register_snapshot(
    *,
    provider: str,
    preset: Preset,
    ref: str,
    team: Team | None,
    actor: Actor,
    created_by: AbstractBaseUser | None,
    label: str,
    activate: bool,
    size_bytes: int | None = None,
    exposed_ports: list[int] | None = None,
    data: dict | None = None,
) -> Snapshot:
    """Record an image that is ready on ``provider`` as the next version of ``preset``.

    The one way a finished image becomes a version: an import and an image build both end
    here, so both number, audit and activate alike. Call it inside a transaction.
    """
    version = next_version(provider, preset)
    snapshot = Snapshot.objects.create(
        snapshot_id=format_snapshot_id(provider, preset.pk, version),
        provider=provider,
        preset=preset,
        version=version,
        team=team,
        provider_ref=ref,
        status=SnapshotStatus.READY,
        created_by=created_by,
        label=label,
        size_bytes=size_bytes,
        exposed_ports=sorted(exposed_ports or []),
    )
    record_event(
        actor=actor,
        action="import_version",
        outcome=Outcome.SUCCEEDED,
        snapshot=snapshot,
        team=team,
        data={"snapshot_id": snapshot.snapshot_id, "ref": ref, **(data or {})},
    )
    if activate:
        activate_snapshot(snapshot=snapshot, actor=actor, team=team)
    return snapshot


def known_preset(preset_id: str) -> Preset:
    """The preset ``preset_id``; InvalidInput saying whether the id is malformed or unknown."""
    preset = Preset.objects.filter(pk=preset_id).first()
    if preset is None:
        try:
            parse_preset_id(preset_id)
        except ValueError as exc:
            raise InvalidInput(str(exc), fields={"preset": [str(exc)]}) from None
        raise InvalidInput(f"unknown preset {preset_id}", fields={"preset": ["unknown preset"]})
    return preset


def activate_snapshot(*, snapshot: Snapshot, actor: Actor, team: Team | None) -> ActiveSnapshot:
    """Make ``snapshot`` the active version for ``team`` (None: the shared default)."""
    _require_scope_manager(actor, team, "activate")
    snapshot = Snapshot.objects.get(pk=snapshot.pk)  # decide on the row, not a stale copy
    if team is None and snapshot.team_id is not None:
        raise InvalidInput("a team's own version cannot become the shared default")
    if team is not None and snapshot.team_id not in (None, team.pk):
        raise InvalidInput(f"{snapshot.snapshot_id} is not visible to {team.slug}")
    if snapshot.status != SnapshotStatus.READY:
        raise Conflict(
            f"{snapshot.snapshot_id} is {snapshot.status}; only a ready version can be active"
        )
    with transaction.atomic():
        scope = ActiveSnapshot.objects.select_for_update().filter(
            team=team, provider=snapshot.provider, preset_id=snapshot.preset_id
        )
        pointer = scope.first()
        previous = pointer.snapshot.snapshot_id if pointer else ""
        previous_snapshot = pointer.snapshot if pointer else None
        if pointer is None:
            pointer = ActiveSnapshot.objects.create(
                team=team,
                provider=snapshot.provider,
                preset_id=snapshot.preset_id,
                snapshot=snapshot,
                activated_by=actor.user,
            )
        else:
            pointer.snapshot = snapshot
            pointer.activated_by = actor.user
            pointer.activated_at = timezone.now()
            pointer.save(update_fields=["snapshot", "activated_by", "activated_at"])
        record_event(
            actor=actor,
            action="activate_version",
            outcome=Outcome.SUCCEEDED,
            snapshot=snapshot,
            team=team,
            data={"snapshot_id": snapshot.snapshot_id, "previous": previous},
        )
        # The scope's warm pools follow: old members drain, new ones are made.
        pools.follow_activation(previous=previous_snapshot, snapshot=snapshot, team=team)
    return pointer


def delete_snapshot(*, snapshot: Snapshot, actor: Actor, data: dict | None = None) -> Snapshot:
    """Delete a snapshot nothing depends on; Conflict naming what still uses it otherwise.

    ``data`` is added to the audit event (the scheduler's reason, e.g. retention).
    """
    _require_scope_manager(actor, snapshot.team, "delete")
    with transaction.atomic():
        locked = Snapshot.objects.select_for_update().get(pk=snapshot.pk)
        if locked.status not in (SnapshotStatus.READY, SnapshotStatus.FAILED):
            raise Conflict(f"{locked.snapshot_id} is {locked.status}")
        active_for = list(
            ActiveSnapshot.objects.filter(snapshot=locked).values_list("team__slug", flat=True)
        )
        if active_for:
            scopes = ", ".join(slug or "every team" for slug in active_for)
            raise Conflict(
                f"{locked.snapshot_id} is the active version for {scopes}; activate another first"
            )
        users = list(
            Sandbox.objects.filter(snapshot=locked)
            .exclude(status=Status.DELETED)
            .values_list("pk", flat=True)[:6]
        )
        if users:
            more = "…" if len(users) > 5 else ""
            raise Conflict(
                f"{locked.snapshot_id} is used by sandbox(es) {', '.join(users[:5])}{more}; "
                "delete them first"
            )
        # A warm pool keeps instances made from it (PVE's linked clones need the
        # template): delete the pool, or activate another version, first.
        if WarmPool.objects.filter(snapshot=locked).exists() or (
            PoolMember.objects.filter(snapshot=locked).exists()
        ):
            raise Conflict(
                f"{locked.snapshot_id} has a warm pool or pool members; delete the pool "
                "(or activate another version and let the pool drain) first"
            )
        updated = Snapshot.objects.filter(pk=locked.pk, status=locked.status).update(
            status=SnapshotStatus.DELETING, updated_at=timezone.now()
        )
        if not updated:  # pragma: no cover - guarded by the row lock
            raise Conflict(f"{locked.snapshot_id} changed; try again")
        record_event(
            actor=actor,
            action="delete_version",
            outcome=Outcome.REQUESTED,
            snapshot=locked,
            data={"snapshot_id": locked.snapshot_id, **(data or {})},
        )
        enqueue_on_commit(
            "sandboxes.tasks.run_snapshot_operation", locked.pk, name=f"delete-version-{locked.pk}"
        )
    locked.refresh_from_db()
    return locked
