"""The lifecycle services against the in-memory provider, with tasks run on commit."""

from __future__ import annotations

import threading

import pytest

from providers.errors import Conflict, OperationFailed, Unavailable
from sandboxes.models import Outcome, Sandbox, SandboxEvent
from sandboxes.services import lifecycle, transitions
from sandboxes.services.actors import Actor
from sandboxes.services.errors import (
    CapabilityMissing,
    IdempotencyKeyReused,
    IllegalTransition,
    InvalidInput,
    NotAllowed,
    QuotaExceeded,
)
from sandboxes.states import Status

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def actor(member) -> Actor:
    return Actor.for_user(member)


def create(team, actor, **kwargs) -> Sandbox:
    kwargs.setdefault("preset_id", "1vcpu_1gb_8gb")
    sandbox = lifecycle.create_sandbox(team=team, actor=actor, **kwargs)
    sandbox.refresh_from_db()
    return sandbox


def actions(sandbox: Sandbox) -> list[tuple[str, str, str, str]]:
    return [
        (e.action, e.outcome, e.from_status, e.to_status)
        for e in SandboxEvent.objects.filter(sandbox=sandbox).order_by("id")
    ]


def test_create_starts_a_sandbox_and_audits_it(memory_backend, team, actor):
    sandbox = create(team, actor, name="dev", metadata={"ticket": "42"})
    assert sandbox.status == Status.RUNNING
    assert sandbox.provider == "memory"
    assert sandbox.snapshot.snapshot_id == "memory_1vcpu_1gb_8gb_v1"
    assert sandbox.started_at is not None
    instance = memory_backend.instances[sandbox.provider_ref]
    assert instance.metadata == {
        "sandbox_id": sandbox.pk,
        "team": "alpha",
        "preset": "1vcpu_1gb_8gb",
        "snapshot_id": "memory_1vcpu_1gb_8gb_v1",
    }
    assert actions(sandbox) == [
        ("create", Outcome.REQUESTED, "", "starting"),
        ("start", Outcome.SUCCEEDED, "starting", "running"),
    ]
    first = SandboxEvent.objects.filter(sandbox=sandbox).order_by("id").first()
    assert (first.actor_kind, first.actor_user, first.actor_label) == ("user", actor.user, "alice")


def test_ttl_sets_an_expiry_when_the_sandbox_starts(memory_backend, team, actor):
    sandbox = create(team, actor, ttl_seconds=600, ttl_action="delete")
    assert (sandbox.expires_at - sandbox.started_at).total_seconds() == 600
    assert sandbox.ttl_action == "delete"


@pytest.mark.parametrize(
    ("operation", "final"),
    [("pause", Status.PAUSED), ("hibernate", Status.HIBERNATED), ("stop", Status.STOPPED)],
)
def test_operations_move_the_provider_and_the_row_together(
    memory_backend, team, actor, operation, final
):
    sandbox = create(team, actor)
    getattr(lifecycle, f"{operation}_sandbox")(sandbox=sandbox, actor=actor)
    sandbox.refresh_from_db()
    assert sandbox.status == final
    assert memory_backend.instances[sandbox.provider_ref].status == str(final)
    assert actions(sandbox)[-2:] == [
        (operation, Outcome.REQUESTED, "running", sandbox_transitional(operation)),
        (operation, Outcome.SUCCEEDED, sandbox_transitional(operation), str(final)),
    ]
    back = lifecycle.start_sandbox if final == Status.STOPPED else lifecycle.resume_sandbox
    back(sandbox=sandbox, actor=actor)
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING
    assert memory_backend.instances[sandbox.provider_ref].status == "running"


def sandbox_transitional(operation: str) -> str:
    return str(lifecycle.OPERATIONS[operation].transitional)


