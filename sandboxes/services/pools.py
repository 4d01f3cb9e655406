"""Warm pools: started instances kept ready so a create skips the clone (docs/pools.md).

A pool (``WarmPool``) is per (provider, snapshot, team or shared). Its members
(``PoolMember``) are real instances the provider made, carrying metadata with the
member's own id as the sandbox id and ``pool`` (``META_POOL``). They are not sandboxes:
team lists, quotas, TTLs, idle parking and billing never see them.

* ``claim`` (inside ``lifecycle.create_sandbox``'s transaction) takes the oldest ready
  member under a row lock (``SELECT ... FOR UPDATE SKIP LOCKED``; the row is deleted in
  the same transaction, so two creates never get one member) and the new sandbox row
  records its reference. The start that follows relabels the instance with the
  sandbox's metadata (``Instance.relabel``) and settles it ``running``. No ready member
  is a miss: the create goes on as a normal start.
* ``refill`` tops a pool up to its target, never beyond its maximum or the provider's
  free memory, making members in parallel (``SANDBOX_POOL_FILL_PARALLEL``). A claim or a
  miss asks for one at once; ``maintain`` (the ``sandboxes.pools`` schedule) also drains
  members of another snapshot (an activation repoints a pool), recycles members older than
  the pool's maximum age and removes members of disabled or deleted pools.
* ``reconcile_members`` (a sweep phase) compares members with the provider's inventory:
  a member whose instance is gone loses its row; an instance carrying ``pool`` whose row
  was lost is taken back into its pool when it still fits, and deleted otherwise. Orphan
  collection (``services/orphans.py``) leaves instances carrying ``pool`` to this.

Every pool action writes an audit event (actor ``scheduler`` for the background ones).
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from providers.base import (
    META_POOL,
    META_PRESET,
    META_SANDBOX_ID,
    META_SNAPSHOT_ID,
    META_TEAM,
    InstanceSpec,
    InstanceStatus,
)
from providers.errors import NotFound, ProviderError
from sandboxes.models import (
    ActiveSnapshot,
    MemberState,
    Outcome,
    PoolMember,
    Sandbox,
    SandboxEvent,
    Snapshot,
    SnapshotStatus,
    Team,
    WarmPool,
)
from sandboxes.services import network
from sandboxes.services.actors import Actor
from sandboxes.services.backends import get_provider, provider_capacity
from sandboxes.services.errors import InvalidInput, NotAllowed
from sandboxes.services.events import record_event
from sandboxes.services.inventory import Inventory
from sandboxes.services.queue import enqueue_on_commit
from sandboxes.states import SETTLED_LIVE, Status

logger = logging.getLogger(__name__)
M = MemberState

# --- claims (called by lifecycle.create_sandbox) ---------------------------------------


def matching_pools(*, team: Team, snapshot: Snapshot) -> list[WarmPool]:
    """The enabled pools a create from ``snapshot`` by ``team`` may take from: the
    team's own first, then the shared one."""
    pools = WarmPool.objects.filter(snapshot=snapshot, enabled=True).filter(
        Q(team=team) | Q(team__isnull=True)
    )
    return sorted(pools, key=lambda pool: pool.team_id is None)


def claim(*, team: Team, snapshot: Snapshot, network_record: dict) -> PoolMember | None:
    """Take a ready member for a create (call inside the create's transaction).

    The member row is locked (skipping rows another create holds) and deleted here, so
    it is claimed exactly once whatever the concurrency; the caller records its
    ``provider_ref`` on the new sandbox in the same transaction. None is a miss (no pool,
    or none ready): the pool is asked to refill after commit either way.
    """
    pools = matching_pools(team=team, snapshot=snapshot)
    if not pools:
        return None
    for pool in pools:
        ready = PoolMember.objects.filter(pool=pool, state=M.READY).order_by("ready_at", "pk")
        if connection.features.has_select_for_update_skip_locked:
            ready = ready.select_for_update(skip_locked=True)
        for member in ready[:3]:
            if _policy(member.network) != _policy(network_record):
                break  # made for another outbound policy: every member of the pool is
            # The delete is the claim: on a database without row locks (SQLite) it
            # still takes the member only if nobody took it first.
            if PoolMember.objects.filter(pk=member.pk, state=M.READY).delete()[0]:
                WarmPool.objects.filter(pk=pool.pk).update(hits=F("hits") + 1)
                _ask_refill(pool.pk)
                member.pool = pool
                return member
    WarmPool.objects.filter(pk=pools[0].pk).update(misses=F("misses") + 1)
    _ask_refill(pools[0].pk)
    return None


