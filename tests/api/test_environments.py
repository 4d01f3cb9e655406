"""Team environments: audited recipes, CRUD through the API, one call (or cmux's start) to
a sandbox made from one.

The in-memory provider runs a sandbox's commands on this host in a folder of its own (its
terminals' HOME, where the setup runs), so a clone lands there, from a git server on
loopback (tests/git_server.py).
"""

from __future__ import annotations

import pytest

from sandboxes.models import Environment, Sandbox, SandboxEvent
from tests.api.conftest import bearer_client, error_of
from tests.git_server import GitServer, listening

pytestmark = pytest.mark.django_db(transaction=True)

SMALL = "1vcpu_1gb_8gb"
VALUE = "env-secret-77f1-never-shown"


@pytest.fixture
def api(member, team):
    return bearer_client(member, team)


def home_of(store, sandbox_id: str):
    """The folder the in-memory provider runs the sandbox's terminals in (their HOME)."""
    (record,) = [r for r in store.instances.values() if r.spec.sandbox_id == sandbox_id]
    return record.workdir


@pytest.fixture
def repo_url(tmp_path):
    server = GitServer(tmp_path / "git", password="unused")
    server.add_repo("app", {"README": "main\n"}, branches={"next": {"README": "next\n"}})
    sock = listening("127.0.0.1")
    server.serve(sock)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/public/app.git"
    server.close()


def recipe(**extra):
    return {
        "name": "web-app",
        "description": "the web app, ready to work on",
        "preset": SMALL,
        "provider": "memory",
        "env": {"MODE": "dev"},
        "setup": "echo ready > ready.txt\n",
        "idle_timeout_seconds": 600,
        "delete_parked_after_seconds": 0,
        **extra,
    }