def test_an_illegal_transition_is_refused_and_changes_nothing(memory_backend, team, actor):
    sandbox = create(team, actor)
    lifecycle.stop_sandbox(sandbox=sandbox, actor=actor)
    sandbox.refresh_from_db()
    before = Sandbox.objects.filter(pk=sandbox.pk).values().get()
    calls = len(memory_backend.calls)
    with pytest.raises(IllegalTransition) as refused:
        lifecycle.pause_sandbox(sandbox=sandbox, actor=actor)
    assert "cannot pause a sandbox that is stopped" in str(refused.value)
    assert Sandbox.objects.filter(pk=sandbox.pk).values().get() == before
    assert len(memory_backend.calls) == calls  # the provider was not asked
    assert actions(sandbox)[-1] == ("pause", Outcome.REFUSED, "stopped", "")


def test_a_deleted_sandbox_refuses_everything(memory_backend, team, actor):
    sandbox = create(team, actor)
    lifecycle.delete_sandbox(sandbox=sandbox, actor=actor)
    sandbox.refresh_from_db()
    assert sandbox.status == Status.DELETED
    assert sandbox.provider_ref == ""
    assert memory_backend.instances == {}
    for operation in ("start", "stop", "pause", "resume", "delete"):
        with pytest.raises(IllegalTransition):
            getattr(lifecycle, f"{operation}_sandbox")(sandbox=sandbox, actor=actor)


@pytest.mark.parametrize(
    ("step", "error"),
    [
        ("create", Unavailable("the API is down")),
        ("create.after", OperationFailed("clone task failed")),
        ("start", OperationFailed("the guest did not boot")),
    ],
)
def test_a_failed_start_leaves_nothing_behind(memory_backend, team, actor, step, error):
    memory_backend.faults.setdefault(step, []).append(error)
    sandbox = create(team, actor)
    assert sandbox.status == Status.FAILED
    assert sandbox.last_error == f"start failed: {error.message}"
    assert sandbox.provider_ref == ""
    assert memory_backend.instances == {}
    assert actions(sandbox)[-1] == ("start", Outcome.FAILED, "starting", "failed")


def test_a_failed_rollback_keeps_the_reference_for_garbage_collection(memory_backend, team, actor):
    memory_backend.faults["start"] = [OperationFailed("boot failed")]
    memory_backend.faults["delete"] = [OperationFailed("locked")]
    sandbox = create(team, actor)
    assert sandbox.status == Status.FAILED
    assert sandbox.provider_ref in memory_backend.instances
    assert "garbage collection will retry" in sandbox.last_error


def test_transient_provider_errors_are_retried(memory_backend, team, actor):
    memory_backend.faults["start"] = [Conflict("CT is locked")]
    sandbox = create(team, actor)
    assert sandbox.status == Status.RUNNING
    assert memory_backend.calls.count("start") == 2


def test_a_failed_pause_settles_on_what_the_provider_reports(memory_backend, team, actor):
    sandbox = create(team, actor)
    memory_backend.faults["pause"] = [OperationFailed("freezer busy")]
    lifecycle.pause_sandbox(sandbox=sandbox, actor=actor)
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING
    assert sandbox.last_error == "pause failed: freezer busy"
    assert sandbox.lease_token == ""


def test_a_failed_restart_keeps_the_instance_and_its_files(memory_backend, team, actor):
    sandbox = create(team, actor)
    ref = sandbox.provider_ref
    instance = memory_backend.instances[ref]
    lifecycle.stop_sandbox(sandbox=sandbox, actor=actor)
    memory_backend.faults["start"] = [OperationFailed("no free memory on the node")]
    lifecycle.start_sandbox(sandbox=Sandbox.objects.get(pk=sandbox.pk), actor=actor)
    sandbox.refresh_from_db()
    assert sandbox.status == Status.STOPPED  # what the provider shows; nothing deleted
    assert sandbox.provider_ref == ref
    assert memory_backend.instances[ref] is instance
    assert "delete" not in memory_backend.calls
    assert sandbox.last_error == "start failed: no free memory on the node"
    assert actions(sandbox)[-1] == ("start", Outcome.FAILED, "starting", "stopped")
    lifecycle.start_sandbox(sandbox=sandbox, actor=actor)  # and it can be started again
    sandbox.refresh_from_db()
    assert (sandbox.status, sandbox.provider_ref) == (Status.RUNNING, ref)


