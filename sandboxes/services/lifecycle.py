"""Sandbox lifecycle: create/start, stop, pause, resume, hibernate, delete.

Each action is two halves:

* the *request* (``pause_sandbox`` ...), called by the API, the dashboard, the admin or
  the scheduler: checks permission and capability, moves the sandbox to its transitional
  status by compare-and-set, writes the audit event, and enqueues the work on commit;
* the *operation* (``perform_operation``), run by a django-q2 worker: takes the lease,
  calls the provider, and settles the status (or rolls back and records the failure).

``wake`` is the one operation carried out in the request: the service proxy resumes a
parked sandbox with wake-on-HTTP on and serves the request once it runs.

Quick calls whose answer the caller waits for (exec, services, wake-on) live in
``sandboxes/services/interactive.py``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from providers.base import (
    META_POOL,
    META_PRESET,
    META_SANDBOX_ID,
    META_SNAPSHOT_ID,
    META_TEAM,
    Instance,
    InstanceSpec,
    InstanceStatus,
)
from providers.errors import NotFound, ProviderError
from sandboxes import db_pool
from sandboxes.models import (
    Environment,
    Outcome,
    Preset,
    Sandbox,
    Snapshot,
    SnapshotStatus,
    Team,
    TtlAction,
)
from sandboxes.services import network, pools, team_secrets, transitions, workspaces
from sandboxes.services.actors import Actor
from sandboxes.services.backends import (
    capabilities,
    default_provider,
    get_provider,
    provider_capacity,
)
from sandboxes.services.errors import (
    CapabilityMissing,
    IdempotencyKeyReused,
    InvalidInput,
    ServiceError,
)
from sandboxes.services.events import Audit, record_event
from sandboxes.services.queue import enqueue_on_commit
from sandboxes.services.quotas import check_provider_capacity, check_quota
from sandboxes.services.snapshots import resolve_for_start
from sandboxes.services.validation import validate_metadata, validate_name, validate_seconds
from sandboxes.states import PARKED, TRANSITIONAL, WAKING, Status

logger = logging.getLogger(__name__)
S = Status
T = TypeVar("T")

PROVIDER_RETRIES = 3


@dataclass(frozen=True)
class Operation:
    name: str
    transitional: Status
    allowed_from: frozenset[Status]
    capability: str | None = None


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("start", S.STARTING, frozenset({S.PENDING, S.STOPPED, S.FAILED})),
        Operation("stop", S.STOPPING, frozenset({S.RUNNING, S.PAUSED, S.HIBERNATED})),
        Operation("pause", S.PAUSING, frozenset({S.RUNNING}), "supports_pause"),
        Operation("hibernate", S.PAUSING, frozenset({S.RUNNING, S.PAUSED}), "supports_hibernate"),
        Operation("resume", S.RESUMING, frozenset({S.PAUSED, S.HIBERNATED})),
        Operation("delete", S.DELETING, frozenset(Status) - {S.DELETED}),
    )
}

#: What the provider reports, as the sandbox status it means.
OBSERVED_STATUS: dict[InstanceStatus, Status] = {
    InstanceStatus.CREATING: S.STARTING,
    InstanceStatus.RUNNING: S.RUNNING,
    InstanceStatus.PAUSED: S.PAUSED,
    InstanceStatus.HIBERNATED: S.HIBERNATED,
    InstanceStatus.STOPPED: S.STOPPED,
    InstanceStatus.ERROR: S.FAILED,
}


# --- requests ------------------------------------------------------------------------


class _TeamDefault:
    def __repr__(self) -> str:
        return "TEAM_DEFAULT"


#: For a lifecycle setting of ``create_sandbox``: the team's default (else the site's).
TEAM_DEFAULT = _TeamDefault()


def team_lifecycle_defaults(team: Team) -> tuple[int | None, int | None]:
    """(idle timeout, delete after this long parked) for the team's new sandboxes, in
    seconds; None is never. The team's own values, else the site's (cmux's defaults)."""

    def pick(own: int | None, site: int) -> int | None:
        return (site if own is None else own) or None

    return (
        pick(team.idle_timeout_seconds, settings.SANDBOX_DEFAULT_IDLE_TIMEOUT_SECONDS),
        pick(team.delete_parked_after_seconds, settings.SANDBOX_DEFAULT_DELETE_PARKED_SECONDS),
    )


def replayed_create(
    *, team: Team, idempotency_key: str, asked: Mapping[str, Any]
) -> Sandbox | None:
    """The sandbox a create with this ``idempotency_key`` made before, or None (no key, or
    a key the team has not used).

    The one idempotency rule, for the API, cmux and the dashboard (``create_sandbox``
    applies it too): a retry asks for what the first create asked for, or it is refused
    with IdempotencyKeyReused (409) naming the fields that differ. ``asked`` holds
    ``create_sandbox``'s keyword arguments as given. A field left out took a default the
    first time, so only a field given can differ (``preset_id`` is ``preset`` and a
    snapshot id without ``_vN`` matches the version it resolved to).
    """
    if not idempotency_key:
        return None
    existing = (
        Sandbox.objects.select_related("preset", "snapshot")
        .filter(team=team, idempotency_key=idempotency_key)
        .first()
    )
    if existing is None:
        return None
    given: dict[str, object] = {
        "name": validate_name(asked.get("name", "")),
        "metadata": validate_metadata(asked.get("metadata")),
        "ttl_seconds": asked.get("ttl_seconds"),
        "ttl_action": asked.get("ttl_action", TtlAction.STOP),
    }
    for field in ("idle_timeout_seconds", "delete_parked_after_seconds"):
        if asked.get(field, TEAM_DEFAULT) is not TEAM_DEFAULT:
            given[field] = asked[field]
    if asked.get("env") is not None:
        given["env"] = asked["env"]
    differing = [field for field, value in given.items() if getattr(existing, field) != value]
    secrets = asked.get("secrets")
    if secrets is not None and list(dict.fromkeys(secrets)) != existing.secret_names:
        differing.append("secrets")
    mode = asked.get("network_policy")
    policy = network.parse_policy(mode, asked.get("network_allow")) if mode else None
    if policy != network.stored(existing.network_policy, existing.network_allow):
        differing.append("network_policy")
    preset_id, provider = asked.get("preset_id"), asked.get("provider")
    if preset_id and preset_id != existing.preset_id:
        differing.append("preset")
    if provider and provider != existing.provider:
        differing.append("provider")
    made = existing.snapshot.snapshot_id if existing.snapshot_id else ""
    snapshot_id = asked.get("snapshot_id")
    if snapshot_id and snapshot_id not in (made, made.rsplit("_v", 1)[0]):
        differing.append("snapshot_id")
    if differing:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used for a different request",
            fields={field: ["differs from the first request"] for field in differing},
        )
    return existing


