"""Team B never reads or changes team A's objects, on every API route and method.

The routes come from the URL conf, so a new route is covered without editing this test;
a route with a path parameter this file cannot fill fails loudly until one is added to
``path_values``.
"""

from __future__ import annotations

import json

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from sandboxes.models import (
    ActiveSnapshot,
    ApiToken,
    Environment,
    Sandbox,
    SandboxEvent,
    Snapshot,
    SshKey,
    SshToken,
    TeamSecret,
    WarmPool,
)
from sandboxes.services import environments, interactive, lifecycle, pools, ssh, team_secrets
from sandboxes.services.actors import Actor
from sandboxes.services.snapshots import activate_snapshot, import_snapshot
from tests.api.conftest import bearer_client, error_of

pytestmark = pytest.mark.django_db(transaction=True)

#: Routes that hold no team's objects (the schema and its docs pages).
PUBLIC_ROUTES = {"api/schema/", "api/docs/", "api/redoc/"}
BODIES = {"post": {}, "put": {}, "patch": {}}


def api_routes() -> list[tuple[str, list[str]]]:
    """Every route under api/ as (route pattern, its HTTP methods), from the URL conf."""
    found: list[tuple[str, list[str]]] = []

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith("api/"):
                found.append((route, methods_of(pattern.callback)))

    walk(get_resolver().url_patterns, "")
    return found


def methods_of(callback) -> list[str]:
    """A ViewSet's route answers the methods its actions map; a view's, those it defines."""
    view = callback.cls
    answered = getattr(callback, "actions", None) or [
        m for m in view.http_method_names if hasattr(view, m)
    ]
    return [m for m in answered if m not in ("options", "head")]


@pytest.fixture
def team_a_world(memory_backend, team, member, team_admin):
    """Team A's objects: a running sandbox with a service, its own active version, a token."""
    actor = Actor.for_user(member)
    sandbox = lifecycle.create_sandbox(
        team=team, actor=actor, preset_id="1vcpu_1gb_8gb", name="secret-a", metadata={"a": "1"}
    )
    sandbox.refresh_from_db()
    interactive.expose_service(sandbox=sandbox, actor=actor, name="web", port=8080)
    version = import_snapshot(
        provider="memory", preset_id="1vcpu_1gb_8gb", ref="base", actor=Actor.system(), team=team
    )
    activate_snapshot(snapshot=version, actor=Actor.for_user(team_admin), team=team)
    token = bearer_client(member, team).token
    team_secrets.set_secret(team=team, actor=actor, name="web", value="a-secret-value")
    environment = environments.create_environment(
        team=team, actor=actor, data={"name": "secret-env-a", "preset": "1vcpu_1gb_8gb"}
    )
    key = ssh.add_key(
        actor=actor,
        name="laptop",
        public_key="ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIKfbCVBdc8ceDgiJdxE6mWZxJ3Eyy0GUnbhTIQ6xM8Fk",
    )
    pool = pools.create_pool(actor=Actor.system(), team=team, snapshot=version, target_size=0)
    return {
        "sandbox": sandbox,
        "version": version,
        "token": token,
        "team": team,
        "environment": environment,
        "ssh_key": key,
        "pool": pool,
    }


def path_values(world) -> dict[str, str]:
    return {
        "sandbox_id": world["sandbox"].pk,
        "snapshot_id": world["version"].snapshot_id,
        "name": "web",
        "token_id": str(world["token"].pk),
        "environment_id": str(world["environment"].pk),
        "key_id": str(world["ssh_key"].pk),
        "pool_id": str(world["pool"].pk),
    }


def fill(route: str, values: dict[str, str]) -> str:
    import re

    def value(match):
        name = match.group(1).split(":")[-1]
        assert name in values, f"add a team-A value for path parameter {name!r} to path_values"
        return values[name]

    return "/" + re.sub(r"<([^>]+)>", value, route)