def test_an_unreadable_provider_leaves_the_operation_for_the_reconciler(
    memory_backend, team, actor
):
    """Never 'failed' on a guess: failed sandboxes that never ran are cleaned up."""
    sandbox = create(team, actor)
    memory_backend.faults["pause"] = [OperationFailed("freezer busy")]
    # The first read finds the instance; the look after the failed pause cannot.
    memory_backend.faults["get"] = [None, Unavailable("the API is down")]
    lifecycle.pause_sandbox(sandbox=sandbox, actor=actor)
    sandbox.refresh_from_db()
    assert sandbox.status == Status.PAUSING
    assert sandbox.last_error == "pause failed: freezer busy"
    assert sandbox.lease_token == ""
    assert sandbox.provider_ref in memory_backend.instances


def test_a_failed_delete_stays_deleting_with_the_reason(memory_backend, team, actor):
    sandbox = create(team, actor)
    memory_backend.faults["delete"] = [OperationFailed("storage busy")]
    lifecycle.delete_sandbox(sandbox=sandbox, actor=actor)
    sandbox.refresh_from_db()
    assert sandbox.status == Status.DELETING
    assert sandbox.last_error == "delete failed: storage busy"
    assert sandbox.lease_token == ""
    lifecycle.delete_sandbox(sandbox=sandbox, actor=actor)  # asking again retries
    sandbox.refresh_from_db()
    assert sandbox.status == Status.DELETED
    assert memory_backend.instances == {}


def test_missing_capability_is_refused_before_anything_changes(memory_backend, team, actor):
    memory_backend.disabled.add("supports_pause")
    sandbox = create(team, actor)
    with pytest.raises(CapabilityMissing) as refused:
        lifecycle.pause_sandbox(sandbox=sandbox, actor=actor)
    assert refused.value.capability == "supports_pause"
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING


def test_viewers_cannot_act(memory_backend, team, actor, viewer):
    sandbox = create(team, actor)
    with pytest.raises(NotAllowed):
        lifecycle.stop_sandbox(sandbox=sandbox, actor=Actor.for_user(viewer))
    with pytest.raises(NotAllowed):
        create(team, Actor.for_user(viewer))
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING


def test_another_teams_member_cannot_act(memory_backend, team, actor, outsider):
    sandbox = create(team, actor)
    with pytest.raises(NotAllowed):
        lifecycle.delete_sandbox(sandbox=sandbox, actor=Actor.for_user(outsider))
    with pytest.raises(NotAllowed):
        create(team, Actor.for_user(outsider))


@pytest.mark.parametrize(
    ("limits", "quota"),
    [
        ({"max_sandboxes": 1}, "max_sandboxes"),
        ({"max_vcpus": 1}, "max_vcpus"),
        ({"max_memory_mb": 1024}, "max_memory_mb"),
    ],
)
def test_quotas_refuse_the_sandbox_that_does_not_fit(memory_backend, team, actor, limits, quota):
    for field, value in limits.items():
        setattr(team, field, value)
    team.save()
    create(team, actor)
    with pytest.raises(QuotaExceeded) as refused:
        create(team, actor)
    assert refused.value.code == f"quota_{quota}"
    assert Sandbox.objects.filter(team=team).count() == 1
    assert len(memory_backend.instances) == 1


def test_deleted_and_failed_sandboxes_do_not_count_against_quotas(memory_backend, team, actor):
    team.max_sandboxes = 1
    team.save()
    memory_backend.faults["start"] = [OperationFailed("boom")]
    assert create(team, actor).status == Status.FAILED
    sandbox = create(team, actor)
    lifecycle.delete_sandbox(sandbox=sandbox, actor=actor)
    assert create(team, actor).status == Status.RUNNING