def create_sandbox(
    *,
    team: Team,
    actor: Actor,
    preset_id: str | None = None,
    provider: str | None = None,
    snapshot_id: str | None = None,
    name: str = "",
    ttl_seconds: int | None = None,
    ttl_action: str = TtlAction.STOP,
    idle_timeout_seconds: int | _TeamDefault | None = TEAM_DEFAULT,
    delete_parked_after_seconds: int | _TeamDefault | None = TEAM_DEFAULT,
    metadata: dict[str, str] | None = None,
    idempotency_key: str = "",
    network_policy: str | None = None,
    network_allow: list[str] | None = None,
    env: dict[str, str] | None = None,
    secrets: list[str] | None = None,
    repo: dict[str, str] | None = None,
    setup: str = "",
    environment: Environment | None = None,
) -> Sandbox:
    """Record a new sandbox in ``starting`` and enqueue its provisioning.

    ``idle_timeout_seconds`` and ``delete_parked_after_seconds`` left out take the team's
    lifecycle defaults (``team_lifecycle_defaults``); None is never.

    ``env`` (plain variables) and ``secrets`` (names of the team's secrets) are the
    environment of every exec and terminal process in it (``services/team_secrets.py``).
    ``repo`` (url, branch, path, credential) is cloned into it and ``setup`` run in it
    once after its first start (``services/workspaces.py``); ``environment`` is the team
    environment the request was made from (``services/environments.py`` fills the rest).

    ``network_policy`` (and ``network_allow`` for ``allowlist``) override the team's and
    the preset's outbound policy; the effective one is stored on the sandbox
    (``services/network.py``) and refused when the provider cannot enforce it.

    The snapshot may be a version (``local_2vcpu_2gb_8gb_v3``), an id without ``_vN``
    (the active version) or omitted (the active version of ``preset_id`` on ``provider``).
    With an ``idempotency_key`` already used by the team, the first sandbox is returned
    and nothing new is made (``replayed_create``: a retry that asks for something else is
    refused).
    """
    actor.require_write(team, "create sandboxes")
    # What was asked, before defaults fill it in: a retry is compared on this.
    asked = {
        "preset_id": preset_id,
        "provider": provider,
        "snapshot_id": snapshot_id,
        "name": name,
        "ttl_seconds": ttl_seconds,
        "ttl_action": ttl_action,
        "idle_timeout_seconds": idle_timeout_seconds,
        "delete_parked_after_seconds": delete_parked_after_seconds,
        "metadata": metadata,
        "network_policy": network_policy,
        "network_allow": network_allow,
        "env": env,
        "secrets": secrets,
    }
    name = validate_name(name)
    metadata = validate_metadata(metadata)
    ttl_seconds = validate_seconds("ttl_seconds", ttl_seconds)
    default_idle, default_keep = team_lifecycle_defaults(team)
    if idle_timeout_seconds is TEAM_DEFAULT:
        idle_timeout_seconds = default_idle
    else:
        idle_timeout_seconds = validate_seconds("idle_timeout_seconds", idle_timeout_seconds)
    if delete_parked_after_seconds is TEAM_DEFAULT:
        delete_parked_after_seconds = default_keep
    else:
        delete_parked_after_seconds = validate_seconds(
            "delete_parked_after_seconds", delete_parked_after_seconds
        )
    override = None
    if network_policy is not None:
        override = network.parse_policy(network_policy, network_allow)
    elif network_allow:
        problem = "give network_policy: allowlist with network_allow"
        raise InvalidInput(f"network_allow: {problem}", fields={"network_allow": [problem]})
    env, secret_names = team_secrets.check_sandbox_environment(team=team, env=env, secrets=secrets)
    repo = workspaces.check_repo(team=team, repo=repo)
    setup = workspaces.check_setup(setup)
    if environment is not None and environment.team_id != team.pk:
        raise InvalidInput("no such environment", fields={"environment": ["not found"]})
    if ttl_action not in TtlAction.values:
        raise InvalidInput(
            f"ttl_action must be one of {', '.join(TtlAction.values)}",
            fields={"ttl_action": [f"choose one of {', '.join(TtlAction.values)}"]},
        )
    if len(idempotency_key) > 200:
        raise InvalidInput(
            "Idempotency-Key is longer than 200 characters",
            fields={"idempotency_key": ["200 characters at most"]},
        )
    existing = replayed_create(team=team, idempotency_key=idempotency_key, asked=asked)
    if existing is not None:
        return existing
    snapshot = resolve_for_start(
        team=team,
        preset_id=preset_id,
        provider=provider or default_provider(),
        snapshot_id=snapshot_id,
    )
    preset: Preset = snapshot.preset
    # Services to expose at the first start: the environment's, the image's declared ports.
    exposes = bool(snapshot.exposed_ports or (environment is not None and environment.services))
    has_setup = bool(repo or setup or exposes)
    capacity = provider_capacity(snapshot.provider)  # also: is it enabled?
    policy, policy_source = network.effective_policy(preset=preset, team=team, override=override)
    network.check_supported(
        policy, provider=snapshot.provider, caps=capabilities(snapshot.provider)
    )
    with transaction.atomic():
        locked_team = Team.objects.select_for_update().get(pk=team.pk)
        # Again under the lock: two retries racing.
        existing = replayed_create(team=team, idempotency_key=idempotency_key, asked=asked)
        if existing is not None:
            return existing
        check_quota(team=locked_team, vcpus=preset.vcpus, memory_mb=preset.memory_mb)
        # A warm member (services/pools.py) is already running on the host: taking it
        # needs no room there, only the team's quota above.
        member = pools.claim(
            team=team,
            snapshot=snapshot,
            network_record=network.as_record(policy, policy_source),
        )
        if member is None:
            check_provider_capacity(
                team=locked_team,
                provider=snapshot.provider,
                capacity=capacity,
                memory_mb=preset.memory_mb,
            )
        # Lock the version: its deletion (retention, a person) checks "in use" under the
        # same lock, so a version is never deleted under a sandbox that starts from it.
        if not Snapshot.objects.select_for_update().filter(
            pk=snapshot.pk, status=SnapshotStatus.READY
        ):
            raise InvalidInput(
                f"{snapshot.snapshot_id} is being deleted",
                fields={"snapshot_id": [f"{snapshot.snapshot_id} is being deleted"]},
            )
        now = timezone.now()
        # A hit is started right here, after commit: the row is born with the start's
        # lease, so no worker can take it first (and none has to be asked).
        lease_token, lease_expires_at = transitions.born_leased() if member else ("", None)
        sandbox = Sandbox.objects.create(
            team=team,
            created_by=actor.user,
            name=name,
            provider=snapshot.provider,
            preset=preset,
            snapshot=snapshot,
            **preset.size(),
            status=S.STARTING,
            operation="start",
            provider_ref=member.provider_ref if member is not None else "",
            lease_token=lease_token,
            lease_expires_at=lease_expires_at,
            metadata=metadata,
            ttl_seconds=ttl_seconds,
            ttl_action=ttl_action,
            idle_timeout_seconds=idle_timeout_seconds,
            delete_parked_after_seconds=delete_parked_after_seconds,
            idempotency_key=idempotency_key,
            last_activity_at=now,
            status_changed_at=now,
            network_policy=override.mode if override else "",
            network_allow=list(override.allow) if override else [],
            network=network.as_record(policy, policy_source),
            env=env,
            secret_names=secret_names,
            repo=repo,
            setup=setup,
            setup_status=workspaces.PENDING if has_setup else "",
            environment=environment,
        )
        record_event(
            actor=actor,
            action="create",
            outcome=Outcome.REQUESTED,
            sandbox=sandbox,
            to_status=S.STARTING,
            data={
                "snapshot_id": snapshot.snapshot_id,
                "preset": preset.id,
                "network": sandbox.network,
                **({"repo": repo} if repo else {}),
                **({"environment": environment.name} if environment is not None else {}),
                **({"pool": member.pool_id} if member is not None else {}),
            },
        )
        if member is None:
            _enqueue(sandbox)
        else:
            pools.record_claim(member=member, sandbox=sandbox, actor=actor)
    if member is not None:
        _start_claimed(sandbox, lease_token)
    return sandbox


