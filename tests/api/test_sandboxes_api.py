"""Sandboxes over the API against the in-memory provider, tasks run on commit."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from providers.errors import Unavailable
from sandboxes.models import Sandbox, SandboxEvent, Snapshot
from sandboxes.services import lifecycle
from sandboxes.services.actors import Actor
from sandboxes.services.snapshots import import_snapshot
from sandboxes.states import Status
from tests.api.conftest import bearer_client, error_of

pytestmark = pytest.mark.django_db(transaction=True)
SMALL = "1vcpu_1gb_8gb"


def create(api, **body):
    body.setdefault("preset", SMALL)
    response = api.post("/api/v1/sandboxes", body, format="json")
    assert response.status_code == 202, response.content
    return response.json()


def url(sandbox_id: str, action: str = "") -> str:
    return f"/api/v1/sandboxes/{sandbox_id}" + (f"/{action}" if action else "")


class TestCreate:
    def test_create_answers_202_starting_and_the_sandbox_starts(self, memory_backend, api, team):
        body = {
            "preset": SMALL,
            "provider": "memory",
            "name": "dev",
            "ttl_seconds": 600,
            "ttl_action": "delete",
            "idle_timeout_seconds": 300,
            "metadata": {"ticket": "42"},
        }
        response = api.post("/api/v1/sandboxes", body, format="json")
        assert response.status_code == 202
        data = response.json()
        assert data["status"] == "starting"
        assert data["transitional"] is True
        assert response["Location"] == url(data["id"])
        assert (data["name"], data["preset"], data["provider"]) == ("dev", SMALL, "memory")
        assert data["snapshot_id"] == "memory_1vcpu_1gb_8gb_v1"
        assert data["metadata"] == {"ticket": "42"}
        assert (data["ttl_seconds"], data["ttl_action"], data["idle_timeout_seconds"]) == (
            600,
            "delete",
            300,
        )
        row = Sandbox.objects.get(pk=data["id"])
        assert row.team == team
        assert row.status == Status.RUNNING
        assert row.provider_ref in memory_backend.instances

    @pytest.mark.parametrize(
        ("snapshot_id", "version"),
        [("memory_1vcpu_1gb_8gb_v2", 2), ("memory_1vcpu_1gb_8gb", 1)],
    )
    def test_create_from_a_version_or_the_active_one(
        self, memory_backend, api, snapshot_id, version
    ):
        import_snapshot(provider="memory", preset_id=SMALL, ref="base", actor=Actor.system())
        response = api.post("/api/v1/sandboxes", {"snapshot_id": snapshot_id}, format="json")
        assert response.status_code == 202
        assert response.json()["snapshot_id"] == f"memory_1vcpu_1gb_8gb_v{version}"

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"preset": SMALL, "colour": "red"}, "colour"),
            ({"preset": SMALL, "metadata": {"k": 5}}, "metadata.k"),
            ({"preset": SMALL, "metadata": {"bad key!": "v"}}, "metadata"),
            ({"preset": SMALL, "metadata": "nope"}, "metadata"),
            ({"preset": SMALL, "ttl_seconds": "60"}, "ttl_seconds"),
            ({"preset": SMALL, "ttl_seconds": 0}, "ttl_seconds"),
            ({"preset": SMALL, "ttl_action": "explode"}, "ttl_action"),
            ({"preset": SMALL, "name": "a\nb"}, "name"),
            ({"preset": SMALL, "name": 7}, "name"),
            ({"preset": "9vcpu_9gb_9gb"}, "preset"),
            ({"preset": SMALL, "provider": "nope"}, "provider"),
            ({"snapshot_id": "nonsense"}, "snapshot_id"),
            ({}, "preset"),
        ],
    )
    def test_bad_input_is_refused_with_the_field_and_creates_nothing(
        self, memory_backend, api, body, field
    ):
        response = api.post("/api/v1/sandboxes", body, format="json")
        assert response.status_code == 400, response.content
        error = error_of(response)
        assert error["code"] == "invalid"
        assert field in error["fields"], error
        assert not Sandbox.objects.exists()

    def test_a_body_that_is_not_an_object_is_refused(self, memory_backend, api):
        for body in ("[1, 2]", "null", '"x"', "{broken"):
            response = api.post("/api/v1/sandboxes", body, content_type="application/json")
            assert response.status_code == 400, body
            assert error_of(response)["code"] in {"invalid", "malformed_request"}
        form = api.post("/api/v1/sandboxes", "preset=x", content_type="text/plain")
        assert form.status_code == 415
        assert error_of(form)["code"] == "unsupported_media_type"
        assert not Sandbox.objects.exists()


class TestIdempotency:
    def test_a_retried_create_answers_the_first_sandbox(self, memory_backend, api):
        body = {"preset": SMALL, "name": "once", "metadata": {"run": "7"}}
        first = api.post("/api/v1/sandboxes", body, format="json", HTTP_IDEMPOTENCY_KEY="run-7")
        again = api.post("/api/v1/sandboxes", body, format="json", HTTP_IDEMPOTENCY_KEY="run-7")
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        assert again["Idempotent-Replayed"] == "true"
        assert again["Location"] == first["Location"]
        assert Sandbox.objects.count() == 1
        assert len(memory_backend.instances) == 1
        assert SandboxEvent.objects.filter(action="create").count() == 1

    def test_the_same_key_with_a_different_body_is_a_conflict(self, memory_backend, api):
        api.post("/api/v1/sandboxes", {"preset": SMALL}, format="json", HTTP_IDEMPOTENCY_KEY="k")
        response = api.post(
            "/api/v1/sandboxes",
            {"preset": SMALL, "name": "other"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="k",
        )
        assert response.status_code == 409
        error = error_of(response)
        assert error["code"] == "idempotency_key_reused"
        assert list(error["fields"]) == ["name"]
        assert Sandbox.objects.count() == 1

    def test_keys_are_per_team(self, memory_backend, api, outsider, other_team):
        other = bearer_client(outsider, other_team)
        a = api.post(
            "/api/v1/sandboxes", {"preset": SMALL}, format="json", HTTP_IDEMPOTENCY_KEY="k"
        )
        b = other.post(
            "/api/v1/sandboxes", {"preset": SMALL}, format="json", HTTP_IDEMPOTENCY_KEY="k"
        )
        assert a.json()["id"] != b.json()["id"]
        assert "Idempotent-Replayed" not in b

    def test_an_overlong_key_is_refused(self, memory_backend, api):
        response = api.post(
            "/api/v1/sandboxes", {"preset": SMALL}, format="json", HTTP_IDEMPOTENCY_KEY="k" * 201
        )
        assert response.status_code == 400
        assert "idempotency_key" in error_of(response)["fields"]


class TestRead:
    def test_list_filters_and_paginates(self, memory_backend, api, team):
        ids = [create(api, name=f"s{i}")["id"] for i in range(3)]
        api.post(url(ids[0], "pause"), format="json")
        assert api.delete(url(ids[2])).status_code == 202
        everything = api.get("/api/v1/sandboxes").json()
        assert everything["count"] == 2  # deleted ones only on request
        assert [s["id"] for s in everything["results"]] == [ids[1], ids[0]]  # newest first
        paused = api.get("/api/v1/sandboxes", {"status": "paused"}).json()
        assert [s["id"] for s in paused["results"]] == [ids[0]]
        deleted = api.get("/api/v1/sandboxes", {"status": "deleted"}).json()
        assert [s["id"] for s in deleted["results"]] == [ids[2]]
        assert api.get("/api/v1/sandboxes", {"provider": "nope"}).json()["count"] == 0
        assert api.get("/api/v1/sandboxes", {"preset": SMALL}).json()["count"] == 2
        page = api.get("/api/v1/sandboxes", {"page_size": 1, "page": 2}).json()
        assert [s["id"] for s in page["results"]] == [ids[0]]
        assert page["next"] is None
        bad = api.get("/api/v1/sandboxes", {"status": "sleepy"})
        assert bad.status_code == 400
        assert "status" in error_of(bad)["fields"]
        assert api.get("/api/v1/sandboxes", {"page": 99}).status_code == 404

    @pytest.mark.parametrize("count", [5, 50])
    def test_the_list_takes_the_same_number_of_queries_whatever_the_page_holds(
        self, memory_backend, api, team, django_assert_num_queries, count
    ):
        seed(team, count, Snapshot.objects.get(provider="memory"))
        api.get("/api/v1/sandboxes")  # the token's last use is written once a minute
        # the address's failed-authentication counter, token (with its user's role),
        # throttle counter, count, page: nothing per row.
        with django_assert_num_queries(5):
            response = api.get("/api/v1/sandboxes", {"page_size": 50})
        assert len(response.json()["results"]) == count

    def test_get_shows_a_deleted_sandbox(self, memory_backend, api):
        sandbox_id = create(api)["id"]
        assert api.delete(url(sandbox_id)).status_code == 202
        data = api.get(url(sandbox_id)).json()
        assert data["status"] == "deleted"
        assert data["deleted_at"] is not None
        assert api.get(url("sbx-nope")).status_code == 404


def seed(team, count: int, snapshot: Snapshot) -> None:
    Sandbox.objects.bulk_create(
        Sandbox(
            team=team,
            provider="memory",
            preset=snapshot.preset,
            snapshot=snapshot,
            vcpus=1,
            memory_mb=1024,
            disk_gb=8,
            status=Status.RUNNING,
            name=f"seed-{i}",
        )
        for i in range(count)
    )


class TestWait:
    def starting(self, api) -> str:
        """A sandbox whose start was asked for but that no worker has picked up yet."""
        sandbox_id = create(api)["id"]
        Sandbox.objects.filter(pk=sandbox_id).update(status=Status.STOPPED)
        Sandbox.objects.filter(pk=sandbox_id).update(status=Status.STARTING, operation="start")
        return sandbox_id

    def test_wait_returns_once_the_sandbox_settles(self, memory_backend, api):
        sandbox_id = self.starting(api)
        worker = threading.Timer(0.3, self.work, args=(sandbox_id,))
        worker.start()
        response = api.get(url(sandbox_id), {"wait": 30})
        worker.join()
        assert response.status_code == 200
        assert response.json()["status"] == "running"
        assert Sandbox.objects.get(pk=sandbox_id).status == Status.RUNNING

    @staticmethod
    def work(sandbox_id: str) -> None:
        try:
            lifecycle.perform_operation(sandbox_id=sandbox_id)
        finally:
            connection.close()

    def test_wait_gives_up_after_n_seconds_with_the_current_status(self, memory_backend, api):
        sandbox_id = self.starting(api)
        response = api.get(url(sandbox_id), {"wait": 1})
        assert response.status_code == 200
        assert response.json()["status"] == "starting"

    def test_without_wait_the_status_is_answered_at_once(self, memory_backend, api):
        sandbox_id = self.starting(api)
        assert api.get(url(sandbox_id)).json()["status"] == "starting"

    @pytest.mark.parametrize("wait", ["61", "-1", "soon", "1.5"])
    def test_a_bad_wait_is_refused(self, memory_backend, api, wait):
        sandbox_id = create(api)["id"]
        response = api.get(url(sandbox_id), {"wait": wait})
        assert response.status_code == 400
        assert "wait" in error_of(response)["fields"]


class TestActions:
    @pytest.mark.parametrize(
        ("action", "transitional", "final"),
        [
            ("pause", "pausing", Status.PAUSED),
            ("hibernate", "pausing", Status.HIBERNATED),
            ("stop", "stopping", Status.STOPPED),
        ],
    )
    def test_actions_answer_202_and_the_sandbox_settles(
        self, memory_backend, api, action, transitional, final
    ):
        sandbox_id = create(api)["id"]
        response = api.post(url(sandbox_id, action), format="json")
        assert response.status_code == 202
        assert response.json()["status"] == transitional
        assert Sandbox.objects.get(pk=sandbox_id).status == final
        back = "resume" if action in ("pause", "hibernate") else "start"
        assert api.post(url(sandbox_id, back)).status_code == 202
        assert Sandbox.objects.get(pk=sandbox_id).status == Status.RUNNING

    def test_an_illegal_action_is_409_and_changes_nothing(self, memory_backend, api):
        sandbox_id = create(api)["id"]
        response = api.post(url(sandbox_id, "resume"), format="json")
        assert response.status_code == 409
        assert error_of(response)["code"] == "illegal_transition"
        assert Sandbox.objects.get(pk=sandbox_id).status == Status.RUNNING

    def test_a_missing_capability_is_409_naming_it(self, memory_backend, api):
        sandbox_id = create(api)["id"]
        memory_backend.disabled.add("supports_pause")
        response = api.post(url(sandbox_id, "pause"), format="json")
        assert response.status_code == 409
        error = error_of(response)
        assert (error["code"], error["capability"]) == ("capability_missing", "supports_pause")
        assert error["reason"]
        assert Sandbox.objects.get(pk=sandbox_id).status == Status.RUNNING
        ssh = api.get(url(sandbox_id, "ssh"))
        assert ssh.status_code == 409
        assert error_of(ssh)["capability"] == "supports_ssh"

    def test_an_action_refuses_a_body(self, memory_backend, api):
        sandbox_id = create(api)["id"]
        response = api.post(url(sandbox_id, "stop"), {"force": True}, format="json")
        assert response.status_code == 400
        assert "force" in error_of(response)["fields"]
        assert Sandbox.objects.get(pk=sandbox_id).status == Status.RUNNING

    def test_delete_answers_202_deleting(self, memory_backend, api):
        sandbox = create(api)
        response = api.delete(url(sandbox["id"]))
        assert response.status_code == 202
        assert response.json()["status"] == "deleting"
        assert Sandbox.objects.get(pk=sandbox["id"]).status == Status.DELETED
        assert memory_backend.instances == {}
        again = api.delete(url(sandbox["id"]))
        assert again.status_code == 409

    def test_patch_changes_only_what_is_given(self, memory_backend, api):
        sandbox_id = create(api, name="before", metadata={"a": "1"})["id"]
        response = api.patch(url(sandbox_id), {"ttl_seconds": 120}, format="json")
        assert response.status_code == 200
        data = response.json()
        assert (data["ttl_seconds"], data["name"], data["metadata"]) == (120, "before", {"a": "1"})
        assert data["expires_at"] is not None
        cleared = api.patch(url(sandbox_id), {"ttl_seconds": None}, format="json").json()
        assert cleared["ttl_seconds"] is None
        assert cleared["expires_at"] is None
        bad = api.patch(url(sandbox_id), {"status": "running"}, format="json")
        assert bad.status_code == 400
        assert "status" in error_of(bad)["fields"]


class TestInteractive:
    def test_exec_answers_exit_code_and_output(self, memory_backend, api):
        sandbox_id = create(api)["id"]
        response = api.post(
            url(sandbox_id, "exec"),
            {"command": "echo out; echo err >&2; exit 3", "timeout_seconds": 10},
            format="json",
        )
        assert response.status_code == 200
        assert response.json() == {
            "exit_code": 3,
            "stdout": "out\n",
            "stderr": "err\n",
            "stdout_truncated": False,
            "stderr_truncated": False,
            "timed_out": False,
        }
        argv = api.post(url(sandbox_id, "exec"), {"command": ["echo", "a b"]}, format="json")
        assert argv.json()["stdout"] == "a b\n"

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"command": ""},
            {"command": []},
            {"command": [1]},
            {"command": "x", "timeout_seconds": 0},
        ],
    )
    def test_exec_refuses_bad_input(self, memory_backend, api, body):
        sandbox_id = create(api)["id"]
        response = api.post(url(sandbox_id, "exec"), body, format="json")
        assert response.status_code == 400

    def test_exec_on_a_stopped_sandbox_is_409(self, memory_backend, api):
        sandbox_id = create(api)["id"]
        api.post(url(sandbox_id, "stop"))
        response = api.post(url(sandbox_id, "exec"), {"command": "true"}, format="json")
        assert response.status_code == 409
        assert error_of(response)["code"] == "illegal_transition"

    def test_a_provider_outage_is_503_with_retry_after(self, memory_backend, api):
        sandbox_id = create(api)["id"]
        memory_backend.faults["exec"] = [Unavailable("the back end is down")]
        response = api.post(url(sandbox_id, "exec"), {"command": "true"}, format="json")
        assert response.status_code == 503
        assert error_of(response)["code"] == "provider_unavailable"
        assert int(response["Retry-After"]) > 0

    def test_snapshot_answers_the_new_version(self, memory_backend, api):
        sandbox_id = create(api)["id"]
        response = api.post(url(sandbox_id, "snapshot"), {"label": "after setup"}, format="json")
        assert response.status_code == 202
        data = response.json()
        assert data["snapshot_id"] == "memory_1vcpu_1gb_8gb_v2"
        assert data["status"] == "creating"
        assert data["parent"] == "memory_1vcpu_1gb_8gb_v1"
        assert data["source_sandbox"] == sandbox_id
        version = api.get(f"/api/v1/snapshots/{data['snapshot_id']}").json()
        assert version["status"] == "ready"
        assert version["label"] == "after setup"

    def test_services_expose_and_hide(self, memory_backend, api):
        sandbox_id = create(api)["id"]
        response = api.post(
            url(sandbox_id, "services"), {"name": "web", "port": 8080}, format="json"
        )
        assert response.status_code == 201
        assert response.json()["url"].startswith("http://")
        assert api.get(url(sandbox_id)).json()["services"] == [response.json()]
        assert api.delete(url(sandbox_id, "services/web")).status_code == 204
        assert api.get(url(sandbox_id)).json()["services"] == []
        missing = api.delete(url(sandbox_id, "services/web"))
        assert missing.status_code == 404
        bad = api.post(url(sandbox_id, "services"), {"name": "Web!", "port": 0}, format="json")
        assert bad.status_code == 400
        assert set(error_of(bad)["fields"]) == {"name", "port"}

    def test_wake_on(self, memory_backend, api):
        sandbox_id = create(api)["id"]
        response = api.put(url(sandbox_id, "wake-on"), {"http": True, "ssh": False}, format="json")
        assert response.status_code == 200
        assert response.json()["wake_on"] == {"http": True, "ssh": False}
        record = memory_backend.instances[Sandbox.objects.get(pk=sandbox_id).provider_ref]
        assert record.wake_on == (True, False)
        partial = api.put(url(sandbox_id, "wake-on"), {"http": True}, format="json")
        assert partial.status_code == 400
        assert "ssh" in error_of(partial)["fields"]
        loose = api.put(url(sandbox_id, "wake-on"), {"http": "yes", "ssh": 0}, format="json")
        assert loose.status_code == 400

    def test_events_are_the_audit_trail(self, memory_backend, api):
        sandbox_id = create(api)["id"]
        api.post(url(sandbox_id, "stop"))
        events = api.get(url(sandbox_id, "events")).json()["results"]
        assert [(e["action"], e["outcome"]) for e in events] == [
            ("create", "requested"),
            ("start", "succeeded"),
            ("stop", "requested"),
            ("stop", "succeeded"),
        ]
        assert events[0]["actor_kind"] == "token"
        assert api.token.prefix in events[0]["actor"]
        stops = api.get(url(sandbox_id, "events"), {"action": "stop"}).json()
        assert stops["count"] == 2


class TestQuotas:
    @pytest.mark.parametrize(
        ("limits", "quota"),
        [
            ({"max_sandboxes": 1}, "max_sandboxes"),
            ({"max_vcpus": 1}, "max_vcpus"),
            ({"max_memory_mb": 1024}, "max_memory_mb"),
        ],
    )
    def test_a_quota_refuses_with_403_naming_it(self, memory_backend, api, team, limits, quota):
        for name, value in limits.items():
            setattr(team, name, value)
        team.save()
        create(api)
        response = api.post("/api/v1/sandboxes", {"preset": SMALL}, format="json")
        assert response.status_code == 403
        error = error_of(response)
        assert error["code"] == f"quota_{quota}"
        assert (error["quota"], error["limit"]) == (quota, next(iter(limits.values())))
        assert Sandbox.objects.count() == 1
        usage = api.get("/api/v1/config").json()["team"]
        assert usage["quotas"][quota] == next(iter(limits.values()))
        assert usage["usage"]["sandboxes"] == 1


def test_the_fast_representation_is_what_the_declared_fields_give(memory_backend, api, settings):
    """SandboxSerializer writes its declared fields with row_writer for speed; it must say
    the same as DRF's field-by-field path (which is what the OpenAPI schema describes)."""
    from rest_framework import serializers

    from sandboxes import selectors
    from sandboxes.api.serializers import SandboxSerializer

    settings.TIME_ZONE = "Europe/Paris"  # offsets other than Z are written the same way too
    sandbox_id = create(api, name="full", ttl_seconds=60, metadata={"a": "b"})["id"]
    api.post(url(sandbox_id, "services"), {"name": "web", "port": 80}, format="json")
    sandbox = selectors.get_sandbox(
        team=Sandbox.objects.get(pk=sandbox_id).team, sandbox_id=sandbox_id
    )
    declared = serializers.Serializer.to_representation(
        SandboxSerializer(), selectors.sandbox_row(sandbox)
    )
    assert declared["services"][0]["name"] == "web"
    assert declared["expires_at"] is not None
    assert "+01:00" in declared["created_at"] or "+02:00" in declared["created_at"]
    (row,) = selectors.sandbox_rows(selectors.sandboxes_for_team(team=sandbox.team))
    assert SandboxSerializer().to_representation(sandbox) == declared
    assert SandboxSerializer().to_representation(row) == declared


