"""Orphan collection in detail (in-memory provider)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from providers.base import InstanceSpec
from providers.errors import OperationFailed
from sandboxes.models import Outcome, Sandbox, SandboxEvent
from sandboxes.services import lifecycle, orphans
from sandboxes.services.actors import Actor
from sandboxes.services.backends import get_provider
from sandboxes.services.sweep import run_sweep
from sandboxes.states import Status

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def actor(member) -> Actor:
    return Actor.for_user(member)


@pytest.fixture(autouse=True)
def no_grace(settings):
    settings.SANDBOX_ORPHAN_GRACE_SECONDS = 0
    settings.SANDBOX_ORPHAN_POLICY = "delete"


def create(team, actor, **kwargs) -> Sandbox:
    sandbox = lifecycle.create_sandbox(team=team, actor=actor, preset_id="1vcpu_1gb_8gb", **kwargs)
    sandbox.refresh_from_db()
    return sandbox


def plant(sandbox_id: str, team: str = "alpha", snapshot_id: str = "memory_1vcpu_1gb_8gb_v1"):
    """An instance made behind the control plane's back, carrying our marker."""
    spec = InstanceSpec(
        sandbox_id=sandbox_id, preset_id="1vcpu_1gb_8gb", vcpus=1, memory_mb=1024, disk_gb=8
    )
    metadata = {
        "sandbox_id": sandbox_id,
        "team": team,
        "preset": "1vcpu_1gb_8gb",
        "snapshot_id": snapshot_id,
    }
    return get_provider("memory").create(spec, "base", metadata)


def found(ref: str) -> SandboxEvent:
    return SandboxEvent.objects.get(action="orphan_found", data__ref=ref)


def test_an_instance_of_a_deleted_sandbox_is_an_orphan(memory_backend, team, actor):
    sandbox = create(team, actor)
    lifecycle.delete_sandbox(sandbox=sandbox, actor=actor)
    ghost = plant(sandbox.pk)  # e.g. restored from a provider-side backup
    run_sweep()
    event = found(ghost.id)
    assert (event.sandbox_id, event.data["reason"]) == (sandbox.pk, "deleted_row")
    assert ghost.id not in memory_backend.instances


def test_a_duplicate_of_a_running_sandbox_is_an_orphan_and_the_owned_one_stays(
    memory_backend, team, actor
):
    sandbox = create(team, actor)
    assert plant(sandbox.pk).id == sandbox.provider_ref  # create is idempotent per id...
    # ...but a back end can still end up with two (a retried clone on another node).
    duplicate = plant("sbx-tobedupe01")
    memory_backend.instances[duplicate.id].metadata["sandbox_id"] = sandbox.pk
    run_sweep()
    assert found(duplicate.id).data["reason"] == "duplicate"
    assert set(memory_backend.instances) == {sandbox.provider_ref}
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.RUNNING


def test_a_failed_sandbox_that_owns_its_instance_is_left_to_the_failed_cleanup(
    memory_backend, team, actor
):
    memory_backend.faults["start"] = [OperationFailed("boot failed")]
    memory_backend.faults["delete"] = [OperationFailed("locked")]
    sandbox = create(team, actor)
    assert sandbox.status == Status.FAILED
    assert run_sweep().actions["orphans"] == 0
    assert sandbox.provider_ref in memory_backend.instances
    assert not SandboxEvent.objects.filter(action="orphan_found").exists()


def test_an_instance_of_a_starting_sandbox_is_never_judged(memory_backend, team, actor):
    sandbox = create(team, actor)
    Sandbox.objects.filter(pk=sandbox.pk).update(status=Status.STARTING, provider_ref="")
    assert run_sweep().actions["orphans"] == 0
    assert sandbox.provider_ref in memory_backend.instances


def test_keep_only_reports(memory_backend, team, settings):
    settings.SANDBOX_ORPHAN_POLICY = "keep"
    ghost = plant("sbx-keepme0001")
    run_sweep()
    run_sweep()
    assert found(ghost.id).data["policy"] == "keep"
    assert ghost.id in memory_backend.instances
    assert not SandboxEvent.objects.filter(action="orphan_delete").exists()


def test_adoption_that_cannot_rebuild_the_row_keeps_the_instance_and_says_so_once(
    memory_backend, team, settings
):
    settings.SANDBOX_ORPHAN_POLICY = "adopt"
    ghost = plant("sbx-nosuchteam", team="gone-team")
    run_sweep()
    run_sweep()
    failed = SandboxEvent.objects.filter(action="orphan_adopt", outcome=Outcome.FAILED)
    assert failed.count() == 1
    assert "no team 'gone-team'" in failed.get().message
    assert ghost.id in memory_backend.instances
    assert not Sandbox.objects.filter(pk="sbx-nosuchteam").exists()


def test_adopt_deletes_what_is_not_a_lost_row(memory_backend, team, actor, settings):
    settings.SANDBOX_ORPHAN_POLICY = "adopt"
    sandbox = create(team, actor)
    lifecycle.delete_sandbox(sandbox=sandbox, actor=actor)
    ghost = plant(sandbox.pk)
    run_sweep()
    assert ghost.id not in memory_backend.instances
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.DELETED


def test_a_failed_removal_is_retried_by_a_later_sweep(memory_backend, team, settings):
    settings.SANDBOX_STUCK_SECONDS = 60
    ghost = plant("sbx-stubborn01")
    memory_backend.faults["delete"] = [OperationFailed("locked")]
    run_sweep()
    assert ghost.id in memory_backend.instances
    outcomes = list(
        SandboxEvent.objects.filter(action="orphan_delete").order_by("id").values_list("outcome")
    )
    assert outcomes == [(Outcome.REQUESTED,), (Outcome.FAILED,)]
    run_sweep()  # too soon to ask again
    assert SandboxEvent.objects.filter(action="orphan_delete").count() == 2
    run_sweep(now=timezone.now() + timedelta(seconds=61))
    assert ghost.id not in memory_backend.instances


def test_removal_judges_again_and_spares_an_instance_that_found_an_owner(
    memory_backend, team, actor
):
    ghost = plant("sbx-adoptedlat")
    # Between the sweep's judgement and the task, the row came back (adopted, restored).
    Sandbox.objects.create(
        id="sbx-adoptedlat",
        team=team,
        provider="memory",
        preset_id="1vcpu_1gb_8gb",
        vcpus=1,
        memory_mb=1024,
        disk_gb=8,
        provider_ref=ghost.id,
        status=Status.RUNNING,
    )
    orphans.remove_orphan(provider="memory", ref=ghost.id, sandbox_id="sbx-adoptedlat")
    assert ghost.id in memory_backend.instances
    # And an instance that no longer carries the judged sandbox id is not touched either.
    orphans.remove_orphan(provider="memory", ref=ghost.id, sandbox_id="sbx-someoneelse")
    assert ghost.id in memory_backend.instances


def test_a_sandbox_newer_than_the_rows_read_is_not_an_orphan(memory_backend, team, actor):
    """The sweep read its rows, then a sandbox started: its instance has an owner."""
    from sandboxes.services.inventory import take_inventory

    stale_rows: list = []  # read before the sandbox existed
    sandbox = create(team, actor)
    inventory = take_inventory()
    assert orphans.find_orphans(rows=stale_rows, inventory=inventory) == []
    orphans.collect(rows=stale_rows, inventory=inventory, now=timezone.now(), limit=10)
    assert sandbox.provider_ref in memory_backend.instances
    assert not SandboxEvent.objects.filter(action__startswith="orphan").exists()