def _start_claimed(sandbox: Sandbox, token: str) -> None:
    """Start a sandbox made from a warm member, in the create (the caller sees it
    running, with no queue round trip): a relabel and a status check. ``sandbox`` is
    left as the row is; anything unexpected leaves the start to a worker."""
    try:
        _perform_start(sandbox, token)
    except Exception:
        logger.exception("starting %s from a warm member failed", sandbox.pk)
        transitions.release(sandbox.pk, token=token)
        with transaction.atomic():
            _enqueue(sandbox)
    else:
        if sandbox.status == S.RUNNING:
            return  # settled: ``finish`` gave the row object what it wrote
        _hand_over(sandbox.pk, token, done=(S.STARTING, "start"))
    sandbox.refresh_from_db()


def request_operation(
    *,
    sandbox: Sandbox,
    operation: str,
    actor: Actor,
    data: dict | None = None,
    fields: dict | None = None,
    only_if: Q | None = None,
    record_refusal: bool = True,
) -> Sandbox:
    """Ask for ``operation`` (start, stop, pause, hibernate, resume, delete).

    The scheduler passes its reason in ``data`` (it lands in the audit event), extra
    ``fields`` to write in the same compare-and-set (clearing ``expires_at``), and an
    ``only_if`` condition the row must still meet (see ``transitions.request``).
    """
    op = OPERATIONS[operation]
    actor.require_write(sandbox.team, f"{operation} sandboxes")
    if op.capability:
        caps = capabilities(sandbox.provider)
        if not caps.supports(op.capability):
            raise CapabilityMissing(sandbox.provider, op.capability, caps.reason(op.capability))
    # Not inside one atomic block with the enqueue: a refusal must keep its audit row.
    sandbox = transitions.request(
        sandbox,
        action=operation,
        to=op.transitional,
        allowed_from=op.allowed_from,
        actor=actor,
        operation=operation,
        fields=fields,
        data=data,
        only_if=only_if,
        record_refusal=record_refusal,
    )
    _enqueue(sandbox)
    return sandbox


