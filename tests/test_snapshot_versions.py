"""Snapshot versions: numbering, the one-active constraint, taking, activating, deleting."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from providers.errors import Conflict as ProviderConflict
from providers.errors import OperationFailed
from sandboxes.models import ActiveSnapshot, Outcome, SandboxEvent, Snapshot, SnapshotStatus
from sandboxes.services import lifecycle
from sandboxes.services.actors import Actor
from sandboxes.services.errors import CapabilityMissing, Conflict, InvalidInput, NotAllowed
from sandboxes.services.snapshots import (
    activate_snapshot,
    active_snapshot,
    delete_snapshot,
    import_snapshot,
    take_snapshot,
)
from sandboxes.states import Status

pytestmark = pytest.mark.django_db(transaction=True)
SYSTEM = Actor.system()


@pytest.fixture
def actor(member) -> Actor:
    return Actor.for_user(member)


def running(team, actor, **kwargs):
    kwargs.setdefault("preset_id", "1vcpu_1gb_8gb")
    sandbox = lifecycle.create_sandbox(team=team, actor=actor, **kwargs)
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING
    return sandbox


def test_the_database_refuses_a_second_active_version_in_one_scope(memory_backend, team):
    v1 = Snapshot.objects.get(snapshot_id="memory_1vcpu_1gb_8gb_v1")
    v2 = import_snapshot(provider="memory", preset_id="1vcpu_1gb_8gb", ref="base", actor=SYSTEM)
    with pytest.raises(IntegrityError), transaction.atomic():
        ActiveSnapshot.objects.create(
            team=None, provider="memory", preset_id="1vcpu_1gb_8gb", snapshot=v2
        )
    # Per team is a different scope; a second pointer for that team is refused again.
    ActiveSnapshot.objects.create(
        team=team, provider="memory", preset_id="1vcpu_1gb_8gb", snapshot=v2
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        ActiveSnapshot.objects.create(
            team=team, provider="memory", preset_id="1vcpu_1gb_8gb", snapshot=v1
        )


def test_the_database_refuses_a_duplicate_version_number(memory_backend):
    v1 = Snapshot.objects.get(snapshot_id="memory_1vcpu_1gb_8gb_v1")
    with pytest.raises(IntegrityError), transaction.atomic():
        Snapshot.objects.create(snapshot_id="other", provider="memory", preset=v1.preset, version=1)


def test_versions_count_up_and_are_never_reused(memory_backend, team, team_admin):
    v2 = import_snapshot(provider="memory", preset_id="1vcpu_1gb_8gb", ref="base", actor=SYSTEM)
    assert v2.snapshot_id == "memory_1vcpu_1gb_8gb_v2"
    delete_snapshot(snapshot=v2, actor=SYSTEM)
    assert Snapshot.objects.get(pk=v2.pk).status == SnapshotStatus.DELETED
    v3 = import_snapshot(provider="memory", preset_id="1vcpu_1gb_8gb", ref="base", actor=SYSTEM)
    assert v3.version == 3


def test_taking_a_snapshot_makes_the_next_version_with_the_sandboxs_files(
    memory_backend, team, actor
):
    sandbox = running(team, actor)
    from sandboxes.services.interactive import exec_command

    exec_command(sandbox=sandbox, actor=actor, command="echo from-v2 > marker.txt")
    snapshot = take_snapshot(sandbox=sandbox, actor=actor, label="with marker")
    snapshot.refresh_from_db()
    assert snapshot.snapshot_id == "memory_1vcpu_1gb_8gb_v2"
    assert snapshot.status == SnapshotStatus.READY
    assert snapshot.team == team
    assert snapshot.parent.snapshot_id == "memory_1vcpu_1gb_8gb_v1"
    assert snapshot.source_sandbox == sandbox
    assert snapshot.created_by == actor.user
    assert snapshot.size_bytes > 0
    child = running(team, actor, snapshot_id="memory_1vcpu_1gb_8gb_v2")
    result = exec_command(sandbox=child, actor=actor, command="cat marker.txt")
    assert result.stdout == "from-v2\n"
    assert child.snapshot == snapshot
    assert [e.outcome for e in SandboxEvent.objects.filter(snapshot=snapshot).order_by("id")] == [
        Outcome.REQUESTED,
        Outcome.SUCCEEDED,
    ]


def test_the_ports_an_image_declares_are_services_of_its_sandboxes_and_of_its_children(
    memory_backend, team, actor
):
    """An OCI image's ExposedPorts: each sandbox from it gets port-<n> at its first start
    (beside an environment's own services, never twice for one port), and a snapshot
    taken from such a sandbox still declares them."""
    image = import_snapshot(provider="memory", preset_id="1vcpu_1gb_8gb", ref="base", actor=SYSTEM)
    Snapshot.objects.filter(pk=image.pk).update(exposed_ports=[3000, 8080])
    sandbox = running(team, actor, snapshot_id=image.snapshot_id)
    sandbox.refresh_from_db()
    assert sandbox.setup_status == "succeeded", sandbox.setup_error
    assert sorted((s["name"], s["port"]) for s in sandbox.services) == [
        ("port-3000", 3000),
        ("port-8080", 8080),
    ]
    child = take_snapshot(sandbox=sandbox, actor=actor)
    child.refresh_from_db()
    assert child.exposed_ports == [3000, 8080]
    plain = running(team, actor)  # a snapshot that declares nothing: no setup, no services
    assert (plain.setup_status, plain.services) == ("", [])


def test_a_failed_snapshot_is_marked_failed_with_the_reason(memory_backend, team, actor):
    sandbox = running(team, actor)
    memory_backend.faults["snapshot"] = [OperationFailed("disk full")]
    snapshot = take_snapshot(sandbox=sandbox, actor=actor)
    snapshot.refresh_from_db()
    assert snapshot.status == SnapshotStatus.FAILED
    assert snapshot.error == "snapshot failed: disk full"
    with pytest.raises(InvalidInput):
        running(team, actor, snapshot_id=snapshot.snapshot_id)


def test_snapshots_need_the_capability(memory_backend, team, actor):
    memory_backend.disabled.add("supports_snapshots")
    sandbox = running(team, actor)
    with pytest.raises(CapabilityMissing):
        take_snapshot(sandbox=sandbox, actor=actor)
    assert Snapshot.objects.count() == 1


def test_a_teams_version_is_invisible_to_other_teams(
    memory_backend, team, actor, outsider, other_team
):
    sandbox = running(team, actor)
    snapshot = take_snapshot(sandbox=sandbox, actor=actor)
    with pytest.raises(InvalidInput):
        running(other_team, Actor.for_user(outsider), snapshot_id=snapshot.snapshot_id)
    with pytest.raises((NotAllowed, InvalidInput)):
        activate_snapshot(snapshot=snapshot, actor=Actor.for_user(outsider), team=other_team)


def test_activating_a_version_changes_what_new_sandboxes_start_from(
    memory_backend, team, actor, team_admin
):
    snapshot = take_snapshot(sandbox=running(team, actor), actor=actor)
    with pytest.raises(NotAllowed):  # members may snapshot, only admins activate
        activate_snapshot(snapshot=snapshot, actor=actor, team=team)
    activate_snapshot(snapshot=snapshot, actor=Actor.for_user(team_admin), team=team)
    assert active_snapshot(team=team, provider="memory", preset_id="1vcpu_1gb_8gb") == snapshot
    assert running(team, actor).snapshot == snapshot
    assert running(team, actor, snapshot_id="memory_1vcpu_1gb_8gb").snapshot == snapshot
    # Roll back to the shared v1 for this team.
    v1 = Snapshot.objects.get(snapshot_id="memory_1vcpu_1gb_8gb_v1")
    activate_snapshot(snapshot=v1, actor=Actor.for_user(team_admin), team=team)
    assert running(team, actor).snapshot == v1


def test_a_version_in_use_or_active_cannot_be_deleted(memory_backend, team, actor, team_admin):
    admin = Actor.for_user(team_admin)
    snapshot = take_snapshot(sandbox=running(team, actor), actor=actor)
    child = running(team, actor, snapshot_id=snapshot.snapshot_id)
    with pytest.raises(Conflict, match=child.pk):
        delete_snapshot(snapshot=snapshot, actor=admin)
    lifecycle.delete_sandbox(sandbox=child, actor=actor)
    activate_snapshot(snapshot=snapshot, actor=admin, team=team)
    with pytest.raises(Conflict, match="active version for alpha"):
        delete_snapshot(snapshot=snapshot, actor=admin)
    v1 = Snapshot.objects.get(snapshot_id="memory_1vcpu_1gb_8gb_v1")
    activate_snapshot(snapshot=v1, actor=admin, team=team)
    deleted = delete_snapshot(snapshot=snapshot, actor=admin)
    assert deleted.status == SnapshotStatus.DELETED
    assert snapshot.provider_ref not in memory_backend.snapshots


def test_a_provider_refusal_to_delete_keeps_the_version(memory_backend, team, actor, team_admin):
    snapshot = take_snapshot(sandbox=running(team, actor), actor=actor)
    snapshot.refresh_from_db()
    memory_backend.faults["delete_snapshot"] = [ProviderConflict("a linked clone uses it")]
    result = delete_snapshot(snapshot=snapshot, actor=Actor.for_user(team_admin))
    assert result.status == SnapshotStatus.READY
    assert "a linked clone uses it" in result.error
    assert snapshot.provider_ref in memory_backend.snapshots


def test_only_operators_manage_shared_versions(memory_backend, team, team_admin):
    v1 = Snapshot.objects.get(snapshot_id="memory_1vcpu_1gb_8gb_v1")
    with pytest.raises(NotAllowed):
        delete_snapshot(snapshot=v1, actor=Actor.for_user(team_admin))
    with pytest.raises(NotAllowed):
        activate_snapshot(snapshot=v1, actor=Actor.for_user(team_admin), team=None)
    with pytest.raises(NotAllowed):
        import_snapshot(
            provider="memory", preset_id="1vcpu_1gb_8gb", ref="x", actor=Actor.for_user(team_admin)
        )
