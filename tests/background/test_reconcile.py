"""Reconciliation in detail (in-memory provider): stuck operations and drift."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from providers.base import InstanceStatus
from providers.errors import OperationFailed, Unavailable
from sandboxes.models import Outcome, Sandbox, SandboxEvent
from sandboxes.services import lifecycle, reconcile
from sandboxes.services.actors import Actor
from sandboxes.services.inventory import take_inventory
from sandboxes.services.sweep import run_sweep
from sandboxes.states import Status

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def actor(member) -> Actor:
    return Actor.for_user(member)


@pytest.fixture(autouse=True)
def stuck_after_a_minute(settings):
    settings.SANDBOX_STUCK_SECONDS = 60
    settings.SANDBOX_RECONCILE_MAX_ATTEMPTS = 3


def create(team, actor, **kwargs) -> Sandbox:
    sandbox = lifecycle.create_sandbox(team=team, actor=actor, preset_id="1vcpu_1gb_8gb", **kwargs)
    sandbox.refresh_from_db()
    return sandbox


def strand(sandbox: Sandbox, status: Status, operation: str, *, ago: int = 120, lease=True):
    """Leave the sandbox as a dead worker would: mid-operation, its lease expired."""
    past = timezone.now() - timedelta(seconds=ago)
    Sandbox.objects.filter(pk=sandbox.pk).update(
        status=status,
        operation=operation,
        status_changed_at=past,
        lease_token="dead" if lease else "",
        lease_expires_at=past if lease else None,
    )


def reconcile_events(sandbox: Sandbox) -> list[dict]:
    return [
        {"outcome": e.outcome, "to": e.to_status, **e.data}
        for e in SandboxEvent.objects.filter(
            sandbox=sandbox, action="reconcile", actor_kind="scheduler"
        ).order_by("id")
    ]


@pytest.mark.parametrize(
    ("stranded", "operation", "provider_call", "final"),
    [
        (Status.PAUSING, "pause", "pause", Status.PAUSED),
        (Status.PAUSING, "hibernate", "hibernate", Status.HIBERNATED),
        (Status.STOPPING, "stop", "stop", Status.STOPPED),
    ],
)
def test_an_operation_the_provider_finished_settles_without_calling_it_again(
    memory_backend, team, actor, stranded, operation, provider_call, final
):
    sandbox = create(team, actor)
    instance = memory_backend.instances[sandbox.provider_ref]
    # The worker made the provider call and died before settling the row.
    instance.status = InstanceStatus(str(final))
    strand(sandbox, stranded, operation)
    calls = len(memory_backend.calls)
    assert run_sweep().actions["stuck"] == 1
    sandbox.refresh_from_db()
    assert (sandbox.status, sandbox.operation, sandbox.lease_token) == (final, "", "")
    assert provider_call not in memory_backend.calls[calls:]
    [event] = reconcile_events(sandbox)
    assert event["resolution"] == "settled"
    assert (event["outcome"], event["to"]) == (Outcome.SUCCEEDED, str(final))


def test_an_operation_the_provider_did_not_do_is_enqueued_again(memory_backend, team, actor):
    sandbox = create(team, actor)
    strand(sandbox, Status.STOPPING, "stop")  # died before calling the provider
    assert run_sweep().actions["stuck"] == 1
    sandbox.refresh_from_db()
    assert sandbox.status == Status.STOPPED
    assert memory_backend.instances[sandbox.provider_ref].status == InstanceStatus.STOPPED
    [event] = reconcile_events(sandbox)
    assert (event["resolution"], event["attempt"], event["observed"]) == (
        "retried",
        1,
        "running",
    )


def test_a_live_lease_or_a_recent_change_is_left_alone(memory_backend, team, actor):
    sandbox = create(team, actor)
    Sandbox.objects.filter(pk=sandbox.pk).update(
        status=Status.STOPPING,
        operation="stop",
        status_changed_at=timezone.now() - timedelta(hours=1),
        lease_token="alive",
        lease_expires_at=timezone.now() + timedelta(minutes=5),
    )
    assert run_sweep().actions["stuck"] == 0
    strand(sandbox, Status.STOPPING, "stop", ago=10, lease=False)  # just asked for
    assert run_sweep().actions["stuck"] == 0
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.STOPPING


def test_a_failed_delete_is_retried_with_backoff_until_it_succeeds(memory_backend, team, actor):
    sandbox = create(team, actor)
    memory_backend.faults["delete"] = [OperationFailed("storage busy")] * 3
    lifecycle.delete_sandbox(sandbox=sandbox, actor=actor)
    sandbox.refresh_from_db()
    assert (sandbox.status, sandbox.last_error) == (Status.DELETING, "delete failed: storage busy")
    Sandbox.objects.filter(pk=sandbox.pk).update(
        status_changed_at=timezone.now() - timedelta(seconds=61)
    )
    assert run_sweep().actions["stuck"] == 1  # attempt 1: fails again
    assert run_sweep().actions["stuck"] == 0  # backing off
    later = timezone.now() + timedelta(seconds=61)
    assert run_sweep(now=later).actions["stuck"] == 1  # attempt 2: fails again
    assert run_sweep(now=later).actions["stuck"] == 0
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.DELETING
    much_later = timezone.now() + timedelta(seconds=200)
    assert run_sweep(now=much_later).actions["stuck"] == 1  # attempt 3 succeeds
    sandbox.refresh_from_db()
    assert sandbox.status == Status.DELETED
    assert memory_backend.instances == {}
    assert [e["attempt"] for e in reconcile_events(sandbox)] == [1, 2, 3]


def test_a_delete_whose_instance_is_gone_settles_deleted(memory_backend, team, actor):
    sandbox = create(team, actor)
    memory_backend.instances.clear()  # someone removed it on the provider
    strand(sandbox, Status.DELETING, "delete", lease=False)
    assert run_sweep().actions["stuck"] == 1
    sandbox.refresh_from_db()
    assert (sandbox.status, sandbox.provider_ref) == (Status.DELETED, "")
    assert sandbox.deleted_at is not None
    assert reconcile_events(sandbox)[0]["resolution"] == "settled"


def test_after_the_last_attempt_the_sandbox_settles_on_what_the_provider_shows(
    memory_backend, team, actor, settings
):
    settings.SANDBOX_RECONCILE_MAX_ATTEMPTS = 1
    sandbox = create(team, actor)
    memory_backend.faults["stop"] = [OperationFailed("agent hangs")] * 3
    # A stop whose worker kept dying: one retry already happened.
    strand(sandbox, Status.STOPPING, "stop")
    SandboxEvent.objects.create(
        sandbox=sandbox,
        team=team,
        actor_kind="scheduler",
        actor_label="scheduler",
        action="reconcile",
        outcome=Outcome.REQUESTED,
        created_at=timezone.now() - timedelta(seconds=100),
    )
    assert run_sweep().actions["stuck"] == 1
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING  # what the provider shows
    assert "stop did not complete after 1 attempt(s)" in sandbox.last_error
    last = reconcile_events(sandbox)[-1]
    assert (last["outcome"], last["resolution"]) == (Outcome.FAILED, "gave_up")


def test_a_start_that_never_made_an_instance_ends_failed_after_its_attempts(
    memory_backend, team, actor, settings
):
    settings.SANDBOX_RECONCILE_MAX_ATTEMPTS = 1
    memory_backend.faults["create"] = [Unavailable("API down")] * 3
    sandbox = create(team, actor)  # fails and rolls back; pretend the worker died instead
    strand(sandbox, Status.STARTING, "start")
    assert run_sweep().actions["stuck"] == 1  # retried: create fails, the start fails
    sandbox.refresh_from_db()
    assert sandbox.status == Status.FAILED
    assert memory_backend.instances == {}


def test_an_unlistable_provider_is_never_given_up_on(memory_backend, team, actor, settings):
    settings.SANDBOX_RECONCILE_MAX_ATTEMPTS = 1
    sandbox = create(team, actor)
    strand(sandbox, Status.STOPPING, "stop")
    SandboxEvent.objects.create(
        sandbox=sandbox,
        team=team,
        actor_kind="scheduler",
        actor_label="scheduler",
        action="reconcile",
        outcome=Outcome.REQUESTED,
        created_at=timezone.now() - timedelta(seconds=100),
    )
    memory_backend.faults["list"] = [Unavailable("API down")]
    report = run_sweep()
    assert report.unavailable == {"memory": "API down"}
    assert report.actions["stuck"] == 0
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.STOPPING


# --- drift ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "provider_status", "after"),
    [
        (Status.RUNNING, InstanceStatus.STOPPED, Status.STOPPED),
        (Status.RUNNING, InstanceStatus.PAUSED, Status.PAUSED),
        (Status.RUNNING, InstanceStatus.HIBERNATED, Status.HIBERNATED),
        (Status.RUNNING, InstanceStatus.ERROR, Status.FAILED),
        (Status.PAUSED, InstanceStatus.RUNNING, Status.RUNNING),
        (Status.STOPPED, InstanceStatus.RUNNING, Status.RUNNING),
        (Status.HIBERNATED, InstanceStatus.STOPPED, Status.STOPPED),
    ],
)
def test_drift_is_recorded_and_the_row_corrected(
    memory_backend, team, actor, before, provider_status, after
):
    sandbox = create(team, actor)
    Sandbox.objects.filter(pk=sandbox.pk).update(
        status=before, status_changed_at=timezone.now() - timedelta(minutes=5)
    )
    memory_backend.instances[sandbox.provider_ref].status = provider_status
    assert run_sweep().actions["drift"] == 1
    sandbox.refresh_from_db()
    assert sandbox.status == after
    event = SandboxEvent.objects.get(sandbox=sandbox, action="drift")
    assert (event.actor_kind, event.from_status, event.to_status) == ("scheduler", before, after)
    assert event.data["provider_status"] == provider_status
    assert run_sweep().actions["drift"] == 0


def test_a_row_changed_after_the_list_was_taken_is_not_judged_by_it(memory_backend, team, actor):
    sandbox = create(team, actor)
    memory_backend.instances[sandbox.provider_ref].status = InstanceStatus.STOPPED
    inventory = take_inventory()
    # A person's action settles after the list was taken.
    Sandbox.objects.filter(pk=sandbox.pk).update(status_changed_at=timezone.now())
    rows = [r for r in reconcile.live_rows() if r.pk == sandbox.pk]
    assert reconcile.correct_drift(rows=rows, inventory=inventory, limit=10) == 0
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.RUNNING


def test_a_vanished_instance_deletes_its_sandbox(memory_backend, team, actor):
    sandbox = create(team, actor)
    Sandbox.objects.filter(pk=sandbox.pk).update(
        status_changed_at=timezone.now() - timedelta(minutes=5)
    )
    memory_backend.instances.clear()  # deleted in the provider's own UI
    assert run_sweep().actions["drift"] == 1
    sandbox.refresh_from_db()
    assert sandbox.status == Status.DELETED
    drift = SandboxEvent.objects.get(sandbox=sandbox, action="drift")
    assert (drift.to_status, drift.data["provider_status"]) == ("deleting", "absent")
    delete = SandboxEvent.objects.get(sandbox=sandbox, action="delete", outcome="requested")
    assert (delete.actor_kind, delete.data["reason"]) == ("scheduler", "drift")


def test_an_instance_missing_from_a_list_but_still_there_is_kept(memory_backend, team, actor):
    sandbox = create(team, actor)
    Sandbox.objects.filter(pk=sandbox.pk).update(
        status_changed_at=timezone.now() - timedelta(minutes=5)
    )
    inventory = take_inventory()
    inventory.providers["memory"].by_ref.clear()  # a list taken mid-change
    rows = reconcile.live_rows()
    assert reconcile.correct_drift(rows=rows, inventory=inventory, limit=10) == 0
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.RUNNING
    assert not SandboxEvent.objects.filter(action="drift").exists()


# --- snapshot versions -----------------------------------------------------------------------


def test_a_stuck_snapshot_capture_is_enqueued_again_then_given_up(
    memory_backend, team, actor, settings
):
    from sandboxes.models import Snapshot, SnapshotStatus
    from sandboxes.services import snapshots

    settings.SANDBOX_RECONCILE_MAX_ATTEMPTS = 1
    sandbox = create(team, actor)
    version = snapshots.take_snapshot(sandbox=sandbox, actor=actor)
    # The worker died holding the capture: back to creating, lease expired, quiet since.
    past = timezone.now() - timedelta(seconds=120)
    Snapshot.objects.filter(pk=version.pk).update(
        status=SnapshotStatus.CREATING, lease_token="dead", lease_expires_at=past, updated_at=past
    )
    assert run_sweep().actions["snapshots"] == 1
    version.refresh_from_db()
    assert version.status == SnapshotStatus.READY  # captured by the retried task
    retried = SandboxEvent.objects.get(snapshot=version, action="reconcile")
    assert (retried.actor_kind, retried.data["resolution"]) == ("scheduler", "retried")

    Snapshot.objects.filter(pk=version.pk).update(
        status=SnapshotStatus.DELETING, lease_token="dead", lease_expires_at=past, updated_at=past
    )
    SandboxEvent.objects.create(
        snapshot=version,
        team=team,
        actor_kind="scheduler",
        actor_label="scheduler",
        action="reconcile",
        outcome=Outcome.REQUESTED,
        data={"status": "deleting"},
    )
    assert run_sweep().actions["snapshots"] == 1  # out of attempts: back to ready
    version.refresh_from_db()
    assert version.status == SnapshotStatus.READY
    assert version.error == "the deletion did not complete after 1 attempt(s)"
