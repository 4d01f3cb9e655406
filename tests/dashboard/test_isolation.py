"""A member of another team can neither see nor act on team A's objects, from any page.

The URL list comes from the dashboard's URL conf, so a page added later is covered without
touching this file; a new URL parameter fails here until it is given a value below.
"""

from __future__ import annotations

import pytest
from django.urls import URLPattern, reverse

from sandboxes import urls
from sandboxes.models import (
    ActiveSnapshot,
    ApiToken,
    Environment,
    Sandbox,
    SandboxEvent,
    Snapshot,
    SshKey,
    TeamSecret,
    WarmPool,
)
from sandboxes.services import (
    environments,
    interactive,
    pools,
    snapshots,
    ssh,
    team_secrets,
    tokens,
)
from sandboxes.services.actors import Actor
from tests.dashboard.conftest import signed_in

pytestmark = pytest.mark.django_db(transaction=True)


PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKfbCVBdc8ceDgiJdxE6mWZxJ3Eyy0GUnbhTIQ6xM8Fk"


@pytest.fixture
def team_a(running, member, team):
    """Team A's objects: a running sandbox with a service, two own versions, a token."""
    actor = Actor.for_user(member)
    interactive.expose_service(sandbox=running, actor=actor, name="web", port=8080)
    interactive.update_sandbox_settings(sandbox=running, actor=actor, name="private-name")
    v2 = snapshots.take_snapshot(sandbox=running, actor=actor, label="private-label")
    v3 = snapshots.take_snapshot(sandbox=running, actor=actor, label="private-label-2")
    token, _ = tokens.create_api_token(user=member, team=team, actor=actor, name="private-token")
    team_secrets.set_secret(team=team, actor=actor, name="PRIVATE_SECRET", value="private-value")
    environment = environments.create_environment(
        team=team,
        actor=actor,
        data={"name": "private-environment", "preset": "1vcpu_1gb_8gb", "provider": "memory"},
    )
    pool = pools.create_pool(
        actor=Actor.system(), team=team, snapshot=running.snapshot, target_size=1
    )
    key = ssh.add_key(actor=actor, name="private-key", public_key=PUBLIC_KEY)
    return {
        "key_id": str(key.pk),
        "pool_id": str(pool.pk),
        "environment_id": str(environment.pk),
        "sandbox_id": running.pk,
        "snapshot_id": v2.snapshot_id,
        "other_id": v3.snapshot_id,
        "action": "delete",
        "service": "web",
        "port": 8080,
        "token_id": str(token.pk),
        "name": "PRIVATE_SECRET",
    }


def dashboard_patterns() -> list[URLPattern]:
    """Every named page (the unnamed ones only redirect old /versions/ links to a named one)."""
    return [p for p in urls.urlpatterns if isinstance(p, URLPattern) and p.name]


def secrets_of(objects: dict[str, str]) -> list[str]:
    """Strings that would show team A's data if they appeared in a response."""
    return [
        objects["sandbox_id"],
        objects["snapshot_id"],
        objects["other_id"],
        "private-name",
        "private-label",
        "private-token",
        "private-value",
        "PRIVATE_SECRET",
        "private-environment",
        Sandbox.objects.get(pk=objects["sandbox_id"]).provider_ref,
    ]


def state(objects: dict[str, str]) -> tuple:
    sandbox = Sandbox.objects.get(pk=objects["sandbox_id"])
    return (
        sandbox.status,
        sandbox.name,
        sandbox.services,
        sandbox.metadata,
        sandbox.ttl_seconds,
        sorted(Snapshot.objects.values_list("snapshot_id", "status")),
        sorted(ActiveSnapshot.objects.values_list("team_id", "snapshot_id")),
        sorted(ApiToken.objects.filter(team=sandbox.team).values_list("pk", "revoked_at")),
        SandboxEvent.objects.filter(team=sandbox.team).count(),
        sorted(TeamSecret.objects.filter(team=sandbox.team).values_list("name", "ciphertext")),
        sorted(Environment.objects.filter(team=sandbox.team).values_list("name", "updated_at")),
        sorted(WarmPool.objects.values_list("pk", "enabled", "target_size")),
        Sandbox.objects.count(),
        sorted(SshKey.objects.values_list("pk", "name")),
    )


