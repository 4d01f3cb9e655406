"""Garbage collection in detail (in-memory provider): TTL actions, failed sandboxes, retention."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from providers.base import InstanceStatus
from providers.errors import Conflict, OperationFailed
from sandboxes.models import Outcome, Sandbox, SandboxEvent, Snapshot, SnapshotStatus
from sandboxes.services import gc, lifecycle, snapshots
from sandboxes.services.actors import Actor
from sandboxes.services.sweep import run_snapshot_retention, run_sweep
from sandboxes.states import Status

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def actor(member) -> Actor:
    return Actor.for_user(member)


def create(team, actor, **kwargs) -> Sandbox:
    sandbox = lifecycle.create_sandbox(team=team, actor=actor, preset_id="1vcpu_1gb_8gb", **kwargs)
    sandbox.refresh_from_db()
    return sandbox


def expire(sandbox: Sandbox) -> None:
    Sandbox.objects.filter(pk=sandbox.pk).update(expires_at=timezone.now() - timedelta(seconds=5))


def scheduler_requests(sandbox: Sandbox) -> list[tuple[str, dict]]:
    return [
        (e.action, e.data)
        for e in SandboxEvent.objects.filter(
            sandbox=sandbox, actor_kind="scheduler", outcome=Outcome.REQUESTED
        ).order_by("id")
    ]


@pytest.mark.parametrize(
    ("ttl_action", "disabled", "operation", "final"),
    [
        ("pause", set(), "pause", Status.PAUSED),
        ("pause", {"supports_pause"}, "hibernate", Status.HIBERNATED),
        ("pause", {"supports_pause", "supports_hibernate"}, "stop", Status.STOPPED),
        ("stop", set(), "stop", Status.STOPPED),
        ("delete", set(), "delete", Status.DELETED),
    ],
)
def test_an_expired_ttl_takes_its_action(
    memory_backend, team, actor, ttl_action, disabled, operation, final
):
    sandbox = create(team, actor, ttl_seconds=60, ttl_action=ttl_action)
    memory_backend.disabled.update(disabled)
    expire(sandbox)
    assert run_sweep().actions["ttl"] == 1
    sandbox.refresh_from_db()
    assert sandbox.status == final
    assert sandbox.expires_at is None
    [(action, data)] = scheduler_requests(sandbox)
    assert action == operation
    assert data["reason"] == "ttl_expired"
    assert data["ttl_action"] == ttl_action
    assert ("instead" in data) == bool(disabled)


def test_a_ttl_not_yet_expired_is_left_alone(memory_backend, team, actor):
    sandbox = create(team, actor, ttl_seconds=3600, ttl_action="delete")
    assert run_sweep().actions["ttl"] == 0
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING
    assert sandbox.expires_at is not None


def test_an_already_parked_sandbox_drops_its_deadline_and_a_restart_rearms_it(
    memory_backend, team, actor
):
    sandbox = create(team, actor, ttl_seconds=600, ttl_action="stop")
    lifecycle.stop_sandbox(sandbox=sandbox, actor=actor)
    expire(sandbox)
    assert run_sweep().actions["ttl"] == 1
    sandbox.refresh_from_db()
    assert sandbox.expires_at is None
    assert scheduler_requests(sandbox) == []  # nothing asked of the provider...
    noted = SandboxEvent.objects.get(sandbox=sandbox, action="ttl_expired")  # ...but noted
    assert (noted.actor_kind, noted.data["skipped"], noted.to_status) == (
        "scheduler",
        True,
        "stopped",
    )
    assert run_sweep().actions["ttl"] == 0
    lifecycle.start_sandbox(sandbox=sandbox, actor=actor)
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING
    assert sandbox.expires_at > timezone.now() + timedelta(seconds=590)


def test_a_sandbox_mid_operation_waits_for_its_ttl(memory_backend, team, actor):
    sandbox = create(team, actor, ttl_seconds=60, ttl_action="stop")
    Sandbox.objects.filter(pk=sandbox.pk).update(status=Status.PAUSING, operation="pause")
    expire(sandbox)
    assert run_sweep().actions["ttl"] == 0
    assert Sandbox.objects.get(pk=sandbox.pk).expires_at is not None


def test_a_deadline_extended_after_the_sweep_looked_is_respected(memory_backend, team, actor):
    sandbox = create(team, actor, ttl_seconds=60, ttl_action="stop")
    expire(sandbox)
    now = timezone.now()
    picked = gc.ttl_candidates(now=now, limit=10)
    # The owner extends the TTL between the sweep's read and its compare-and-set.
    Sandbox.objects.filter(pk=sandbox.pk).update(expires_at=now + timedelta(hours=1))
    assert gc.act_on_expired(picked, now=now) == 0
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING
    assert not SandboxEvent.objects.filter(sandbox=sandbox, outcome=Outcome.REFUSED).exists()


def test_the_batch_size_bounds_actions_per_sweep(memory_backend, team, actor, settings):
    team.max_sandboxes = 0
    team.save()
    settings.SANDBOX_SWEEP_BATCH = 2
    sandboxes = [create(team, actor, ttl_seconds=60) for _ in range(5)]
    for sandbox in sandboxes:
        expire(sandbox)
    assert run_sweep().actions["ttl"] == 2
    assert run_sweep().actions["ttl"] == 2
    assert run_sweep().actions["ttl"] == 1
    assert {s.status for s in Sandbox.objects.all()} == {Status.STOPPED}


def test_a_failed_start_is_cleaned_after_its_grace_period(memory_backend, team, actor, settings):
    settings.SANDBOX_FAILED_GRACE_SECONDS = 3600
    memory_backend.faults["start"] = [OperationFailed("boot failed")]
    memory_backend.faults["delete"] = [OperationFailed("locked")]
    sandbox = create(team, actor)
    assert sandbox.status == Status.FAILED
    leftover = sandbox.provider_ref
    assert leftover in memory_backend.instances

    assert run_sweep().actions["failed"] == 0  # within the grace period
    assert leftover in memory_backend.instances
    later = timezone.now() + timedelta(seconds=3601)
    assert run_sweep(now=later).actions["failed"] == 1
    sandbox.refresh_from_db()
    assert sandbox.status == Status.DELETED
    assert memory_backend.instances == {}
    [(action, data)] = scheduler_requests(sandbox)
    assert (action, data["reason"], data["provider_ref"]) == ("delete", "failed_cleanup", leftover)
    assert "boot failed" in data["last_error"]


def test_a_failed_sandbox_that_ran_is_never_cleaned_automatically(
    memory_backend, team, actor, settings
):
    """Its instance may hold someone's work; a person decides."""
    settings.SANDBOX_FAILED_GRACE_SECONDS = 3600
    sandbox = create(team, actor)
    memory_backend.instances[sandbox.provider_ref].status = InstanceStatus.ERROR
    run_sweep()  # the reconciler sees the broken instance: failed
    sandbox.refresh_from_db()
    assert sandbox.status == Status.FAILED
    later = timezone.now() + timedelta(days=30)
    assert run_sweep(now=later).actions["failed"] == 0
    sandbox.refresh_from_db()
    assert sandbox.status == Status.FAILED
    assert sandbox.provider_ref in memory_backend.instances


