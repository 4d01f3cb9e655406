"""Lifecycle defaults: cmux's (park after 20 h idle, delete after 14 days stopped or
paused) unless the team or the sandbox says otherwise, fixed on each sandbox at create."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from sandboxes.models import Sandbox, SandboxEvent
from sandboxes.services import lifecycle
from sandboxes.services.actors import Actor
from sandboxes.services.sweep import run_sweep
from sandboxes.states import Status
from tests.api.conftest import bearer_client

pytestmark = pytest.mark.django_db(transaction=True)
SMALL = "1vcpu_1gb_8gb"


def create(team, member, **kwargs) -> Sandbox:
    sandbox = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(member), preset_id=SMALL, **kwargs
    )
    sandbox.refresh_from_db()
    return sandbox


def test_a_new_sandbox_gets_the_site_defaults_then_the_teams(memory_backend, team, member):
    site = create(team, member)
    assert (site.idle_timeout_seconds, site.delete_parked_after_seconds) == (72000, 14 * 86400)
    team.idle_timeout_seconds = 3600
    team.delete_parked_after_seconds = 0  # this team keeps parked sandboxes
    team.save()
    own = create(team, member)
    assert (own.idle_timeout_seconds, own.delete_parked_after_seconds) == (3600, None)
    chosen = create(team, member, idle_timeout_seconds=None, delete_parked_after_seconds=600)
    assert (chosen.idle_timeout_seconds, chosen.delete_parked_after_seconds) == (None, 600)


def test_the_api_applies_defaults_only_where_the_caller_said_nothing(memory_backend, team, member):
    api = bearer_client(member, team)
    left_out = api.post("/api/v1/sandboxes", {"preset": SMALL}, format="json").json()
    assert left_out["idle_timeout_seconds"] == 72000
    assert left_out["delete_parked_after_seconds"] == 14 * 86400
    never = api.post(
        "/api/v1/sandboxes",
        {"preset": SMALL, "idle_timeout_seconds": None, "delete_parked_after_seconds": None},
        format="json",
    ).json()
    assert (never["idle_timeout_seconds"], never["delete_parked_after_seconds"]) == (None, None)


def test_the_new_sandbox_form_shows_the_teams_defaults(memory_backend, team, member, client):
    team.idle_timeout_seconds = 7200
    team.save()
    client.force_login(member)
    page = client.get("/sandboxes/new/").content.decode()
    assert 'name="idle_timeout" value="2h"' in page
    assert 'name="delete_parked" value="14d"' in page


def test_a_sandbox_parked_longer_than_its_limit_is_deleted_once(memory_backend, team, member):
    kept = create(team, member, delete_parked_after_seconds=None)
    fresh = create(team, member)
    old = create(team, member)
    running = create(team, member)
    for sandbox in (kept, fresh, old):
        lifecycle.stop_sandbox(sandbox=sandbox, actor=Actor.for_user(member))
    long_ago = timezone.now() - timedelta(days=15)
    Sandbox.objects.filter(pk__in=[kept.pk, old.pk]).update(status_changed_at=long_ago)
    Sandbox.objects.filter(pk=running.pk).update(last_activity_at=timezone.now())
    report = run_sweep()
    assert report.actions["parked"] == 1
    assert run_sweep().actions["parked"] == 0  # acted on once
    statuses = dict(Sandbox.objects.values_list("pk", "status"))
    assert statuses[old.pk] == Status.DELETED
    assert statuses[kept.pk] == statuses[fresh.pk] == Status.STOPPED
    assert statuses[running.pk] == Status.RUNNING
    asked = SandboxEvent.objects.get(sandbox=old, action="delete", actor_kind="scheduler")
    assert asked.data["reason"] == "parked_too_long"
