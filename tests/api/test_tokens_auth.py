"""Tokens over the API: create and show once, expiry, revoke, read-only, last use; sessions."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from sandboxes.models import ApiToken, Membership, Role, Sandbox
from sandboxes.services.tokens import digest_of
from tests.api.conftest import bearer_client, error_of

pytestmark = pytest.mark.django_db


def as_bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_a_created_token_is_shown_once_and_stored_hashed(api, member, team):
    response = api.post("/api/v1/tokens", {"name": "ci", "can_write": False}, format="json")
    assert response.status_code == 201
    body = response.json()
    secret = body["token"]
    assert secret.startswith("sbt_")
    assert len(secret) > 40
    assert body["prefix"] == secret[:12]
    assert body["can_write"] is False
    assert body["active"]
    row = ApiToken.objects.get(pk=body["id"])
    assert (row.user, row.team, row.name) == (member, team, "ci")
    assert row.digest == digest_of(secret)
    assert secret not in str(ApiToken.objects.values())
    # Never again: not in the list, not in the detail.
    listing = api.get("/api/v1/tokens")
    detail = api.get(f"/api/v1/tokens/{body['id']}")
    assert listing.status_code == detail.status_code == 200
    assert secret not in listing.content.decode()
    assert secret not in detail.content.decode()
    assert "token" not in detail.json()
    assert body["id"] in [t["id"] for t in listing.json()["results"]]
    # And it works.
    assert as_bearer(secret).get("/api/v1/sandboxes").status_code == 200


def test_an_expired_token_is_refused(member, team):
    client = bearer_client(member, team, expires_at=timezone.now() + timedelta(hours=1))
    assert client.get("/api/v1/sandboxes").status_code == 200
    ApiToken.objects.filter(pk=client.token.pk).update(expires_at=timezone.now())
    response = client.get("/api/v1/sandboxes")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert error_of(response)["code"] == "authentication_failed"


def test_expires_in_seconds_sets_the_expiry(api):
    response = api.post("/api/v1/tokens", {"expires_in_seconds": 600}, format="json")
    assert response.status_code == 201
    row = ApiToken.objects.get(pk=response.json()["id"])
    assert timedelta(seconds=590) < row.expires_at - timezone.now() <= timedelta(seconds=600)
    both = {"expires_in_seconds": 600, "expires_at": "2099-01-01T00:00:00Z"}
    response = api.post("/api/v1/tokens", both, format="json")
    assert response.status_code == 400
    assert "expires_in_seconds" in error_of(response)["fields"]
    past = api.post("/api/v1/tokens", {"expires_at": "2000-01-01T00:00:00Z"}, format="json")
    assert past.status_code == 400
    assert "expires_at" in error_of(past)["fields"]


def test_a_revoked_token_stops_working(api, member, team):
    other = bearer_client(member, team)
    assert other.get("/api/v1/config").status_code == 200
    response = api.delete(f"/api/v1/tokens/{other.token.pk}")
    assert response.status_code == 204
    assert ApiToken.objects.get(pk=other.token.pk).revoked_at is not None
    assert other.get("/api/v1/config").status_code == 401
    listed = {t["id"]: t for t in api.get("/api/v1/tokens").json()["results"]}
    assert listed[other.token.pk]["active"] is False


def test_someone_elses_token_cannot_be_seen_or_revoked(api, team_admin, team):
    admins = bearer_client(team_admin, team)
    assert api.get(f"/api/v1/tokens/{admins.token.pk}").status_code == 404
    assert api.delete(f"/api/v1/tokens/{admins.token.pk}").status_code == 404
    assert ApiToken.objects.get(pk=admins.token.pk).revoked_at is None
    assert admins.token.pk not in [t["id"] for t in api.get("/api/v1/tokens").json()["results"]]


def test_a_read_only_token_reads_but_every_write_is_403(memory_backend, member, team):
    client = bearer_client(member, team, can_write=False)
    assert client.get("/api/v1/sandboxes").status_code == 200
    for url, body in [
        ("/api/v1/sandboxes", {"preset": "1vcpu_1gb_8gb"}),
        ("/api/v1/tokens", {"name": "escalate"}),
        ("/api/sandboxes/start", {"snapshotId": "memory_1vcpu_1gb_8gb"}),
    ]:
        response = client.post(url, body, format="json")
        assert response.status_code == 403, url
        assert error_of(response)["code"] == "read_only_token"
    assert client.delete(f"/api/v1/tokens/{client.token.pk}").status_code == 403
    assert not Sandbox.objects.exists()
    assert ApiToken.objects.filter(user=member).count() == 1


def test_a_viewer_reads_cannot_write_and_gets_only_read_only_tokens(memory_backend, viewer, team):
    client = bearer_client(viewer, team)
    assert client.get("/api/v1/sandboxes").status_code == 200
    response = client.post("/api/v1/sandboxes", {"preset": "1vcpu_1gb_8gb"}, format="json")
    assert response.status_code == 403
    assert error_of(response)["code"] == "read_only_token"  # a viewer's tokens are read-only
    assert client.token.can_write is False  # made with can_write=True
    made = client.post("/api/v1/tokens", {"name": "mine", "can_write": True}, format="json")
    assert made.status_code == 403  # a read-only token mints no tokens
    assert not Sandbox.objects.exists()
    assert ApiToken.objects.filter(user=viewer).count() == 1


def test_a_writing_token_stops_writing_when_its_user_becomes_a_viewer(memory_backend, member, team):
    client = bearer_client(member, team)
    Membership.objects.filter(user=member, team=team).update(role=Role.VIEWER)
    assert client.get("/api/v1/sandboxes").status_code == 200
    response = client.post("/api/v1/sandboxes", {"preset": "1vcpu_1gb_8gb"}, format="json")
    assert response.status_code == 403
    assert error_of(response)["code"] == "forbidden"
    assert not Sandbox.objects.exists()


def test_last_use_is_recorded_at_most_once_a_minute(member, team):
    client = bearer_client(member, team)
    client.get("/api/v1/config")
    first = ApiToken.objects.get(pk=client.token.pk).last_used_at
    assert first is not None
    client.get("/api/v1/config")
    assert ApiToken.objects.get(pk=client.token.pk).last_used_at == first
    earlier = timezone.now() - timedelta(minutes=2)
    ApiToken.objects.filter(pk=client.token.pk).update(last_used_at=earlier)
    client.get("/api/v1/config")
    assert ApiToken.objects.get(pk=client.token.pk).last_used_at > earlier


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "not_authenticated"),
        ("Bearer", "authentication_failed"),
        ("Bearer a b", "authentication_failed"),
        ("Bearer sbt_not-a-real-token", "authentication_failed"),
        ("Bearer sbt_ünicode", "authentication_failed"),
        ("Basic YWxpY2U6cHc=", "not_authenticated"),
    ],
)
def test_missing_or_bad_credentials_answer_401(db, header, code):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/sandboxes")
    assert response.status_code == 401
    assert error_of(response)["code"] == code
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_a_token_dies_with_its_membership(member, team):
    client = bearer_client(member, team)
    Membership.objects.filter(user=member, team=team).delete()
    assert client.get("/api/v1/config").status_code == 401


def test_a_token_of_a_deactivated_user_is_refused(member, team):
    client = bearer_client(member, team)
    member.is_active = False
    member.save()
    assert client.get("/api/v1/config").status_code == 401


class TestSession:
    @pytest.fixture
    def session_client(self, member, other_team) -> APIClient:
        Membership.objects.create(user=member, team=other_team, role="member")
        client = APIClient(enforce_csrf_checks=True)
        client.force_login(member)
        return client

    def test_the_session_team_is_the_current_team_or_the_first(self, session_client):
        assert session_client.get("/api/v1/config").json()["team"]["slug"] == "alpha"
        session = session_client.session
        session["current_team"] = "beta"
        session.save()
        assert session_client.get("/api/v1/config").json()["team"]["slug"] == "beta"

    def test_session_writes_need_the_csrf_token(self, memory_backend, session_client):
        body = {"preset": "1vcpu_1gb_8gb"}
        refused = session_client.post("/api/v1/sandboxes", body, format="json")
        assert refused.status_code == 403
        assert "CSRF" in error_of(refused)["message"]
        csrf = secrets.token_hex(16)  # the dashboard's pages set this cookie
        session_client.cookies["csrftoken"] = csrf
        accepted = session_client.post(
            "/api/v1/sandboxes", body, format="json", HTTP_X_CSRFTOKEN=csrf
        )
        assert accepted.status_code == 202
        assert Sandbox.objects.get().team.slug == "alpha"

    def test_a_user_in_no_team_gets_403(self, django_user_model):
        lonely = django_user_model.objects.create_user("lonely", password="pw")
        client = APIClient()
        client.force_login(lonely)
        response = client.get("/api/v1/sandboxes")
        assert response.status_code == 403
        assert error_of(response)["code"] == "forbidden"