def record_claim(*, member: PoolMember, sandbox: Sandbox, actor: Actor) -> None:
    """The claim's audit event (in the create's transaction)."""
    record_event(
        actor=actor,
        action="pool_claim",
        outcome=Outcome.SUCCEEDED,
        sandbox=sandbox,
        message=f"took warm member {member.id} ({member.provider_ref}) of pool {member.pool_id}",
        data={
            "pool": member.pool_id,
            "member": member.id,
            "provider_ref": member.provider_ref,
            "ready_for_seconds": round((timezone.now() - member.ready_at).total_seconds(), 3)
            if member.ready_at
            else None,
        },
    )


def _policy(record: dict) -> dict:
    return {k: v for k, v in (record or {}).items() if k != "source"}


def _ask_refill(pool_id: int) -> None:
    enqueue_on_commit("sandboxes.tasks.refill_pool", pool_id, name=f"pool-refill-{pool_id}")


def pool_metadata(member: PoolMember, pool: WarmPool) -> dict[str, str]:
    """A member's marker: its own id as the sandbox id, and its pool."""
    return {
        META_SANDBOX_ID: member.id,
        META_TEAM: pool.team.slug if pool.team_id else "",
        META_PRESET: member.preset_id,
        META_SNAPSHOT_ID: member.snapshot.snapshot_id,
        META_POOL: str(pool.pk),
    }


def member_policy(pool: WarmPool) -> dict:
    """The outbound policy a pool's members are made with: what a create from the pool's
    team (or, shared, from a team without a policy of its own) gets without asking."""
    preset = pool.snapshot.preset
    if pool.team_id:
        policy, source = network.effective_policy(preset=preset, team=pool.team)
    else:
        policy = network.stored(preset.network_policy, preset.network_allow)
        policy, source = (policy or network.NetworkPolicy()), "preset"
    return network.as_record(policy, source)


# --- managing pools (API, dashboard, admin) ---------------------------------------------


def _require_manager(actor: Actor, team: Team | None) -> None:
    if team is None:
        operator = actor.is_automation or (actor.user is not None and actor.user.is_superuser)
        if not operator or actor.token is not None:
            raise NotAllowed("only an operator manages shared pools")
        return
    if not actor.can_manage(team):
        raise NotAllowed("only the team's owners and admins manage its pools")


def _check_sizes(target_size: int, maximum: int, max_age_seconds: int) -> None:
    problems: dict[str, list[str]] = {}
    if not isinstance(target_size, int) or target_size < 0:
        problems["target_size"] = ["a whole number, 0 or more"]
    if not isinstance(maximum, int) or maximum < 0:
        problems["maximum"] = ["a whole number, 0 or more"]
    elif isinstance(target_size, int) and maximum < target_size:
        problems["maximum"] = ["at least target_size"]
    if not isinstance(max_age_seconds, int) or max_age_seconds < 60:
        problems["max_age_seconds"] = ["60 or more"]
    if isinstance(maximum, int) and maximum > settings.SANDBOX_POOL_MAX_MEMBERS:
        problems["maximum"] = [f"{settings.SANDBOX_POOL_MAX_MEMBERS} at most"]
    if problems:
        raise InvalidInput("; ".join(f"{k}: {v[0]}" for k, v in problems.items()), fields=problems)