def state_of_team_a(world, store) -> dict:
    """Everything about team A that a request could change."""
    team = world["team"]
    record = store.instances[world["sandbox"].provider_ref]
    return {
        "sandboxes": list(Sandbox.objects.filter(team=team).order_by("pk").values()),
        "snapshots": list(Snapshot.objects.filter(team=team).order_by("pk").values()),
        "active": list(ActiveSnapshot.objects.filter(team=team).values()),
        "tokens": list(ApiToken.objects.filter(team=team).order_by("pk").values()),
        "secrets": list(TeamSecret.objects.filter(team=team).order_by("pk").values()),
        "environments": list(Environment.objects.filter(team=team).order_by("pk").values()),
        "ssh_keys": list(SshKey.objects.filter(user__memberships__team=team).values()),
        "ssh_tokens": list(SshToken.objects.filter(team=team).values()),
        "pools": list(WarmPool.objects.filter(team=team).values()),
        "events": SandboxEvent.objects.filter(team=team).count(),
        "instance": (record.status, dict(record.services), record.wake_on),
    }


def secrets_of_team_a(world) -> list[str]:
    return [
        world["sandbox"].pk,
        "secret-a",
        world["version"].snapshot_id,
        world["token"].prefix,
        '"alpha"',
        "a-secret-value",
        "secret-env-a",
    ]


def test_every_route_refuses_team_a_objects_to_team_b(
    team_a_world, memory_backend, outsider, other_team
):
    b = bearer_client(outsider, other_team)
    before = state_of_team_a(team_a_world, memory_backend)
    values = path_values(team_a_world)
    leaks = secrets_of_team_a(team_a_world)
    checked = []
    for route, methods in api_routes():
        if route in PUBLIC_ROUTES:
            continue
        object_scoped = "<" in route
        for method in methods:
            url = fill(route, values)
            if route.startswith("api/v1/secrets/") and method in ("put", "delete"):
                # Secret names are per team: team B sets, then deletes, its own "web";
                # team A's stays as it was (the state compared below).
                response = getattr(b, method)(url, {"value": "b-value"}, format="json")
                assert response.status_code == {"put": 201, "delete": 204}[method]
                checked.append((method.upper(), url, response.status_code))
                continue
            response = getattr(b, method)(url, BODIES.get(method), format="json")
            checked.append((method.upper(), url, response.status_code))
            text = response.content.decode()
            for leak in leaks:
                assert leak not in text, f"{method.upper()} {url} leaked {leak}: {text[:300]}"
            assert response.status_code < 500, (method, url, text[:300])
            if object_scoped:
                assert response.status_code == 404, (method, url, response.status_code, text)
                assert error_of(response)["code"] == "not_found"
    assert after_equals(before, state_of_team_a(team_a_world, memory_backend))
    # The matrix really ran over the API: every kind of route was reached.
    reached = {url.split("/")[-1] for _, url, _ in checked}
    assert {"exec", "activate", "wake-on", "start", "ssh", "events", "web"} <= reached
    assert len(checked) >= 25


def after_equals(before: dict, after: dict) -> bool:
    assert before == after, "team B changed team A's state"
    return True


def test_team_b_lists_show_only_team_b(team_a_world, outsider, other_team):
    b = bearer_client(outsider, other_team)
    assert b.get("/api/v1/sandboxes").json()["count"] == 0
    snapshots = b.get("/api/v1/snapshots").json()["results"]
    assert team_a_world["version"].snapshot_id not in json.dumps(snapshots)
    assert [t["prefix"] for t in b.get("/api/v1/tokens").json()["results"]] == [b.token.prefix]
    assert b.get("/api/v1/config").json()["team"]["slug"] == "beta"


def test_team_a_ids_in_bodies_do_not_reach_team_a(team_a_world, outsider, other_team):
    """Naming A's version when creating, or A's team in cmux's body, is refused."""
    b = bearer_client(outsider, other_team)
    version = team_a_world["version"].snapshot_id
    response = b.post("/api/v1/sandboxes", {"snapshot_id": version}, format="json")
    assert response.status_code == 400
    assert "snapshot_id" in error_of(response)["fields"]
    response = b.post(
        "/api/sandboxes/start", {"snapshotId": version, "teamSlugOrId": "alpha"}, format="json"
    )
    assert response.status_code == 404
    assert not Sandbox.objects.filter(team=other_team).exists()


def test_a_session_cannot_choose_a_team_it_is_not_in(team_a_world, outsider):
    client = APIClient()
    client.force_login(outsider)
    session = client.session
    session["current_team"] = "alpha"
    session.save()
    sandbox_id = team_a_world["sandbox"].pk
    assert client.get(f"/api/v1/sandboxes/{sandbox_id}").status_code == 404
    assert client.get("/api/v1/config").json()["team"]["slug"] == "beta"