@pytest.mark.parametrize(
    ("since", "status"),
    [
        ("2000-01-01T00:00:00-19:40", 200),  # beyond PostgreSQL's offsets: sent as UTC
        ("0001-01-01T00:00:00+05:00", 400),  # before year 1 in UTC
        ("yesterday", 400),
    ],
)
def test_event_time_filters_take_any_iso_time(memory_backend, api, since, status):
    sandbox_id = create(api)["id"]
    response = api.get(url(sandbox_id, "events"), {"since": since})
    assert response.status_code == status, response.content
    if status == 200:
        assert response.json()["count"] == 2
    else:
        assert "since" in error_of(response)["fields"]


@pytest.mark.parametrize(
    "query",
    [
        {"outcome": ""},
        {"outcome": "maybe"},
        {"since": "2000-01-01"},  # a date, not a date-time
        {"since": "2000-01-01T00:00:00"},  # no offset
        {"until": ""},
    ],
)
def test_event_filters_refuse_what_the_schema_does_not_allow(memory_backend, api, query):
    sandbox_id = create(api)["id"]
    response = api.get(url(sandbox_id, "events"), query)
    assert response.status_code == 400
    assert set(error_of(response)["fields"]) == set(query)


def test_an_empty_status_filter_is_refused_but_an_empty_search_is_no_filter(memory_backend, api):
    create(api)
    assert api.get("/api/v1/sandboxes", {"status": ""}).status_code == 400
    assert api.get("/api/v1/sandboxes", {"q": ""}).json()["count"] == 1