def create_pool(
    *,
    actor: Actor,
    team: Team | None,
    snapshot: Snapshot,
    target_size: int = 2,
    maximum: int | None = None,
    max_age_seconds: int = 24 * 3600,
    enabled: bool = True,
) -> WarmPool:
    """A pool of ``snapshot`` for ``team`` (None: shared, operators only)."""
    _require_manager(actor, team)
    maximum = target_size if maximum is None else maximum
    _check_sizes(target_size, maximum, max_age_seconds)
    if team is not None and snapshot.team_id not in (None, team.pk):
        raise InvalidInput("no such snapshot", fields={"snapshot_id": ["not found"]})
    if team is None and snapshot.team_id is not None:
        raise InvalidInput("a team's own snapshot cannot have a shared pool")
    if snapshot.status != SnapshotStatus.READY:
        raise InvalidInput(
            f"{snapshot.snapshot_id} is {snapshot.status}",
            fields={"snapshot_id": ["not ready"]},
        )
    get_provider(snapshot.provider)  # enabled?
    with transaction.atomic():
        if WarmPool.objects.filter(snapshot=snapshot, team=team).exists():
            raise InvalidInput(
                f"{snapshot.snapshot_id} already has a pool for this team",
                fields={"snapshot_id": ["already pooled"]},
            )
        pool = WarmPool.objects.create(
            provider=snapshot.provider,
            snapshot=snapshot,
            team=team,
            target_size=target_size,
            maximum=maximum,
            max_age_seconds=max_age_seconds,
            enabled=enabled,
        )
        _audit(actor, "pool_create", pool, data=_settings_of(pool))
        _ask_refill(pool.pk)
    return pool


def update_pool(*, actor: Actor, pool: WarmPool, **changes: object) -> WarmPool:
    """Change ``target_size``, ``maximum``, ``max_age_seconds`` or ``enabled``."""
    _require_manager(actor, pool.team)
    allowed = {"target_size", "maximum", "max_age_seconds", "enabled"}
    unknown = set(changes) - allowed
    if unknown:
        raise InvalidInput(f"cannot change {', '.join(sorted(unknown))}")
    values = {**_settings_of(pool), **changes}
    _check_sizes(values["target_size"], values["maximum"], values["max_age_seconds"])
    with transaction.atomic():
        WarmPool.objects.filter(pk=pool.pk).update(**changes)
        pool.refresh_from_db()
        _audit(actor, "pool_update", pool, data={k: values[k] for k in changes})
        _ask_refill(pool.pk)
    return pool


def delete_pool(*, actor: Actor, pool: WarmPool) -> None:
    """Delete the pool; its members lose their pool and are removed by the next refill."""
    _require_manager(actor, pool.team)
    with transaction.atomic():
        _audit(actor, "pool_delete", pool, data=_settings_of(pool))
        orphaned = list(PoolMember.objects.filter(pool=pool).values_list("pk", flat=True))
        pool.delete()
        if orphaned:
            enqueue_on_commit("sandboxes.tasks.maintain_pools", name="pool-maintain")


def _settings_of(pool: WarmPool) -> dict:
    return {
        "snapshot_id": pool.snapshot.snapshot_id,
        "target_size": pool.target_size,
        "maximum": pool.maximum,
        "max_age_seconds": pool.max_age_seconds,
        "enabled": pool.enabled,
    }


def _audit(
    actor: Actor,
    action: str,
    pool: WarmPool | None,
    *,
    outcome: Outcome = Outcome.SUCCEEDED,
    message: str = "",
    data: dict | None = None,
    team: Team | None = None,
) -> None:
    record_event(
        actor=actor,
        action=action,
        outcome=outcome,
        team=pool.team if pool is not None and pool.team_id else team,
        message=message,
        data={"pool": pool.pk if pool is not None else None, **(data or {})},
    )