def start_sandbox(*, sandbox: Sandbox, actor: Actor) -> Sandbox:
    return request_operation(sandbox=sandbox, operation="start", actor=actor)


def stop_sandbox(*, sandbox: Sandbox, actor: Actor) -> Sandbox:
    return request_operation(sandbox=sandbox, operation="stop", actor=actor)


def pause_sandbox(*, sandbox: Sandbox, actor: Actor) -> Sandbox:
    return request_operation(sandbox=sandbox, operation="pause", actor=actor)


def hibernate_sandbox(*, sandbox: Sandbox, actor: Actor) -> Sandbox:
    return request_operation(sandbox=sandbox, operation="hibernate", actor=actor)


def resume_sandbox(*, sandbox: Sandbox, actor: Actor) -> Sandbox:
    return request_operation(sandbox=sandbox, operation="resume", actor=actor)


def delete_sandbox(*, sandbox: Sandbox, actor: Actor) -> Sandbox:
    return request_operation(sandbox=sandbox, operation="delete", actor=actor)


def enqueue_operation(sandbox: Sandbox) -> None:
    """Enqueue the worker half again (the reconciler resuming a stuck operation)."""
    _enqueue(sandbox)


def _enqueue(sandbox: Sandbox) -> None:
    enqueue_on_commit(
        "sandboxes.tasks.run_sandbox_operation",
        sandbox.pk,
        name=f"{sandbox.operation}-{sandbox.pk}",
    )