def test_quota_holds_under_concurrent_creates(memory_backend, team, actor):
    team.max_sandboxes = 2
    team.save()
    results: list[str] = []
    barrier = threading.Barrier(5)

    def attempt():
        barrier.wait()
        try:
            lifecycle.create_sandbox(team=team, actor=actor, preset_id="1vcpu_1gb_8gb")
            results.append("ok")
        except QuotaExceeded:
            results.append("quota")
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok", "ok", "quota", "quota", "quota"]
    assert Sandbox.objects.filter(team=team).count() == 2


def test_two_concurrent_transitions_let_exactly_one_win(memory_backend, team, actor):
    sandbox = create(team, actor)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def attempt(to: Status, operation: str):
        row = Sandbox.objects.get(pk=sandbox.pk)
        barrier.wait()
        try:
            transitions.request(
                row,
                action=operation,
                to=to,
                allowed_from={Status.RUNNING},
                actor=actor,
                operation=operation,
            )
            outcomes.append(operation)
        except IllegalTransition:
            outcomes.append("refused")
        finally:
            from django.db import connection

            connection.close()

    threads = [
        threading.Thread(target=attempt, args=(Status.PAUSING, "pause")),
        threading.Thread(target=attempt, args=(Status.STOPPING, "stop")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) in (["pause", "refused"], ["refused", "stop"])
    winner = next(o for o in outcomes if o != "refused")
    sandbox.refresh_from_db()
    assert sandbox.operation == winner
    requested = SandboxEvent.objects.filter(sandbox=sandbox, outcome=Outcome.REQUESTED)
    assert requested.filter(action__in=["pause", "stop"]).count() == 1


def test_a_duplicated_task_does_nothing(memory_backend, team, actor):
    sandbox = create(team, actor)
    events = SandboxEvent.objects.count()
    calls = len(memory_backend.calls)
    lifecycle.perform_operation(sandbox_id=sandbox.pk)
    assert SandboxEvent.objects.count() == events
    assert len(memory_backend.calls) == calls


def test_a_task_does_nothing_while_another_worker_holds_the_lease(memory_backend, team, actor):
    sandbox = create(team, actor)
    Sandbox.objects.filter(pk=sandbox.pk).update(status=Status.STOPPING, operation="stop")
    token = transitions.claim(sandbox.pk, status=Status.STOPPING)
    assert token is not None
    lifecycle.perform_operation(sandbox_id=sandbox.pk)
    assert memory_backend.instances[sandbox.provider_ref].status == "running"
    transitions.release(sandbox.pk, token=token)
    lifecycle.perform_operation(sandbox_id=sandbox.pk)
    assert memory_backend.instances[sandbox.provider_ref].status == "stopped"


def test_a_start_resumed_after_a_dead_worker_reuses_the_instance(memory_backend, team, actor):
    """The worker died after the provider made the instance but before it was recorded."""
    sandbox = create(team, actor)
    ref = sandbox.provider_ref
    lifecycle.stop_sandbox(sandbox=sandbox, actor=actor)
    # Simulate: a start was requested, the provider made/kept the instance, the worker
    # died holding the lease (expired) and never wrote the reference.
    Sandbox.objects.filter(pk=sandbox.pk).update(
        status=Status.STARTING, operation="start", provider_ref="", lease_token="dead"
    )
    lifecycle.perform_operation(sandbox_id=sandbox.pk)  # lease still held: nothing
    sandbox.refresh_from_db()
    assert sandbox.status == Status.STARTING
    Sandbox.objects.filter(pk=sandbox.pk).update(lease_expires_at="2000-01-01T00:00:00Z")
    lifecycle.perform_operation(sandbox_id=sandbox.pk)
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING
    assert sandbox.provider_ref == ref  # create found the instance by its sandbox id
    assert len(memory_backend.instances) == 1


def test_delete_while_starting_runs_after_the_start(memory_backend, team, actor):
    sandbox = create(team, actor)
    lifecycle.stop_sandbox(sandbox=sandbox, actor=actor)
    sandbox.refresh_from_db()
    # A start is in flight (its worker holds the lease) when someone deletes.
    Sandbox.objects.filter(pk=sandbox.pk).update(status=Status.STARTING, operation="start")
    token = transitions.claim(sandbox.pk, status=Status.STARTING)
    sandbox.refresh_from_db()
    lifecycle.delete_sandbox(sandbox=sandbox, actor=actor)
    sandbox.refresh_from_db()
    assert sandbox.status == Status.DELETING  # the delete waits for the lease
    assert sandbox.provider_ref in memory_backend.instances
    # The start worker finishes: its settle fails (status moved on) and it hands over.
    row = Sandbox.objects.select_related("snapshot", "team", "preset").get(pk=sandbox.pk)
    row.status, row.operation = Status.STARTING, "start"
    lifecycle._perform_start(row, token)
    lifecycle._hand_over(sandbox.pk, token, done=(Status.STARTING, "start"))
    sandbox.refresh_from_db()
    assert sandbox.status == Status.DELETED
    assert memory_backend.instances == {}


def test_idempotency_key_returns_the_first_sandbox(memory_backend, team, actor):
    first = create(team, actor, idempotency_key="retry-1")
    again = create(team, actor, idempotency_key="retry-1")
    assert again.pk == first.pk
    assert Sandbox.objects.filter(team=team).count() == 1
    other = create(team, actor, idempotency_key="retry-2")
    assert other.pk != first.pk


def test_a_key_replayed_with_other_values_is_refused(memory_backend, team, actor):
    first = create(team, actor, idempotency_key="retry-1", name="web", ttl_seconds=600)
    with pytest.raises(IdempotencyKeyReused) as refused:
        create(team, actor, idempotency_key="retry-1", name="api", ttl_seconds=600)
    assert list(refused.value.fields) == ["name"]
    assert Sandbox.objects.filter(team=team).count() == 1
    # The id without _vN names the version the first create resolved it to: the same ask.
    again = create(
        team,
        actor,
        idempotency_key="retry-1",
        name="web",
        ttl_seconds=600,
        snapshot_id="memory_1vcpu_1gb_8gb",
    )
    assert again.pk == first.pk


def test_a_replay_leaving_out_lifecycle_fields_ignores_changed_team_defaults(
    memory_backend, team, actor
):
    first = create(team, actor, idempotency_key="retry-1")
    team.idle_timeout_seconds = (first.idle_timeout_seconds or 0) + 60
    team.save()
    assert create(team, actor, idempotency_key="retry-1").pk == first.pk


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"metadata": {"k": 1}}, "metadata"),
        ({"metadata": {"bad key": "v"}}, "metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata"),
        ({"ttl_seconds": 0}, "ttl_seconds"),
        ({"ttl_seconds": "60"}, "ttl_seconds"),
        ({"ttl_action": "explode"}, "ttl_action"),
        ({"name": "x" * 101}, "name"),
        ({"preset_id": "3vcpu_1gb_8gb"}, "preset"),
        ({"snapshot_id": "memory_1vcpu_1gb_8gb_v9"}, "snapshot_id"),
        ({"snapshot_id": "not-an-id"}, "snapshot_id"),
        ({"provider": "nope"}, "provider"),
    ],
)
def test_bad_input_is_refused_and_creates_nothing(memory_backend, team, actor, kwargs, field):
    with pytest.raises(InvalidInput) as refused:
        create(team, actor, **kwargs)
    assert field in refused.value.fields
    assert not Sandbox.objects.exists()
    assert memory_backend.instances == {}
