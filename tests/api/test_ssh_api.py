"""``POST /api/v1/sandboxes/{id}/ssh`` (a short-lived SSH login) and ``/api/v1/ssh-keys``."""

from __future__ import annotations

import hashlib

import pytest

from sandboxes.models import SshKey, SshToken
from sandboxes.services import lifecycle
from sandboxes.services import ssh as ssh_service
from sandboxes.services.actors import Actor
from tests.api.conftest import bearer_client, error_of

pytestmark = pytest.mark.django_db(transaction=True)
KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKfbCVBdc8ceDgiJdxE6mWZxJ3Eyy0GUnbhTIQ6xM8Fk alice@laptop"
)


@pytest.fixture
def sandbox(memory_backend, team, member):
    created = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(member), preset_id="1vcpu_1gb_8gb"
    )
    created.refresh_from_db()
    return created


def test_a_token_is_shown_once_with_the_command_to_run(api, sandbox, settings):
    settings.SANDBOX_SSH_PUBLIC_HOST = "ssh.example.com"
    settings.SANDBOX_SSH_PUBLIC_PORT = 2200
    settings.SANDBOX_SSH_TOKEN_SECONDS = 120
    response = api.post(f"/api/v1/sandboxes/{sandbox.pk}/ssh")
    assert response.status_code == 201, response.content
    body = response.json()
    token = body["token"]
    assert ssh_service.is_token(token)
    assert body["command"] == f"ssh -p 2200 {token}@ssh.example.com"
    assert (body["host"], body["port"]) == ("ssh.example.com", 2200)
    row = SshToken.objects.get()
    assert row.digest == hashlib.sha256(token.encode()).hexdigest()
    assert row.sandbox_id == sandbox.pk
    assert 110 <= (row.expires_at - row.created_at).total_seconds() <= 120
    login = ssh_service.login_with_token(login=token, client="test")
    assert login is not None
    assert login.sandbox.pk == sandbox.pk


def test_viewers_read_only_tokens_and_other_teams_get_none(
    sandbox, viewer, team, outsider_api, member
):
    url = f"/api/v1/sandboxes/{sandbox.pk}/ssh"
    assert bearer_client(viewer, team).post(url).status_code == 403
    assert bearer_client(member, team, can_write=False).post(url).status_code == 403
    assert outsider_api.post(url).status_code == 404
    assert not SshToken.objects.exists()


def test_keys_are_added_listed_and_removed(api, member):
    added = api.post("/api/v1/ssh-keys", {"name": "laptop", "public_key": KEY}, format="json")
    assert added.status_code == 201, added.content
    body = added.json()
    assert body["fingerprint"].startswith("SHA256:")
    assert body["public_key"] == " ".join(KEY.split()[:2])
    again = api.post("/api/v1/ssh-keys", {"public_key": KEY}, format="json")
    assert again.status_code == 400
    assert "public_key" in error_of(again)["fields"]
    bad = api.post("/api/v1/ssh-keys", {"public_key": "ssh-ed25519 nonsense"}, format="json")
    assert bad.status_code == 400
    listed = api.get("/api/v1/ssh-keys").json()["results"]
    assert [k["name"] for k in listed] == ["laptop"]
    assert api.delete(f"/api/v1/ssh-keys/{body['id']}").status_code == 204
    assert not SshKey.objects.exists()


def test_anothers_key_cannot_be_removed(api, outsider_api, outsider):
    key = ssh_service.add_key(actor=Actor.for_user(outsider), name="m", public_key=KEY)
    assert api.delete(f"/api/v1/ssh-keys/{key.pk}").status_code == 404
    assert SshKey.objects.filter(pk=key.pk).exists()