def wake(*, sandbox: Sandbox, actor: Actor) -> Sandbox:
    """Resume a parked sandbox and wait (bounded) until it runs; return the fresh row.

    A pause in progress is waited for first. The resume is asked for once; this request
    then carries it out itself unless a worker already holds it. Traffic wakes a sandbox
    whoever sent it (a viewer's request too): a caller who may not write asks as the
    system, and the audit event names who sent it.
    """
    waker = actor if actor.can_write(sandbox.team) else Actor.system()
    deadline = time.monotonic() + settings.SANDBOX_WAKE_TIMEOUT_SECONDS
    asked = False
    while True:
        row = Sandbox.objects.select_related("team", "preset", "snapshot").get(pk=sandbox.pk)
        if row.status in PARKED and not asked:
            asked = True
            # Refused when another request woke it first or it moved on: the row tells.
            with contextlib.suppress(ServiceError):
                request_operation(
                    sandbox=row,
                    operation="resume",
                    actor=waker,
                    data={"reason": "wake_on_http", "requested_by": actor.label},
                    record_refusal=False,
                )
            continue
        if row.status == Status.RESUMING:
            perform_operation(sandbox_id=row.pk)  # a no-op if a worker has it
            row = Sandbox.objects.select_related("team", "preset", "snapshot").get(pk=row.pk)
        waiting = row.status in WAKING or (row.status in PARKED and not asked)
        if not waiting or time.monotonic() >= deadline:
            return row
        db_pool.give_back()  # the database connection is not held while sleeping
        time.sleep(0.1)


# --- operations (workers) --------------------------------------------------------------


def perform_operation(*, sandbox_id: str) -> None:
    """Carry out the operation a sandbox's transitional status asks for.

    Safe to call any number of times: without the lease, or when there is nothing to
    do, it returns without touching anything.
    """
    sandbox = (
        Sandbox.objects.select_related("snapshot", "team", "preset").filter(pk=sandbox_id).first()
    )
    if sandbox is None or sandbox.operation not in OPERATIONS:
        return
    if OPERATIONS[sandbox.operation].transitional != sandbox.status:
        return
    token = transitions.claim(sandbox.pk, status=sandbox.status)
    if token is None:
        return
    done = (sandbox.status, sandbox.operation)  # the handler may settle ``sandbox``
    handler = {
        "start": _perform_start,
        "stop": _perform_simple,
        "pause": _perform_simple,
        "hibernate": _perform_simple,
        "resume": _perform_simple,
        "delete": _perform_delete,
    }[sandbox.operation]
    try:
        handler(sandbox, token)
    finally:
        _hand_over(sandbox.pk, token, done=done)


def _hand_over(sandbox_id: str, token: str, *, done: tuple[str, str]) -> None:
    """Release the lease; if another operation was requested meanwhile, enqueue it.

    ``done`` is the (status, operation) this worker carried out: when the row still
    shows it (a delete that failed), it is left for the reconciler, not retried at once.
    """
    transitions.release(sandbox_id, token=token)
    row = Sandbox.objects.filter(pk=sandbox_id).values("status", "operation").first()
    pending = row and OPERATIONS.get(row["operation"])
    if (
        pending
        and pending.transitional == row["status"]
        and (row["status"], row["operation"]) != done
    ):
        with transaction.atomic():
            _enqueue(Sandbox(pk=sandbox_id, operation=row["operation"]))


