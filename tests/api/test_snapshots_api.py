"""Snapshot versions and presets over the API."""

from __future__ import annotations

import pytest

from sandboxes.models import ActiveSnapshot, Snapshot
from sandboxes.services.actors import Actor
from sandboxes.services.snapshots import import_snapshot
from tests.api.conftest import error_of

pytestmark = pytest.mark.django_db(transaction=True)
SMALL = "1vcpu_1gb_8gb"


@pytest.fixture
def own_version(memory_backend, team):
    """Version 2 of the small preset, the team's own, not active."""
    return import_snapshot(
        provider="memory", preset_id=SMALL, ref="base", actor=Actor.system(), team=team, label="own"
    )


def test_list_shows_every_version_with_active_and_lineage(api, own_version):
    # (The migrations' seeded local versions are in the database unless an earlier
    # transactional test flushed it: this provider's list does not depend on the order.)
    response = api.get("/api/v1/snapshots", {"provider": "memory"})
    assert response.status_code == 200
    rows = {r["snapshot_id"]: r for r in response.json()["results"]}
    assert list(rows) == ["memory_1vcpu_1gb_8gb_v2", "memory_1vcpu_1gb_8gb_v1"]
    assert rows["memory_1vcpu_1gb_8gb_v1"]["active"]
    assert rows["memory_1vcpu_1gb_8gb_v1"]["shared"]
    own = rows["memory_1vcpu_1gb_8gb_v2"]
    assert (own["active"], own["shared"], own["status"], own["label"]) == (
        False,
        False,
        "ready",
        "own",
    )
    assert (
        api.get("/api/v1/snapshots", {"provider": "memory", "preset": "2vcpu_2gb_8gb"}).json()[
            "count"
        ]
        == 0
    )
    assert api.get("/api/v1/snapshots").json()["count"] >= 2
    assert api.get("/api/v1/snapshots", {"status": "failed"}).json()["count"] == 0


def test_activate_needs_an_owner_or_admin_and_moves_the_active_version(api, admin_api, own_version):
    refused = api.post(f"/api/v1/snapshots/{own_version.snapshot_id}/activate")
    assert refused.status_code == 403
    assert error_of(refused)["code"] == "forbidden"
    response = admin_api.post(f"/api/v1/snapshots/{own_version.snapshot_id}/activate")
    assert response.status_code == 200
    assert response.json()["active"] is True
    pointer = ActiveSnapshot.objects.get(team=own_version.team)
    assert pointer.snapshot == own_version
    # The id without _vN now reads, and starts from, the team's own version.
    assert api.get("/api/v1/snapshots/memory_1vcpu_1gb_8gb").json()["version"] == 2
    started = api.post("/api/v1/sandboxes", {"preset": SMALL}, format="json")
    assert started.json()["snapshot_id"] == own_version.snapshot_id


def test_detail_and_unknown_ids(api, own_version):
    assert api.get(f"/api/v1/snapshots/{own_version.snapshot_id}").json()["label"] == "own"
    assert api.get("/api/v1/snapshots/memory_1vcpu_1gb_8gb").json()["version"] == 1
    for missing in ("memory_1vcpu_1gb_8gb_v9", "memory_2vcpu_2gb_8gb", "garbage"):
        response = api.get(f"/api/v1/snapshots/{missing}")
        assert response.status_code == 404, missing
        assert error_of(response)["code"] == "not_found"


def test_delete_a_version_nothing_uses(admin_api, own_version):
    response = admin_api.delete(f"/api/v1/snapshots/{own_version.snapshot_id}")
    assert response.status_code == 202
    # "deleting" with a worker; the tests run the task inline before the service re-reads.
    assert response.json()["status"] in {"deleting", "deleted"}
    assert Snapshot.objects.get(pk=own_version.pk).status == "deleted"
    assert admin_api.get("/api/v1/snapshots").json()["count"] == 1
    deleted = admin_api.get("/api/v1/snapshots", {"status": "deleted"}).json()["results"]
    assert [r["snapshot_id"] for r in deleted] == [own_version.snapshot_id]


def test_refusals_to_delete(admin_api, api, own_version):
    shared = admin_api.delete("/api/v1/snapshots/memory_1vcpu_1gb_8gb_v1")
    assert shared.status_code == 403  # shared versions are the operator's
    member = api.delete(f"/api/v1/snapshots/{own_version.snapshot_id}")
    assert member.status_code == 403
    sandbox = api.post(
        "/api/v1/sandboxes", {"snapshot_id": own_version.snapshot_id}, format="json"
    ).json()
    in_use = admin_api.delete(f"/api/v1/snapshots/{own_version.snapshot_id}")
    assert in_use.status_code == 409
    assert sandbox["id"] in error_of(in_use)["message"]
    assert Snapshot.objects.get(pk=own_version.pk).status == "ready"


def test_presets_list_sizes_and_enabled_providers(memory_backend, api):
    response = api.get("/api/v1/presets")
    assert response.status_code == 200
    presets = {p["id"]: p for p in response.json()["results"]}
    small = presets[SMALL]
    assert (small["vcpus"], small["memory_mb"], small["disk_gb"]) == (1, 1024, 8)
    # Only enabled providers are listed (the seed also names local, which is not on here).
    assert small["providers"] == ["memory"]


def test_config_and_health(memory_backend, api):
    config = api.get("/api/v1/config").json()
    assert config["default_provider"] == "memory"
    (memory,) = config["providers"]
    assert memory["default"]
    assert memory["capabilities"]["supports_pause"] is True
    assert memory["capabilities"]["supports_ssh"] is False
    assert memory["reasons"]["supports_ssh"]
    assert SMALL in [p["id"] for p in config["presets"]]
    assert config["team"]["role"] == "member"
    assert config["limits"]["max_wait_seconds"] == 60
    health = api.get("/api/v1/health").json()
    assert health == {
        "ok": True,
        "providers": [
            {
                "name": "memory",
                "reachable": True,
                "latency_ms": 0.0,
                "detail": "",
                "capacity": None,  # the in-memory provider does not say
            }
        ],
        "background": {  # the tests run tasks inline
            "mode": "inline",
            "ok": True,
            "detail": "tasks run inline (Q_SYNC)",
            "workers": [],
            "last_sweep_seconds_ago": None,
        },
    }