def follow_activation(*, previous: Snapshot | None, snapshot: Snapshot, team: Team | None) -> int:
    """An activation moved (team or shared, provider, preset) from ``previous`` to
    ``snapshot``: that scope's pools of ``previous`` now keep ``snapshot``. Their old
    members are drained by the refill this asks for (they no longer match the pool's
    snapshot), new ones made. Returns how many pools moved."""
    if previous is None or previous.pk == snapshot.pk:
        return 0
    moved = 0
    following = WarmPool.objects.filter(snapshot=previous)
    if team is not None:
        following = following.filter(team=team)
    else:
        # The shared pointer moved: shared pools follow, and so do the pools of teams
        # without a pointer of their own (their creates start from the shared one).
        pinned = ActiveSnapshot.objects.filter(
            team__isnull=False, provider=snapshot.provider, preset_id=snapshot.preset_id
        ).values_list("team_id", flat=True)
        following = following.exclude(team_id__in=list(pinned))
    for pool in following.select_related("team"):
        if WarmPool.objects.filter(snapshot=snapshot, team=pool.team).exists():
            continue  # the new version has its own pool already: leave both as they are
        WarmPool.objects.filter(pk=pool.pk).update(snapshot=snapshot)
        _audit(
            Actor.scheduler(),
            "pool_follow",
            pool,
            message=f"{previous.snapshot_id} -> {snapshot.snapshot_id}: old members drain",
            data={"previous": previous.snapshot_id, "snapshot_id": snapshot.snapshot_id},
        )
        _ask_refill(pool.pk)
        moved += 1
    return moved


# --- the worker: refill, drain, recycle ---------------------------------------------------


def maintain(*, now: datetime | None = None) -> int:
    """Every pool: remove what must go (other snapshot, too old, pool disabled or gone,
    above the maximum), then refill. Returns the members made and removed."""
    now = now or timezone.now()
    acted = 0
    for member, reason in _to_remove(now, pool_id=None):
        acted += _remove(member, reason=reason)
    for pool_id in WarmPool.objects.values_list("pk", flat=True):
        acted += refill(pool_id=pool_id, now=now)
    return acted


def _to_remove(now: datetime, *, pool_id: int | None) -> list[tuple[PoolMember, str]]:
    """Ready members that must go, with why (all pools' and the pool-less ones, or one
    pool's)."""
    doomed: list[tuple[PoolMember, str]] = []
    members = PoolMember.objects.filter(state=M.READY).select_related("pool")
    if pool_id is not None:
        members = members.filter(pool_id=pool_id)
    ready_per_pool: dict[int, int] = {}
    for member in members.order_by("-ready_at"):
        pool = member.pool
        reason = ""
        if pool is None:
            reason = "pool_deleted"
        elif not pool.enabled:
            reason = "pool_disabled"
        elif member.snapshot_id != pool.snapshot_id:
            reason = "drain"  # the pool follows another snapshot now
        elif member.ready_at and now - member.ready_at > timedelta(seconds=pool.max_age_seconds):
            reason = "recycle"
        else:
            ready_per_pool[pool.pk] = ready_per_pool.get(pool.pk, 0) + 1
            if ready_per_pool[pool.pk] > pool.maximum:
                reason = "above_maximum"
        if reason:
            doomed.append((member, reason))
    return doomed


