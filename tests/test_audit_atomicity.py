"""No status change without its audit row: the change and its event commit together.

Each test makes the audit write fail right after the status update (same code path, the
event's INSERT raises) and checks that neither is in the database; then runs the same path
again without the failure and finds both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from providers.base import InstanceStatus
from providers.errors import OperationFailed
from sandboxes.models import Outcome, Sandbox, SandboxEvent, Snapshot, SnapshotStatus
from sandboxes.services import lifecycle, snapshots
from sandboxes.services.actors import Actor
from sandboxes.services.sweep import run_sweep
from sandboxes.states import Status

pytestmark = pytest.mark.django_db(transaction=True)


class AuditWriteFailed(Exception):
    pass


@contextmanager
def failing_events(action: str, *, outcomes: tuple[str, ...] = ()) -> Iterator[None]:
    """Every ``action`` event (of ``outcomes``, if given) fails to be written, as a crash
    between the status update and the audit INSERT would leave it."""
    original = SandboxEvent.save

    def save(self, *args, **kwargs):
        if self.action == action and (not outcomes or self.outcome in outcomes):
            raise AuditWriteFailed(action)
        return original(self, *args, **kwargs)

    with mock.patch.object(SandboxEvent, "save", save):
        yield


WORKER = (Outcome.SUCCEEDED, Outcome.FAILED)


@pytest.fixture
def actor(member) -> Actor:
    return Actor.for_user(member)


def requested(team, actor, *, operation: str = "", sandbox: Sandbox | None = None) -> Sandbox:
    """A sandbox whose operation was requested but not yet carried out by a worker."""
    with mock.patch.object(lifecycle, "_enqueue"):
        if sandbox is None:
            sandbox = lifecycle.create_sandbox(team=team, actor=actor, preset_id="1vcpu_1gb_8gb")
        else:
            getattr(lifecycle, f"{operation}_sandbox")(sandbox=sandbox, actor=actor)
    sandbox.refresh_from_db()
    return sandbox


def running(team, actor) -> Sandbox:
    sandbox = lifecycle.create_sandbox(team=team, actor=actor, preset_id="1vcpu_1gb_8gb")
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING
    return sandbox


def settled_events(sandbox: Sandbox, action: str) -> list[tuple[str, str, str]]:
    return list(
        SandboxEvent.objects.filter(sandbox=sandbox, action=action, outcome__in=WORKER)
        .order_by("id")
        .values_list("outcome", "from_status", "to_status")
    )


def assert_neither(sandbox: Sandbox, status: Status, action: str) -> None:
    row = Sandbox.objects.get(pk=sandbox.pk)
    assert row.status == status  # the status change was rolled back with its event
    assert row.lease_token == ""  # and the lease handed back for a retry
    assert settled_events(sandbox, action) == []


def assert_both(sandbox: Sandbox, action: str, event: tuple[str, str, str]) -> None:
    row = Sandbox.objects.get(pk=sandbox.pk)
    assert row.status == event[2]
    assert settled_events(sandbox, action) == [event]


def test_a_start_settles_with_its_event_or_not_at_all(memory_backend, team, actor):
    sandbox = requested(team, actor)
    assert sandbox.status == Status.STARTING
    with failing_events("start", outcomes=WORKER), pytest.raises(AuditWriteFailed):
        lifecycle.perform_operation(sandbox_id=sandbox.pk)
    assert_neither(sandbox, Status.STARTING, "start")
    lifecycle.perform_operation(sandbox_id=sandbox.pk)  # what the reconciler would do
    assert_both(sandbox, "start", (Outcome.SUCCEEDED, Status.STARTING, Status.RUNNING))


def test_a_failed_start_settles_with_its_event_or_not_at_all(memory_backend, team, actor):
    sandbox = requested(team, actor)
    memory_backend.faults["start"] = [OperationFailed("no boot")]
    with failing_events("start", outcomes=WORKER), pytest.raises(AuditWriteFailed):
        lifecycle.perform_operation(sandbox_id=sandbox.pk)
    assert_neither(sandbox, Status.STARTING, "start")
    memory_backend.faults["start"] = [OperationFailed("no boot")]
    lifecycle.perform_operation(sandbox_id=sandbox.pk)
    assert_both(sandbox, "start", (Outcome.FAILED, Status.STARTING, Status.FAILED))


@pytest.mark.parametrize(
    ("operation", "transitional", "final"),
    [
        ("pause", Status.PAUSING, Status.PAUSED),
        ("stop", Status.STOPPING, Status.STOPPED),
        ("delete", Status.DELETING, Status.DELETED),
    ],
)
def test_an_operation_settles_with_its_event_or_not_at_all(
    memory_backend, team, actor, operation, transitional, final
):
    sandbox = requested(team, actor, operation=operation, sandbox=running(team, actor))
    assert sandbox.status == transitional
    with failing_events(operation, outcomes=WORKER), pytest.raises(AuditWriteFailed):
        lifecycle.perform_operation(sandbox_id=sandbox.pk)
    assert_neither(sandbox, transitional, operation)
    lifecycle.perform_operation(sandbox_id=sandbox.pk)
    assert_both(sandbox, operation, (Outcome.SUCCEEDED, transitional, final))


def test_a_failed_operation_settles_with_its_event_or_not_at_all(memory_backend, team, actor):
    sandbox = requested(team, actor, operation="pause", sandbox=running(team, actor))
    memory_backend.faults["pause"] = [OperationFailed("freezer busy")]
    with failing_events("pause", outcomes=WORKER), pytest.raises(AuditWriteFailed):
        lifecycle.perform_operation(sandbox_id=sandbox.pk)
    assert_neither(sandbox, Status.PAUSING, "pause")
    assert Sandbox.objects.get(pk=sandbox.pk).last_error == ""
    memory_backend.faults["pause"] = [OperationFailed("freezer busy")]
    lifecycle.perform_operation(sandbox_id=sandbox.pk)
    assert_both(sandbox, "pause", (Outcome.FAILED, Status.PAUSING, Status.RUNNING))


def test_a_failed_delete_keeps_its_reason_with_its_event_or_neither(memory_backend, team, actor):
    sandbox = requested(team, actor, operation="delete", sandbox=running(team, actor))
    memory_backend.faults["delete"] = [OperationFailed("storage busy")]
    with failing_events("delete", outcomes=WORKER), pytest.raises(AuditWriteFailed):
        lifecycle.perform_operation(sandbox_id=sandbox.pk)
    assert_neither(sandbox, Status.DELETING, "delete")
    assert Sandbox.objects.get(pk=sandbox.pk).last_error == ""


@pytest.fixture
def stuck(settings):
    settings.SANDBOX_STUCK_SECONDS = 60
    settings.SANDBOX_RECONCILE_MAX_ATTEMPTS = 3


def strand(sandbox: Sandbox, status: Status, operation: str) -> None:
    past = timezone.now() - timedelta(seconds=120)
    Sandbox.objects.filter(pk=sandbox.pk).update(
        status=status,
        operation=operation,
        status_changed_at=past,
        lease_token="dead",
        lease_expires_at=past,
    )


def test_the_reconciler_settles_with_its_event_or_not_at_all(memory_backend, team, actor, stuck):
    sandbox = running(team, actor)
    memory_backend.instances[sandbox.provider_ref].status = InstanceStatus.PAUSED
    strand(sandbox, Status.PAUSING, "pause")  # the worker paused, then died
    with failing_events("reconcile"):
        report = run_sweep()
    assert "AuditWriteFailed" in report.errors["stuck"]
    assert_neither(sandbox, Status.PAUSING, "reconcile")
    assert run_sweep().actions["stuck"] == 1
    assert_both(sandbox, "reconcile", (Outcome.SUCCEEDED, Status.PAUSING, Status.PAUSED))


def test_drift_is_corrected_with_its_event_or_not_at_all(memory_backend, team, actor):
    sandbox = running(team, actor)
    Sandbox.objects.filter(pk=sandbox.pk).update(
        status_changed_at=timezone.now() - timedelta(minutes=5)
    )
    memory_backend.instances[sandbox.provider_ref].status = InstanceStatus.STOPPED
    with failing_events("drift"):
        report = run_sweep()
    assert "AuditWriteFailed" in report.errors["drift"]
    assert_neither(sandbox, Status.RUNNING, "drift")
    assert run_sweep().actions["drift"] == 1
    assert_both(sandbox, "drift", (Outcome.SUCCEEDED, Status.RUNNING, Status.STOPPED))


def test_a_snapshot_capture_settles_with_its_event_or_not_at_all(memory_backend, team, actor):
    sandbox = running(team, actor)
    with mock.patch.object(snapshots, "enqueue_on_commit"):
        version = snapshots.take_snapshot(sandbox=sandbox, actor=actor)
    with failing_events("snapshot", outcomes=WORKER), pytest.raises(AuditWriteFailed):
        snapshots.perform_snapshot_operation(snapshot_pk=version.pk)
    row = Snapshot.objects.get(pk=version.pk)
    assert (row.status, row.provider_ref) == (SnapshotStatus.CREATING, "")
    assert not SandboxEvent.objects.filter(snapshot=version, outcome__in=WORKER).exists()
    assert row.lease_token == ""
    snapshots.perform_snapshot_operation(snapshot_pk=version.pk)
    assert Snapshot.objects.get(pk=version.pk).status == SnapshotStatus.READY
    assert SandboxEvent.objects.filter(snapshot=version, outcome=Outcome.SUCCEEDED).count() == 1