#: Form fields a real submission of each page would carry, pointing at team A's objects.
def post_data(objects: dict[str, str]) -> dict[str, object]:
    return {
        "confirmed": "1",
        "ids": [objects["sandbox_id"]],
        "action": "stop",
        "command": "id",
        "name": "taken",
        "port": "9090",
        "label": "x",
        "ttl": "1h",
        "ttl_action": "delete",
        "metadata": "a=b",
        "http": "on",
        "team": "alpha",
        "preset": "1vcpu_1gb_8gb",
        "provider": "memory",
        "snapshot": objects["snapshot_id"],
        "idempotency_key": "k" * 32,
    }


def flat(data: dict[str, object]) -> set[str]:
    return {v for value in data.values() for v in (value if isinstance(value, list) else [value])}


@pytest.fixture(params=["member of another team", "operator in another team"])
def intruder(request, outsider, django_user_model):
    if request.param == "operator in another team":
        outsider.is_superuser = outsider.is_staff = True
        outsider.save()
    return signed_in(outsider)


def test_every_object_url_is_a_404_for_another_team(intruder, team_a):
    before = state(team_a)
    checked = 0
    for pattern in dashboard_patterns():
        names = list(pattern.pattern.converters)
        if not names:
            continue
        missing = [n for n in names if n not in team_a]
        assert not missing, f"give {pattern.name} a value for {missing} in team_a"
        url = reverse(pattern.name, kwargs={n: team_a[n] for n in names})
        for method in ("get", "post"):
            for headers in ({}, {"HX-Request": "true"}):
                response = getattr(intruder, method)(url, post_data(team_a), headers=headers)
                assert response.status_code in (404, 405), (url, method, response.status_code)
                body = response.content.decode()
                for secret in secrets_of(team_a):
                    assert secret not in body, (url, method, secret)
                checked += 1
    assert checked >= 4 * 15
    assert state(team_a) == before


def test_list_pages_show_nothing_of_another_team(intruder, team_a):
    before = state(team_a)
    query = {
        "v": [team_a["snapshot_id"], team_a["other_id"]],
        "snapshot": team_a["snapshot_id"],
        "sandbox": team_a["sandbox_id"],
        "q": team_a["sandbox_id"],
    }
    for pattern in dashboard_patterns():
        if pattern.pattern.converters or pattern.name == "home":
            continue
        url = reverse(pattern.name)
        for method, data in (("get", query), ("post", post_data(team_a))):
            response = getattr(intruder, method)(url, data, follow=True)
            assert response.status_code in (200, 400, 404, 405), (url, method)
            body = response.content.decode()
            # A form may echo what was typed; nothing else of team A may appear.
            shown = [x for x in secrets_of(team_a) if x not in flat(data)]
            shown += [f"/sandboxes/{team_a['sandbox_id']}/", f"/snapshots/{team_a['snapshot_id']}/"]
            for secret in shown:
                assert secret not in body, (url, method, secret)
    assert state(team_a) == before
    # and the intruder's own new sandbox, if the new-sandbox POST made one, is theirs
    assert not Sandbox.objects.filter(team__slug="alpha").exclude(pk=team_a["sandbox_id"]).exists()


def test_ids_with_a_nul_character_are_not_found(alice, running):
    """Not a 500 on PostgreSQL, which cannot compare text with NUL in it."""
    assert alice.get("/sandboxes/sbx-a%00b/").status_code == 404
    assert (
        alice.get("/sandboxes/sbx-a%00b/status/", headers={"HX-Request": "true"}).status_code == 404
    )
    assert alice.get("/snapshots/memory_1vcpu_1gb_8gb_v1%00/").status_code == 404
    pick = alice.get(reverse("snapshot-compare-pick"), {"v": ["a\x00", "memory_1vcpu_1gb_8gb_v1"]})
    assert pick.status_code == 404
    bulk = alice.post(reverse("sandbox-bulk"), {"action": "stop", "ids": ["sbx-a\x00b"]})
    assert bulk.status_code == 302
    new = alice.get(
        reverse("sandbox-new"), {"snapshot": "a\x00", "preset": "a\x00", "provider": "a\x00"}
    )
    assert new.status_code == 200
    made = alice.post(reverse("sandbox-new"), {"preset": "a\x00", "idempotency_key": "k"})
    assert made.status_code == 400
    assert alice.post(reverse("team-switch"), {"team": "alpha\x00"}).status_code == 404
    assert alice.get("/s/sbx-a%00b/web/").status_code == 404