def refill(*, pool_id: int, now: datetime | None = None) -> int:
    """Make members until the pool holds its target (ready or being made), never beyond
    its maximum (every member counts, also those being removed) or what the provider's
    host has free. One refill of a pool at a time (the pool row is locked while the rows
    of the new members are written; the instances are made after that, in parallel).
    First the pool's members that must go (another snapshot, too old) are removed."""
    removed = 0
    for member, reason in _to_remove(now or timezone.now(), pool_id=pool_id):
        removed += _remove(member, reason=reason)
    with transaction.atomic():
        query = WarmPool.objects.filter(pk=pool_id).select_related("snapshot__preset", "team")
        if connection.features.has_select_for_update_skip_locked:
            query = query.select_for_update(skip_locked=True, of=("self",))
        else:
            # SQLite: a write first takes the database's write lock, so a second refill
            # waits here and then counts the members the first one made.
            WarmPool.objects.filter(pk=pool_id).update(updated_at=timezone.now())
        pool = query.first()
        if pool is None:
            return 0  # gone, or another refill has it
        counts = dict(
            PoolMember.objects.filter(pool=pool)
            .values_list("state")
            .annotate(n=Count("pk"))
            .values_list("state", "n")
        )
        ready = PoolMember.objects.filter(pool=pool, state=M.READY, snapshot=pool.snapshot).count()
        kept = counts.get(M.CREATING, 0) + ready
        everyone = sum(counts.values())
        want = 0
        limit = ""
        if pool.enabled and pool.snapshot.status == SnapshotStatus.READY:
            want = max(0, min(pool.target_size - kept, pool.maximum - everyone))
            if pool.target_size - kept > want:
                limit = "maximum"
            room = _room(pool)
            if room is not None and room < want:
                want, limit = room, "capacity"
        short = ready < pool.target_size and pool.enabled
        if short and pool.short_since is None:
            WarmPool.objects.filter(pk=pool.pk).update(short_since=timezone.now())
        elif not short and pool.short_since is not None:
            WarmPool.objects.filter(pk=pool.pk).update(short_since=None)
        if want <= 0:
            if limit == "capacity" and not _refused_already(pool):
                _audit(
                    Actor.scheduler(),
                    "pool_fill",
                    pool,
                    outcome=Outcome.REFUSED,
                    message="the provider has no room for another member",
                )
            return removed
        members = [
            PoolMember.objects.create(
                pool=pool,
                provider=pool.provider,
                snapshot=pool.snapshot,
                preset=pool.snapshot.preset,
                network=member_policy(pool),
            )
            for _ in range(want)
        ]
        _audit(
            Actor.scheduler(),
            "pool_fill",
            pool,
            outcome=Outcome.REQUESTED,
            message=f"making {want} member(s)" + (f" (limited by the {limit})" if limit else ""),
            data={"members": [m.id for m in members], "ready": ready, "kept": kept},
        )
    if len(members) == 1:
        _make(members[0].pk)
    else:
        with ThreadPoolExecutor(max_workers=settings.SANDBOX_POOL_FILL_PARALLEL) as workers:
            list(workers.map(_make_in_thread, [m.pk for m in members]))
    ready_now = PoolMember.objects.filter(pool_id=pool_id, state=M.READY).count()
    if ready_now >= pool.target_size:
        WarmPool.objects.filter(pk=pool_id).update(short_since=None)
    return removed + len(members)


def _refused_already(pool: WarmPool) -> bool:
    """The pool's last fill event was a refusal: do not write one a minute while full."""
    last = (
        SandboxEvent.objects.filter(action="pool_fill", data__pool=pool.pk)
        .order_by("-created_at", "-id")
        .values_list("outcome", flat=True)
        .first()
    )
    return last == Outcome.REFUSED


