"""What a provider can hold, in the service layer, the API and the dashboard.

The local provider here caps all its sandboxes together at 1536 MB
(``LOCAL_SANDBOX_TOTAL_MEMORY_MB``, the ``local_backend`` fixture); nothing starts one.
"""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from sandboxes.models import Preset, Sandbox, Snapshot
from sandboxes.services import lifecycle
from sandboxes.services.actors import Actor
from sandboxes.services.errors import QuotaExceeded
from sandboxes.services.snapshots import import_snapshot
from sandboxes.states import Status
from tests.api.conftest import bearer_client, error_of
from tests.dashboard.conftest import signed_in

pytestmark = pytest.mark.django_db(transaction=True)
MEDIUM = "2vcpu_2gb_8gb"  # 2048 MB: more than the 1536 MB the host gives sandboxes


def live_sandbox(team, user, *, memory_mb: int, status: str = Status.RUNNING) -> Sandbox:
    """A row only (a sandbox the team has on local), made without provisioning."""
    preset = Preset.objects.get(pk="1vcpu_1gb_8gb")
    now = timezone.now()
    return Sandbox.objects.create(
        team=team,
        created_by=user,
        provider="local",
        preset=preset,
        snapshot=Snapshot.objects.filter(provider="local", preset=preset).first(),
        vcpus=1,
        memory_mb=memory_mb,
        disk_gb=8,
        status=status,
        provider_ref="sbx-row-only",
        status_changed_at=now,
    )


def test_a_preset_bigger_than_the_host_is_refused_at_create(local_backend, team, member):
    with pytest.raises(QuotaExceeded) as refused:
        lifecycle.create_sandbox(team=team, actor=Actor.for_user(member), preset_id=MEDIUM)
    error = refused.value
    assert error.code == "quota_provider_memory_mb"
    assert (error.limit, error.requested) == (1536, 2048)
    assert "2048 MB" in error.message
    assert "1536 MB" in error.message
    assert "LOCAL_SANDBOX_TOTAL_MEMORY_MB" in error.message
    assert not Sandbox.objects.exists()


def test_a_team_quota_above_the_host_refuses_what_the_host_cannot_hold(local_backend, team, member):
    team.max_memory_mb = 8192  # the quota allows it; the host's 1536 MB do not
    team.save()
    live_sandbox(team, member, memory_mb=1024)
    live_sandbox(team, member, memory_mb=1024, status=Status.DELETED)  # does not count
    with pytest.raises(QuotaExceeded) as refused:
        lifecycle.create_sandbox(team=team, actor=Actor.for_user(member), preset_id="1vcpu_1gb_8gb")
    error = refused.value
    assert error.code == "quota_provider_memory_mb"
    assert (error.limit, error.used, error.requested) == (1536, 1024, 1024)
    assert "max_memory_mb: 8192 MB" in error.message
    assert "1536 MB" in error.message
    assert Sandbox.objects.filter(status=Status.STARTING).count() == 0


def test_the_api_refuses_with_the_quota_shape(local_backend, team, member):
    api = bearer_client(member, team)
    response = api.post("/api/v1/sandboxes", {"preset": MEDIUM}, format="json")
    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "quota_provider_memory_mb"
    assert (error["quota"], error["limit"], error["requested"]) == (
        "provider_memory_mb",
        1536,
        2048,
    )


def test_health_reports_the_capacity(local_backend, team, member):
    health = bearer_client(member, team).get("/api/v1/health").json()
    (local,) = health["providers"]
    assert local["name"] == "local"
    assert local["capacity"] == {
        "memory_mb_total": 1536,
        "memory_mb_used": 0,
        "memory_mb_free": 1536,
        "pids_total": 1000,
        "pids_used": None,  # no sandbox yet: the parent cgroup does not exist
        "sandboxes_running": 0,
    }


def test_the_providers_page_shows_the_capacity(local_backend, member):
    page = signed_in(member).get(reverse("provider-health")).content.decode()
    assert "<strong>1536 MB</strong> of 1536 MB memory free" in page
    assert "0 MB given to 0 running or paused sandboxes" in page
    assert "at most 1000" in page


def test_providers_that_do_not_say_refuse_nothing_and_show_no_capacity(
    memory_backend, team, member
):
    page = signed_in(member).get(reverse("provider-health")).content.decode()
    assert "memory free" not in page
    import_snapshot(
        provider="memory",
        preset_id="8vcpu_32gb_64gb",
        ref="base",
        actor=Actor.system(),
        activate=True,
    )
    sandbox = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(member), preset_id="8vcpu_32gb_64gb"
    )
    assert sandbox.memory_mb == 32768
