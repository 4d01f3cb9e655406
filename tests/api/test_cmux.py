"""cmux's ``POST /api/sandboxes/start`` maps onto create."""

from __future__ import annotations

import pytest

from sandboxes.models import Sandbox
from sandboxes.services.actors import Actor
from sandboxes.services.snapshots import import_snapshot
from sandboxes.states import Status
from tests.api.conftest import error_of

pytestmark = pytest.mark.django_db(transaction=True)


def test_cmux_start_creates_a_sandbox(memory_backend, api, team):
    body = {"snapshotId": "memory_1vcpu_1gb_8gb", "ttlSeconds": 900, "metadata": {"job": "9"}}
    response = api.post("/api/sandboxes/start", body, format="json")
    assert response.status_code == 202
    data = response.json()
    assert data == {
        "instanceId": data["instanceId"],
        "provider": "memory",
        "status": "starting",
        "snapshotId": "memory_1vcpu_1gb_8gb_v1",
        "vscodeUrl": None,
        "workerUrl": None,
    }
    row = Sandbox.objects.get(pk=data["instanceId"])
    assert (row.team, row.ttl_seconds, row.metadata) == (team, 900, {"job": "9"})
    assert row.status == Status.RUNNING


def test_cmux_start_takes_a_provider_image_reference(memory_backend, api):
    import_snapshot(
        provider="memory", preset_id="1vcpu_1gb_8gb", ref="snapshot_b74x626y", actor=Actor.system()
    )
    response = api.post("/api/sandboxes/start", {"snapshotId": "snapshot_b74x626y"}, format="json")
    assert response.status_code == 202
    assert response.json()["snapshotId"] == "memory_1vcpu_1gb_8gb_v2"


def test_cmux_start_is_idempotent_with_a_key(memory_backend, api):
    body = {"snapshotId": "memory_1vcpu_1gb_8gb_v1"}
    first = api.post("/api/sandboxes/start", body, format="json", HTTP_IDEMPOTENCY_KEY="x")
    again = api.post("/api/sandboxes/start", body, format="json", HTTP_IDEMPOTENCY_KEY="x")
    assert first.json()["instanceId"] == again.json()["instanceId"]
    assert Sandbox.objects.count() == 1


def test_cmux_start_refuses_a_key_replayed_with_other_values(memory_backend, api):
    body = {"snapshotId": "memory_1vcpu_1gb_8gb_v1", "ttlSeconds": 900}
    api.post("/api/sandboxes/start", body, format="json", HTTP_IDEMPOTENCY_KEY="x")
    body["ttlSeconds"] = 60
    again = api.post("/api/sandboxes/start", body, format="json", HTTP_IDEMPOTENCY_KEY="x")
    assert again.status_code == 409
    assert error_of(again)["code"] == "idempotency_key_reused"
    assert list(error_of(again)["fields"]) == ["ttl_seconds"]
    assert Sandbox.objects.get().ttl_seconds == 900


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 400, "snapshotId"),
        ({"snapshotId": "nope"}, 400, "snapshot_id"),
        ({"snapshotId": "memory_1vcpu_1gb_8gb", "branch": "main"}, 400, "branch"),
        ({"snapshotId": "memory_1vcpu_1gb_8gb", "repoUrl": "file:///etc"}, 400, "repo.url"),
        ({"snapshotId": "memory_1vcpu_1gb_8gb", "ttlSeconds": -5}, 400, "ttlSeconds"),
        ({"snapshotId": "memory_1vcpu_1gb_8gb", "teamSlugOrId": "alpha"}, 202, None),
        ({"snapshotId": "memory_1vcpu_1gb_8gb", "teamSlugOrId": "gamma"}, 404, None),
    ],
)
def test_cmux_start_checks_its_body(memory_backend, api, body, status, field):
    response = api.post("/api/sandboxes/start", body, format="json")
    assert response.status_code == status
    if field:
        assert field in error_of(response)["fields"]
    assert Sandbox.objects.count() == (1 if status == 202 else 0)