def _room(pool: WarmPool) -> int | None:
    """How many more members of this pool the provider's host can hold (None: no limit
    said). Members count against the host like any instance: the host reports them."""
    try:
        capacity = provider_capacity(pool.provider)
    except InvalidInput:
        return 0  # the provider is not enabled
    if capacity is None:
        return None
    memory = max(1, pool.snapshot.preset.memory_mb)
    return max(0, capacity.memory_mb_free // memory)


def _make_in_thread(member_id: str) -> None:
    try:
        _make(member_id)
    finally:
        close_old_connections()
        connection.close()


def _make(member_id: str) -> None:
    """Create and start one member's instance; ready, or removed with the reason."""
    member = (
        PoolMember.objects.select_related("pool__team", "snapshot", "preset")
        .filter(pk=member_id, state=M.CREATING)
        .first()
    )
    if member is None or member.pool is None:
        return
    pool = member.pool
    instance = None
    try:
        provider = get_provider(member.provider)
        spec = InstanceSpec(
            sandbox_id=member.id,
            preset_id=member.preset_id,
            vcpus=member.preset.vcpus,
            memory_mb=member.preset.memory_mb,
            disk_gb=member.preset.disk_gb,
            network=network.NetworkPolicy.from_dict(_policy(member.network) or {"mode": "none"}),
        )
        instance = provider.create(spec, member.snapshot.provider_ref, pool_metadata(member, pool))
        PoolMember.objects.filter(pk=member.pk).update(provider_ref=instance.id)
        instance.start()
    except (ProviderError, InvalidInput) as exc:
        message = getattr(exc, "message", str(exc))
        if instance is not None:
            try:
                instance.delete()
            except ProviderError as cleanup:
                message += f"; removing it failed too ({cleanup.message}): the sweep retries"
                PoolMember.objects.filter(pk=member.pk).update(state=M.DELETING, last_error=message)
                _audit(
                    Actor.scheduler(),
                    "pool_fill",
                    pool,
                    outcome=Outcome.FAILED,
                    message=message,
                    data={"member": member.id},
                )
                return
        PoolMember.objects.filter(pk=member.pk).delete()
        _audit(
            Actor.scheduler(),
            "pool_fill",
            pool,
            outcome=Outcome.FAILED,
            message=f"member {member.id}: {message}",
            data={"member": member.id},
        )
        return
    now = timezone.now()
    settled = PoolMember.objects.filter(pk=member.pk, state=M.CREATING).update(
        state=M.READY, ready_at=now
    )
    if not settled:
        # Removed while it was being made (its pool deleted, drained): do not leak it.
        with contextlib.suppress(ProviderError):  # else reconcile_members finds it
            instance.delete()
        return
    _audit(
        Actor.scheduler(),
        "pool_fill",
        pool,
        message=f"member {member.id} ready ({instance.id})",
        data={
            "member": member.id,
            "provider_ref": instance.id,
            "seconds": round((now - member.created_at).total_seconds(), 3),
        },
    )


def _remove(member: PoolMember, *, reason: str) -> int:
    """Delete one ready member's instance and row (unless a create claims it first)."""
    if not PoolMember.objects.filter(pk=member.pk, state=M.READY).update(state=M.DELETING):
        return 0  # claimed (the row is gone) or someone else is removing it
    return _delete_member(member, reason=reason)


def _delete_member(member: PoolMember, *, reason: str) -> int:
    pool = WarmPool.objects.filter(pk=member.pool_id).select_related("team").first()
    try:
        if member.provider_ref:
            get_provider(member.provider).get(member.provider_ref).delete()
    except NotFound:
        pass
    except (ProviderError, InvalidInput) as exc:
        message = getattr(exc, "message", str(exc))
        PoolMember.objects.filter(pk=member.pk).update(last_error=message)
        _audit(
            Actor.scheduler(),
            "pool_remove",
            pool,
            outcome=Outcome.FAILED,
            message=f"member {member.id}: {message}",
            data={"member": member.id, "reason": reason},
        )
        return 0
    PoolMember.objects.filter(pk=member.pk).delete()
    _audit(
        Actor.scheduler(),
        "pool_remove",
        pool,
        message=f"member {member.id} removed ({reason})",
        data={"member": member.id, "provider_ref": member.provider_ref, "reason": reason},
    )
    return 1


# --- reconciliation (a sweep phase) -------------------------------------------------------


def reconcile_members(*, inventory: Inventory, now: datetime, limit: int) -> int:
    """Members against the providers' inventory; see the module's docstring."""
    acted = 0
    stuck = timedelta(seconds=settings.SANDBOX_STUCK_SECONDS)
    rows = {m.pk: m for m in PoolMember.objects.all()}
    for name, listed in inventory.providers.items():
        pooled = [i for i in listed.by_ref.values() if i.metadata.get(META_POOL)]
        for member in [m for m in rows.values() if m.provider == name]:
            if acted >= limit:
                return acted
            gone = member.provider_ref and member.provider_ref not in listed.by_ref
            if member.state == M.READY and gone and member.ready_at < listed.taken_at:
                if PoolMember.objects.filter(pk=member.pk, state=M.READY).delete()[0]:
                    _audit(
                        Actor.scheduler(),
                        "pool_lost",
                        member.pool,
                        message=(f"member {member.id}: its instance {member.provider_ref} is gone"),
                        data={"member": member.id},
                    )
                    acted += 1
            elif member.state in (M.CREATING, M.DELETING) and member.created_at < now - stuck:
                # A worker died making or removing it: remove whatever it made.
                found = listed.find(ref=member.provider_ref, sandbox_id=member.id)
                if found is not None:
                    member.provider_ref = found.id
                PoolMember.objects.filter(pk=member.pk).update(state=M.DELETING)
                acted += _delete_member(member, reason="stuck")
        owned = {
            sandbox.provider_ref: sandbox
            for sandbox in Sandbox.objects.filter(
                provider=name, provider_ref__in=[i.id for i in pooled]
            ).select_related("team", "snapshot")
        }
        for instance in pooled:
            if acted >= limit:
                return acted
            member_id = instance.metadata.get(META_SANDBOX_ID, "")
            if member_id in rows:
                continue
            if instance.id in owned:
                acted += _finish_relabel(owned[instance.id])
                continue
            acted += _recover(name, instance.id, instance.metadata)
    return acted


def _finish_relabel(sandbox: Sandbox) -> int:
    """A claimed member whose relabel failed (or whose start died before it): the sandbox
    owns it; once its status is settled, write the sandbox's metadata on it."""
    from sandboxes.services.lifecycle import provider_metadata  # lifecycle imports pools

    if sandbox.status not in SETTLED_LIVE and sandbox.status != Status.FAILED:
        return 0  # its worker may be relabelling it right now
    try:
        get_provider(sandbox.provider).get(sandbox.provider_ref).relabel(provider_metadata(sandbox))
    except (ProviderError, InvalidInput) as exc:
        logger.warning("relabelling %s failed: %s", sandbox.pk, exc)
        return 0
    record_event(
        actor=Actor.scheduler(),
        action="pool_relabel",
        outcome=Outcome.SUCCEEDED,
        sandbox=sandbox,
        message=f"{sandbox.provider_ref} now carries the sandbox's metadata",
    )
    return 1


def _recover(provider: str, ref: str, metadata: dict[str, str]) -> int:
    """An instance of a pool with no row: take it back if it still fits, else delete it."""
    member_id = metadata.get(META_SANDBOX_ID, "")
    pool = (
        WarmPool.objects.filter(pk=int(metadata[META_POOL]))
        .select_related("snapshot", "team")
        .first()
        if metadata.get(META_POOL, "").isdigit()
        else None
    )
    try:
        instance = get_provider(provider).get(ref)  # again: the inventory may be old
    except NotFound:
        return 0
    except (ProviderError, InvalidInput):
        return 0
    if instance.metadata.get(META_POOL) != metadata.get(META_POOL) or (
        PoolMember.objects.filter(pk=member_id).exists()
        or Sandbox.objects.filter(provider=provider, provider_ref=ref).exists()
    ):
        return 0
    fits = (
        pool is not None
        and pool.enabled
        and pool.provider == provider
        and pool.snapshot.snapshot_id == metadata.get(META_SNAPSHOT_ID)
        and instance.status == InstanceStatus.RUNNING
        and PoolMember.objects.filter(pool=pool).count() < pool.maximum
        and 0 < len(member_id) <= 32
    )
    if fits:
        PoolMember.objects.create(
            id=member_id,
            pool=pool,
            provider=provider,
            snapshot=pool.snapshot,
            preset=pool.snapshot.preset,
            network=member_policy(pool),
            provider_ref=ref,
            state=M.READY,
            ready_at=timezone.now(),
        )
        _audit(
            Actor.scheduler(),
            "pool_recover",
            pool,
            message=f"member {member_id} ({ref}) taken back from its provider metadata",
            data={"member": member_id, "provider_ref": ref},
        )
        return 1
    try:
        instance.delete()
    except ProviderError as exc:
        _audit(
            Actor.scheduler(),
            "pool_remove",
            pool,
            outcome=Outcome.FAILED,
            message=f"lost member {member_id} ({ref}): {exc.message}",
            data={"member": member_id, "provider_ref": ref, "reason": "lost_row"},
        )
        return 0
    _audit(
        Actor.scheduler(),
        "pool_remove",
        pool,
        message=f"lost member {member_id} ({ref}) deleted: it no longer fits a pool",
        data={"member": member_id, "provider_ref": ref, "reason": "lost_row"},
    )
    return 1