def test_an_environment_is_created_listed_changed_and_deleted_with_audit(memory_backend, api, team):
    created = api.post("/api/v1/environments", recipe(), format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["name"], body["preset"], body["env"]) == ("web-app", SMALL, {"MODE": "dev"})
    assert api.get("/api/v1/environments").json()["results"][0]["id"] == body["id"]
    assert api.get("/api/v1/environments/web-app").json()["id"] == body["id"]  # by name too

    changed = api.patch(
        f"/api/v1/environments/{body['id']}", {"env": {"MODE": "ci"}}, format="json"
    )
    assert changed.status_code == 200, changed.content
    assert changed.json()["env"] == {"MODE": "ci"}
    assert changed.json()["setup"] == "echo ready > ready.txt\n"  # the rest kept

    duplicate = api.post("/api/v1/environments", recipe(), format="json")
    assert duplicate.status_code == 400
    assert "already has an environment" in error_of(duplicate)["message"]

    assert api.delete(f"/api/v1/environments/{body['id']}").status_code == 204
    assert not Environment.objects.exists()
    actions = list(
        SandboxEvent.objects.filter(team=team, action__startswith="environment_")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["environment_create", "environment_update", "environment_delete"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "Not A Slug"}, "name"),
        ({"preset": "nope"}, "preset"),
        ({"snapshot_id": "memory_1vcpu_1gb_8gb_v9"}, "snapshot_id"),
        ({"secrets": ["MISSING"]}, "secrets"),
        ({"repo": {"url": "ftp://example.invalid/x"}}, "repo"),
        ({"services": [{"name": "Web!", "port": 80}]}, "services"),
        ({"network_policy": "allowlist"}, "network_allow"),
        ({"idle_timeout_seconds": -1}, "idle_timeout_seconds"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_recipes_are_refused_and_nothing_is_stored(memory_backend, api, change, field):
    response = api.post("/api/v1/environments", recipe(**change), format="json")
    assert response.status_code == 400, response.content
    assert any(name.startswith(field) for name in error_of(response)["fields"]), response.json()
    assert not Environment.objects.exists()
    assert not SandboxEvent.objects.filter(action__startswith="environment_").exists()


def test_viewers_read_only_tokens_and_other_teams_cannot_change_or_see_them(
    memory_backend, api, member, viewer, team, outsider, other_team
):
    environment_id = api.post("/api/v1/environments", recipe(), format="json").json()["id"]
    for client in (bearer_client(viewer, team), bearer_client(member, team, can_write=False)):
        assert client.get(f"/api/v1/environments/{environment_id}").status_code == 200
        patched = client.patch(f"/api/v1/environments/{environment_id}", {}, format="json")
        assert patched.status_code == 403
        started = client.post(f"/api/v1/environments/{environment_id}/start", {}, format="json")
        assert started.status_code == 403
    mallory = bearer_client(outsider, other_team)
    assert mallory.get("/api/v1/environments").json()["results"] == []
    assert mallory.get(f"/api/v1/environments/{environment_id}").status_code == 404
    assert mallory.delete(f"/api/v1/environments/{environment_id}").status_code == 404
    started = mallory.post(f"/api/v1/environments/{environment_id}/start", {}, format="json")
    assert started.status_code == 404
    assert not Sandbox.objects.exists()


def test_one_call_starts_a_sandbox_from_the_recipe(memory_backend, api, repo_url, team):
    assert api.put("/api/v1/secrets/API_KEY", {"value": VALUE}, format="json").status_code == 201
    environment = api.post(
        "/api/v1/environments",
        recipe(
            repo={"url": repo_url, "branch": "next"},
            secrets=["API_KEY"],
            services=[{"name": "web", "port": 8080}],
            setup='echo "key is $API_KEY"; cat README > seen.txt\n',
        ),
        format="json",
    ).json()
    started = api.post(
        f"/api/v1/environments/{environment['id']}/start", {"name": "mine"}, format="json"
    )
    assert started.status_code == 202, started.content
    sandbox = api.get(f"/api/v1/sandboxes/{started.json()['id']}").json()
    assert sandbox["status"] == "running"
    assert sandbox["setup_status"] == "succeeded", sandbox["setup_error"]
    assert sandbox["environment"] == environment["id"]
    assert sandbox["name"] == "mine"
    assert (sandbox["env"], sandbox["secrets"]) == ({"MODE": "dev"}, ["API_KEY"])
    # Lifecycle from the recipe: its own idle timeout, 0 (never) for deleting when parked.
    assert (sandbox["idle_timeout_seconds"], sandbox["delete_parked_after_seconds"]) == (600, None)
    assert [s["name"] for s in sandbox["services"]] == ["web"]
    home = home_of(memory_backend, sandbox["id"])
    assert (home / "app" / "seen.txt").read_text() == "next\n"
    # The recipe changing later changes no sandbox made from it.
    api.patch(f"/api/v1/environments/{environment['id']}", {"env": {}}, format="json")
    assert api.get(f"/api/v1/sandboxes/{sandbox['id']}").json()["env"] == {"MODE": "dev"}
    # Deleting it leaves the sandbox as it is, without the link.
    assert api.delete(f"/api/v1/environments/{environment['id']}").status_code == 204
    kept = api.get(f"/api/v1/sandboxes/{sandbox['id']}").json()
    assert (kept["status"], kept["environment"], kept["env"]) == ("running", None, {"MODE": "dev"})
    events = str(list(SandboxEvent.objects.values())).encode()
    assert b"key is [secret]" in events
    assert VALUE.encode() not in events


def test_cmux_start_takes_repo_url_branch_and_environment_id(memory_backend, api, repo_url):
    plain = api.post(
        "/api/sandboxes/start",
        {"snapshotId": "memory_1vcpu_1gb_8gb", "repoUrl": repo_url, "branch": "next"},
        format="json",
    )
    assert plain.status_code == 202, plain.content
    row = Sandbox.objects.get(pk=plain.json()["instanceId"])
    assert row.repo == {"url": repo_url, "branch": "next", "path": "app"}
    assert row.setup_status == "succeeded", row.setup_error
    assert (home_of(memory_backend, row.pk) / "app" / "README").read_text() == "next\n"

    environment = api.post("/api/v1/environments", recipe(), format="json").json()
    for ref in (environment["id"], "web-app"):
        started = api.post(
            "/api/sandboxes/start", {"environmentId": str(ref), "ttlSeconds": 900}, format="json"
        )
        assert started.status_code == 202, started.content
        row = Sandbox.objects.get(pk=started.json()["instanceId"])
        assert (row.environment_id, row.ttl_seconds, row.env) == (
            environment["id"],
            900,
            {"MODE": "dev"},
        )
    unknown = api.post("/api/sandboxes/start", {"environmentId": "nope"}, format="json")
    assert unknown.status_code == 400
    assert "environmentId" in error_of(unknown)["fields"]
    neither = api.post("/api/sandboxes/start", {}, format="json")
    assert neither.status_code == 400
    assert "snapshotId" in error_of(neither)["fields"]
