"""Idle hibernation and the service proxy in detail (in-memory provider, a real HTTP peer)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from providers.base import InstanceStatus
from sandboxes.models import Outcome, Sandbox, SandboxEvent
from sandboxes.services import idle, interactive, lifecycle
from sandboxes.services.actors import Actor
from sandboxes.services.inventory import take_inventory
from sandboxes.services.sweep import run_sweep
from sandboxes.services.tokens import create_api_token
from sandboxes.states import Status
from tests.background import harness
from tests.background.harness import FakeService

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def actor(member) -> Actor:
    return Actor.for_user(member)


def create(team, actor, **kwargs) -> Sandbox:
    sandbox = lifecycle.create_sandbox(team=team, actor=actor, preset_id="1vcpu_1gb_8gb", **kwargs)
    sandbox.refresh_from_db()
    return sandbox


def go_idle(sandbox: Sandbox, seconds: int) -> None:
    Sandbox.objects.filter(pk=sandbox.pk).update(
        last_activity_at=timezone.now() - timedelta(seconds=seconds)
    )


@pytest.mark.parametrize(
    ("disabled", "operation", "final"),
    [
        (set(), "pause", Status.PAUSED),
        ({"supports_pause"}, "hibernate", Status.HIBERNATED),
        ({"supports_pause", "supports_hibernate"}, "stop", Status.STOPPED),
    ],
)
def test_an_idle_sandbox_is_parked_the_best_way_its_provider_can(
    memory_backend, team, actor, disabled, operation, final
):
    sandbox = create(team, actor, idle_timeout_seconds=300)
    memory_backend.disabled.update(disabled)
    go_idle(sandbox, 299)
    assert run_sweep().actions["idle"] == 0
    go_idle(sandbox, 301)
    assert run_sweep().actions["idle"] == 1
    sandbox.refresh_from_db()
    assert sandbox.status == final
    event = SandboxEvent.objects.get(sandbox=sandbox, actor_kind="scheduler")
    assert (event.action, event.data["reason"], event.data["parked_by"]) == (
        operation,
        "idle",
        operation,
    )
    assert ("instead" in event.data) == bool(disabled)


def test_no_idle_timeout_means_never_parked(memory_backend, team, actor):
    sandbox = create(team, actor, idle_timeout_seconds=None)
    go_idle(sandbox, 10**6)
    assert run_sweep().actions["idle"] == 0
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.RUNNING


def test_activity_the_provider_saw_keeps_a_sandbox_awake(memory_backend, team, actor):
    sandbox = create(team, actor, idle_timeout_seconds=300)
    go_idle(sandbox, 3600)
    seen = timezone.now() - timedelta(seconds=30)
    memory_backend.instances[sandbox.provider_ref].last_activity = seen
    assert run_sweep().actions["idle"] == 0
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING
    assert sandbox.last_activity_at == seen  # remembered: no longer a candidate
    later = timezone.now() + timedelta(seconds=400)
    assert run_sweep(now=later).actions["idle"] == 1


def test_activity_between_the_look_and_the_act_wins(memory_backend, team, actor):
    sandbox = create(team, actor, idle_timeout_seconds=300)
    go_idle(sandbox, 600)
    now = timezone.now()
    [candidate] = idle.idle_candidates(now=now, limit=10)
    assert candidate.pk == sandbox.pk
    interactive.touch_activity(sandbox)  # an exec lands meanwhile
    assert idle.park_idle(now=now, inventory=take_inventory(), limit=10) == 0
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.RUNNING
    assert not SandboxEvent.objects.filter(sandbox=sandbox, outcome=Outcome.REFUSED).exists()


# --- the proxy --------------------------------------------------------------------------------


@pytest.fixture
def served(memory_backend, team, actor):
    """A running sandbox with an exposed service "web" answered by a real HTTP server."""
    sandbox = create(team, actor, idle_timeout_seconds=600)
    service = FakeService(
        lambda: memory_backend.instances[sandbox.provider_ref].status == "running", b"served"
    )
    interactive.expose_service(sandbox=sandbox, actor=actor, name="web", port=service.port)
    sandbox.refresh_from_db()
    yield sandbox, service
    service.close()


def test_the_proxy_forwards_and_counts_as_activity(served, client, member):
    sandbox, service = served
    go_idle(sandbox, 500)
    client.force_login(member)
    client.cookies["csrftoken"] = "not-for-the-sandbox"
    response = client.post(
        f"/s/{sandbox.pk}/web/api/items?q=1",
        data=b'{"a": 1}',
        content_type="application/json",
        HTTP_X_CUSTOM="kept",
    )
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"served"
    [seen] = service.seen
    assert seen["path"] == f"/{sandbox.provider_ref}/web/api/items?q=1"
    assert seen["body"] == b'{"a": 1}'
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["x-custom"] == "kept"
    assert headers["x-forwarded-prefix"] == f"/s/{sandbox.pk}/web"
    assert "cookie" not in headers  # the caller's session never reaches the sandbox
    assert "set-cookie" not in {k.lower() for k in response.headers}
    assert response.headers["Content-Security-Policy"].startswith("sandbox ")
    sandbox.refresh_from_db()
    assert timezone.now() - sandbox.last_activity_at < timedelta(seconds=30)


def test_the_proxy_takes_an_api_token_and_never_forwards_it(served, client, member, team):
    sandbox, service = served
    _, raw = create_api_token(user=member, team=team, actor=Actor.for_user(member))
    response = client.get(f"/s/{sandbox.pk}/web/", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 200
    assert "authorization" not in {k.lower() for k in service.seen[0]["headers"]}
    bad = client.get(f"/s/{sandbox.pk}/web/", HTTP_AUTHORIZATION="Bearer sbt_nope")
    assert bad.status_code == 401


def test_the_proxy_asks_anonymous_browsers_to_sign_in(served, client):
    sandbox, service = served
    response = client.get(f"/s/{sandbox.pk}/web/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
    assert service.seen == []


@pytest.mark.parametrize("operator", [False, True])
def test_another_teams_sandbox_is_not_found(served, client, outsider, operator, other_team):
    sandbox, service = served
    outsider.is_superuser = outsider.is_staff = operator
    outsider.save()
    client.force_login(outsider)
    for method in ("get", "post"):
        response = getattr(client, method)(f"/s/{sandbox.pk}/web/x")
        assert response.status_code == 404
        assert sandbox.pk not in response.content.decode()
    _, raw = create_api_token(user=outsider, team=other_team, actor=Actor.for_user(outsider))
    response = client.get(f"/s/{sandbox.pk}/web/", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 404
    assert service.seen == []


def test_an_unknown_service_is_not_found(served, client, member):
    sandbox, _ = served
    client.force_login(member)
    response = client.get(f"/s/{sandbox.pk}/nope/")
    assert response.status_code == 404
    assert "exposes no service called 'nope'" in response.json()["error"]["message"]


def test_a_paused_sandbox_without_wake_on_http_is_not_woken(served, client, member, actor):
    sandbox, service = served
    lifecycle.pause_sandbox(sandbox=sandbox, actor=actor)
    client.force_login(member)
    response = client.get(f"/s/{sandbox.pk}/web/")
    assert response.status_code == 409
    assert "wake-on-HTTP is off" in response.json()["error"]["message"]
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.PAUSED
    assert service.seen == []


def test_a_hibernated_sandbox_is_woken_by_a_viewer_as_the_system(
    served, client, viewer, actor, memory_backend
):
    sandbox, _ = served
    interactive.set_wake_on(sandbox=sandbox, actor=actor, http=True, ssh=False)
    lifecycle.hibernate_sandbox(sandbox=sandbox, actor=actor)
    client.force_login(viewer)
    response = client.get(f"/s/{sandbox.pk}/web/")
    assert response.status_code == 200
    assert memory_backend.instances[sandbox.provider_ref].status == InstanceStatus.RUNNING
    woke = SandboxEvent.objects.get(sandbox=sandbox, action="resume", outcome="requested")
    assert (woke.actor_kind, woke.data["requested_by"]) == ("system", "victor")


def test_a_stopped_sandbox_is_not_started_by_traffic(served, client, member, actor):
    sandbox, service = served
    interactive.set_wake_on(sandbox=sandbox, actor=actor, http=True, ssh=False)
    lifecycle.stop_sandbox(sandbox=sandbox, actor=actor)
    client.force_login(member)
    response = client.get(f"/s/{sandbox.pk}/web/")
    assert response.status_code == 409
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.STOPPED
    assert service.seen == []


def test_a_service_that_does_not_answer_is_a_bad_gateway(served, client, member):
    sandbox, service = served
    service.close()
    client.force_login(member)
    response = client.get(f"/s/{sandbox.pk}/web/")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "bad_gateway"


# --- what the provider observed (the file-backed provider reports traffic and CPU) -----------


@pytest.fixture
def filestore(tmp_path_factory, presets):
    with harness.harness("filestore", tmp_path_factory) as put:
        backend = harness.activate("filestore", put)
        yield backend
        harness.clean_up(backend)


def test_cpu_work_the_provider_reports_keeps_a_sandbox_awake(filestore, team, actor):
    sandbox = lifecycle.create_sandbox(
        team=team, actor=actor, preset_id=filestore.preset_id, idle_timeout_seconds=300
    )
    sandbox.refresh_from_db()
    go_idle(sandbox, 3600)
    store = filestore.provider.store
    now = timezone.now()
    store.add_metric(sandbox.provider_ref, now - timedelta(seconds=900), 2.0)  # too old
    store.add_metric(sandbox.provider_ref, now - timedelta(seconds=20), 0.01)  # just noise
    assert run_sweep().actions["idle"] == 1  # neither counts: parked
    sandbox.refresh_from_db()
    assert sandbox.status == Status.PAUSED
    lifecycle.resume_sandbox(sandbox=sandbox, actor=actor)
    go_idle(sandbox, 3600)
    busy = timezone.now() - timedelta(seconds=20)
    store.add_metric(sandbox.provider_ref, busy, 0.9)  # a build running unattended
    assert run_sweep().actions["idle"] == 0
    sandbox.refresh_from_db()
    assert (sandbox.status, sandbox.last_activity_at) == (Status.RUNNING, busy)


def test_traffic_the_provider_saw_keeps_a_sandbox_awake(filestore, team, actor):
    sandbox = lifecycle.create_sandbox(
        team=team, actor=actor, preset_id=filestore.preset_id, idle_timeout_seconds=300
    )
    sandbox.refresh_from_db()
    go_idle(sandbox, 3600)
    seen = timezone.now() - timedelta(seconds=5)
    filestore.provider.store.set_last_activity(sandbox.provider_ref, seen)
    assert run_sweep().actions["idle"] == 0
    sandbox.refresh_from_db()
    assert (sandbox.status, sandbox.last_activity_at) == (Status.RUNNING, seen)


def test_a_resume_the_provider_refuses_is_tried_once_and_reported(
    served, client, member, actor, memory_backend
):
    from providers.errors import OperationFailed

    sandbox, service = served
    interactive.set_wake_on(sandbox=sandbox, actor=actor, http=True, ssh=False)
    lifecycle.pause_sandbox(sandbox=sandbox, actor=actor)
    memory_backend.faults["resume"] = [OperationFailed("cannot thaw")] * 5
    client.force_login(member)
    response = client.get(f"/s/{sandbox.pk}/web/")
    assert response.status_code == 409
    assert "is paused" in response.json()["error"]["message"]
    assert memory_backend.calls.count("resume") == 1
    assert service.seen == []


def test_a_service_the_provider_moved_is_found_again(served, client, member):
    """A row still holding an old URL (local services moved from host loopback ports to
    unix sockets) is corrected from the provider on the first failed connection."""
    sandbox, _ = served
    stale = FakeService(lambda: True, b"", offset=0)
    stale.close()  # nothing answers there any more
    moved = [{**s, "url": f"http://127.0.0.1:{stale.port}/"} for s in sandbox.services]
    Sandbox.objects.filter(pk=sandbox.pk).update(services=moved)
    client.force_login(member)
    response = client.get(f"/s/{sandbox.pk}/web/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"served"
    sandbox.refresh_from_db()
    assert [s["url"] for s in sandbox.services] != [s["url"] for s in moved]