def _spec(sandbox: Sandbox) -> InstanceSpec:
    return InstanceSpec(
        sandbox_id=sandbox.pk,
        preset_id=sandbox.preset_id,
        vcpus=sandbox.vcpus,
        memory_mb=sandbox.memory_mb,
        disk_gb=sandbox.disk_gb,
        network=network.of_sandbox(sandbox),
    )


def provider_metadata(sandbox: Sandbox) -> dict[str, str]:
    """The marker every instance carries: enough to find it and rebuild its row."""
    return {
        META_SANDBOX_ID: sandbox.pk,
        META_TEAM: sandbox.team.slug,
        META_PRESET: sandbox.preset_id,
        META_SNAPSHOT_ID: sandbox.snapshot.snapshot_id if sandbox.snapshot_id else "",
    }


def retrying(call: Callable[[], T], *, attempts: int = PROVIDER_RETRIES) -> T:
    """Call a provider, retrying errors that say a retry may help (locks, outages)."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except ProviderError as exc:
            if not exc.retryable or attempt == attempts:
                raise
            time.sleep(min(0.25 * 2**attempt, 5))
    raise AssertionError("unreachable")  # pragma: no cover


def _perform_start(sandbox: Sandbox, token: str) -> None:
    provider = get_provider(sandbox.provider)
    instance: Instance | None = None
    # Only an instance this start made is rolled back; one the sandbox already had (a
    # restart, a retried start) may hold someone's work and is never deleted here.
    had_instance = bool(sandbox.provider_ref)
    made = False
    try:
        if had_instance:
            try:
                instance = provider.get(sandbox.provider_ref)
            except NotFound:
                instance = None
            if instance is not None and instance.metadata.get(META_POOL):
                # A warm pool's member this sandbox claimed: from now on the instance
                # says it is this sandbox's (orphan detection, rebuilding a lost row).
                meta = provider_metadata(sandbox)
                retrying(lambda: instance.relabel(meta))
        if instance is None:
            if sandbox.snapshot is None:
                raise NotFound("the sandbox has no snapshot version to start from")
            instance = provider.create(
                _spec(sandbox), sandbox.snapshot.provider_ref, provider_metadata(sandbox)
            )
            made = True
            transitions.update_leased(sandbox.pk, token=token, provider_ref=instance.id)
        if made or instance.status != InstanceStatus.RUNNING:
            retrying(instance.start)
            instance = provider.get(instance.id)
        # else: found running (a warm member, a start retried after the provider's part
        # succeeded): nothing to start, and ``instance`` was just read.
    except ProviderError as exc:
        if made or not had_instance:
            _fail_start(sandbox, token, instance, exc)
        else:
            _fail_operation(sandbox, token, exc)
        return
    now = timezone.now()
    fields = {
        "provider_ref": instance.id,
        "last_error": "",
        "started_at": now,
        "last_activity_at": now,
        "services": _services(instance),
    }
    if sandbox.ttl_seconds and sandbox.expires_at is None:
        fields["expires_at"] = now + timedelta(seconds=sandbox.ttl_seconds)
    transitions.finish(
        sandbox.pk,
        token=token,
        from_status=S.STARTING,
        to=S.RUNNING,
        fields=fields,
        audit=_audit(sandbox, "start", data={"provider_ref": instance.id}),
        row=sandbox,
    )
    if sandbox.setup_status == workspaces.PENDING:
        # Its own task: a clone may take minutes, the start's lease is not held meanwhile.
        workspaces.enqueue_setup(sandbox.pk)


def _fail_start(
    sandbox: Sandbox, token: str, instance: Instance | None, error: ProviderError
) -> None:
    """Roll back what the provider made, then leave the sandbox failed with the reason."""
    message = f"start failed: {error.message}"
    ref = instance.id if instance is not None else ""
    if instance is not None:
        try:
            retrying(instance.delete)
            ref = ""
        except ProviderError as cleanup:
            message += f"; removing the half-made instance failed too ({cleanup.message}), "
            message += "garbage collection will retry"
    settled = transitions.finish(
        sandbox.pk,
        token=token,
        from_status=S.STARTING,
        to=S.FAILED,
        fields={"last_error": message, "provider_ref": ref, "services": []},
        audit=_audit(sandbox, "start", outcome=Outcome.FAILED, message=message),
    )
    if not settled:
        _failed_elsewhere(sandbox, "start", S.STARTING, message)


def _perform_simple(sandbox: Sandbox, token: str) -> None:
    """stop, pause, hibernate, resume: one provider call, then the settled status."""
    operation = sandbox.operation
    target = {"stop": S.STOPPED, "pause": S.PAUSED, "hibernate": S.HIBERNATED, "resume": S.RUNNING}
    provider = get_provider(sandbox.provider)
    try:
        instance = provider.get(sandbox.provider_ref)
        call = {
            "stop": instance.stop,
            "pause": instance.pause,
            "hibernate": instance.hibernate,
            "resume": instance.resume,
        }[operation]
        retrying(call)
    except ProviderError as exc:
        _fail_operation(sandbox, token, exc)
        return
    fields: dict = {"last_error": ""}
    if operation == "resume":
        fields["last_activity_at"] = timezone.now()
    transitions.finish(
        sandbox.pk,
        token=token,
        from_status=sandbox.status,
        to=target[operation],
        fields=fields,
        audit=_audit(sandbox, operation),
    )


def _fail_operation(sandbox: Sandbox, token: str, error: ProviderError) -> None:
    """The provider refused or failed: settle on what the provider says is true now.

    When the provider cannot say (an outage, an instance still changing), the sandbox
    stays in its transitional status with the reason and the reconciler retries; it is
    never marked failed on a guess, because failed sandboxes that never ran are cleaned up.
    """
    operation, status = sandbox.operation, sandbox.status
    message = f"{operation} failed: {error.message}"
    observed = observe(sandbox)
    audit = _audit(sandbox, operation, outcome=Outcome.FAILED, message=message)
    if observed is None or observed in TRANSITIONAL:
        with transaction.atomic():  # the reason and its event together
            transitions.update_leased(sandbox.pk, token=token, last_error=message)
            audit.record(from_status=status, to_status=status)
        return
    settled = transitions.finish(
        sandbox.pk,
        token=token,
        from_status=status,
        to=observed,
        fields={"last_error": message},
        audit=audit,
    )
    if not settled:
        _failed_elsewhere(sandbox, operation, status, message)


def observe(sandbox: Sandbox) -> Status | None:
    """The status the provider reports for this sandbox: failed if its instance is gone,
    None if the provider cannot be read."""
    if not sandbox.provider_ref:
        return S.FAILED
    try:
        instance = get_provider(sandbox.provider).get(sandbox.provider_ref)
    except NotFound:
        return S.FAILED
    except ProviderError:
        return None
    return OBSERVED_STATUS[instance.status]


def _perform_delete(sandbox: Sandbox, token: str) -> None:
    if sandbox.provider_ref:
        try:
            instance = get_provider(sandbox.provider).get(sandbox.provider_ref)
            retrying(instance.delete)
        except NotFound:
            pass  # already gone: what we wanted
        except ProviderError as exc:
            # Stay in deleting; the reconciler retries once the lease is released.
            message = f"delete failed: {exc.message}"
            with transaction.atomic():  # the reason and its event together
                transitions.update_leased(sandbox.pk, token=token, last_error=message)
                _audit(sandbox, "delete", outcome=Outcome.FAILED, message=message).record(
                    from_status=S.DELETING, to_status=S.DELETING
                )
            return
    now = timezone.now()
    fields = {"deleted_at": now, "services": [], "provider_ref": "", "last_error": ""}
    transitions.finish(
        sandbox.pk,
        token=token,
        from_status=S.DELETING,
        to=S.DELETED,
        fields=fields,
        audit=_audit(sandbox, "delete"),
    )


def _audit(
    sandbox: Sandbox,
    action: str,
    *,
    outcome: Outcome = Outcome.SUCCEEDED,
    message: str = "",
    data: dict | None = None,
) -> Audit:
    """The worker's event for a settled operation; ``transitions.finish`` writes it in the
    status change's own transaction."""
    return Audit(
        actor=Actor.system(),
        action=action,
        sandbox=sandbox,
        outcome=outcome,
        message=message,
        data=data,
    )


def _failed_elsewhere(sandbox: Sandbox, action: str, from_status: str, message: str) -> None:
    """The operation failed but its status could not be settled (another request moved the
    row on meanwhile): keep the reason in the trail without claiming a status change."""
    _audit(sandbox, action, outcome=Outcome.FAILED, message=message).record(
        from_status=from_status, to_status=""
    )


def _services(instance: Instance) -> list[dict]:
    return [
        {"name": s.name, "port": s.port, "url": s.url} for s in instance.networking.http_services
    ]
