"""``/api/v1/pools``: team-scoped warm pools through the API, and a create that hits one."""

from __future__ import annotations

import pytest

from sandboxes.models import Membership, SandboxEvent, WarmPool
from sandboxes.services import pools
from sandboxes.services.actors import Actor
from tests.api.conftest import bearer_client, error_of

pytestmark = pytest.mark.django_db(transaction=True)

SNAPSHOT = "memory_1vcpu_1gb_8gb_v1"


@pytest.fixture
def owner(django_user_model, team):
    user = django_user_model.objects.create_user(username="olga", password="pw")
    Membership.objects.create(user=user, team=team, role="owner")
    return user


def test_an_owner_creates_a_pool_and_a_create_through_the_api_hits_it(memory_backend, team, owner):
    api = bearer_client(owner, team)
    made = api.post(
        "/api/v1/pools", {"snapshot_id": SNAPSHOT, "target_size": 2, "maximum": 3}, format="json"
    )
    assert made.status_code == 201, made.content
    body = made.json()
    assert (body["ready"], body["target_size"], body["maximum"], body["shared"]) == (
        2,
        2,
        3,
        False,
    )
    started = api.post("/api/v1/sandboxes", {"preset": "1vcpu_1gb_8gb"}, format="json")
    assert started.status_code == 202, started.content
    assert started.json()["status"] == "running"  # a hit answers running at once
    assert SandboxEvent.objects.filter(action="pool_claim").count() == 1
    listed = api.get("/api/v1/pools").json()
    (row,) = listed["results"] if isinstance(listed, dict) else listed
    assert (row["hits"], row["misses"], row["hit_rate"], row["ready"]) == (1, 0, 1.0, 2)
    changed = api.patch(f"/api/v1/pools/{row['id']}", {"enabled": False}, format="json")
    assert changed.status_code == 200
    assert changed.json()["enabled"] is False
    assert api.delete(f"/api/v1/pools/{row['id']}").status_code == 204
    assert not WarmPool.objects.exists()


def test_members_and_viewers_cannot_manage_pools(memory_backend, team, member, viewer):
    for user in (member, viewer):
        answer = bearer_client(user, team).post(
            "/api/v1/pools", {"snapshot_id": SNAPSHOT}, format="json"
        )
        assert answer.status_code == 403, answer.content
        error_of(answer)


def test_pools_are_scoped_to_the_team(memory_backend, team, other_team, owner, outsider):
    from sandboxes.models import Snapshot

    theirs = pools.create_pool(
        actor=Actor.for_user(outsider),
        team=other_team,
        snapshot=Snapshot.objects.get(snapshot_id=SNAPSHOT),
        target_size=1,
    )
    api = bearer_client(owner, team)
    listed = api.get("/api/v1/pools").json()
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert rows == []
    assert api.get(f"/api/v1/pools/{theirs.pk}").status_code == 404
    assert (
        api.patch(f"/api/v1/pools/{theirs.pk}", {"target_size": 0}, format="json").status_code
        == 404
    )
    assert api.delete(f"/api/v1/pools/{theirs.pk}").status_code == 404


def test_bad_sizes_are_refused_with_the_field(memory_backend, team, owner):
    api = bearer_client(owner, team)
    answer = api.post(
        "/api/v1/pools", {"snapshot_id": SNAPSHOT, "target_size": 3, "maximum": 2}, format="json"
    )
    assert answer.status_code == 400
    assert "maximum" in error_of(answer)["fields"]
    answer = api.post("/api/v1/pools", {"snapshot_id": "nope_v1"}, format="json")
    assert answer.status_code == 400