# --- retention -----------------------------------------------------------------------------


def versions(team, actor, count: int) -> tuple[Sandbox, list[Snapshot]]:
    source = create(team, actor)
    made = [snapshots.take_snapshot(sandbox=source, actor=actor) for _ in range(count)]
    return source, [Snapshot.objects.get(pk=s.pk) for s in made]


def test_retention_keeps_the_newest_versions_of_each_scope(
    memory_backend, team, actor, settings, other_team, outsider
):
    settings.SNAPSHOT_RETENTION = 2
    _, ours = versions(team, actor, 4)  # team versions v2..v5
    assert [s.version for s in ours] == [2, 3, 4, 5]
    _, theirs = versions(other_team, Actor.for_user(outsider), 2)  # v6, v7 of beta
    assert run_snapshot_retention() == 2
    status = dict(Snapshot.objects.values_list("version", "status"))
    assert status == {
        1: SnapshotStatus.READY,  # the shared, active version: a scope of its own
        2: SnapshotStatus.DELETED,
        3: SnapshotStatus.DELETED,
        4: SnapshotStatus.READY,
        5: SnapshotStatus.READY,
        6: SnapshotStatus.READY,
        7: SnapshotStatus.READY,
    }
    assert set(memory_backend.snapshots) == {"base"} | {s.provider_ref for s in ours[2:] + theirs}
    assert run_snapshot_retention() == 0


def test_retention_zero_keeps_everything(memory_backend, team, actor, settings):
    settings.SNAPSHOT_RETENTION = 0
    versions(team, actor, 3)
    assert run_snapshot_retention() == 0
    assert not Snapshot.objects.filter(status=SnapshotStatus.DELETED).exists()


def test_an_active_version_is_kept_however_old(memory_backend, team, actor, settings, team_admin):
    settings.SNAPSHOT_RETENTION = 1
    _, made = versions(team, actor, 3)
    snapshots.activate_snapshot(snapshot=made[0], actor=Actor.for_user(team_admin), team=team)
    run_snapshot_retention()
    status = {s.pk: s.status for s in made}
    status.update(dict(Snapshot.objects.filter(pk__in=status).values_list("pk", "status")))
    assert [status[s.pk] for s in made] == [
        SnapshotStatus.READY,  # active for the team
        SnapshotStatus.DELETED,
        SnapshotStatus.READY,  # newest
    ]


def test_a_refused_provider_delete_is_not_asked_again_at_once(
    memory_backend, team, actor, settings
):
    settings.SNAPSHOT_RETENTION = 1
    _, made = versions(team, actor, 2)
    memory_backend.faults["delete_snapshot"] = [Conflict("linked clones depend on it")]
    assert run_snapshot_retention() == 1
    old = Snapshot.objects.get(pk=made[0].pk)
    assert old.status == SnapshotStatus.READY
    assert old.error.startswith("delete refused")
    assert run_snapshot_retention() == 0  # backs off instead of asking every hour
    refused = SandboxEvent.objects.filter(snapshot=old, outcome=Outcome.REFUSED)
    assert refused.count() == 1
