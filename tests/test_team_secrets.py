"""Team secrets: encrypted at rest, write-only, reaching a sandbox only as variables.

A secret must never come back out: not in an API response, an audit event, a log line
or a page. The search for it at the end of the journey test covers all of them.
"""

from __future__ import annotations

import logging

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command

from sandboxes.models import Sandbox, SandboxEvent, TeamSecret
from sandboxes.services import team_secrets
from sandboxes.services.actors import Actor
from tests.api.conftest import bearer_client, error_of

pytestmark = pytest.mark.django_db(transaction=True)

VALUE = "tok-3f9a:8d2 with spaces and 'quotes'"


@pytest.fixture
def api(member, team):
    return bearer_client(member, team)


def test_a_secret_reaches_exec_as_a_variable_and_nowhere_else(
    memory_backend, api, client, member, team, caplog
):
    caplog.set_level(logging.DEBUG)
    put = api.put("/api/v1/secrets/DEPLOY_TOKEN", {"value": VALUE}, format="json")
    assert put.status_code == 201
    assert set(put.json()) == {"name", "created_at", "updated_at", "updated_by"}
    created = api.post(
        "/api/v1/sandboxes",
        {
            "preset": "1vcpu_1gb_8gb",
            "env": {"GREETING": "  hello  "},
            "secrets": ["DEPLOY_TOKEN"],
        },
        format="json",
    )
    assert created.status_code == 202, created.content
    sandbox_id = created.json()["id"]
    shown = api.get(f"/api/v1/sandboxes/{sandbox_id}").json()
    assert shown["env"] == {"GREETING": "  hello  "}  # kept exactly
    assert shown["secrets"] == ["DEPLOY_TOKEN"]
    ran = api.post(
        f"/api/v1/sandboxes/{sandbox_id}/exec",
        {"command": 'printf "%s|%s" "$DEPLOY_TOKEN" "$GREETING"'},
        format="json",
    )
    assert ran.status_code == 200, ran.content
    assert ran.json()["stdout"] == f"{VALUE}|  hello  "

    # Everywhere a person or a log could see it: nothing.
    client.force_login(member)
    pages = [client.get(f"/sandboxes/{sandbox_id}/"), client.get("/audit/")]
    assert [page.status_code for page in pages] == [200, 200]
    assert b"DEPLOY_TOKEN" in pages[1].content  # the event names the secret, only that
    seen = [
        api.get("/api/v1/secrets").content,
        api.get(f"/api/v1/sandboxes/{sandbox_id}").content,
        api.get(f"/api/v1/sandboxes/{sandbox_id}/events").content,
        api.get("/api/v1/sandboxes").content,
        *(page.content for page in pages),
        str(list(SandboxEvent.objects.values())).encode(),
        caplog.text.encode(),
        TeamSecret.objects.get(name="DEPLOY_TOKEN").ciphertext.encode(),  # at rest
    ]
    for text in seen:
        assert VALUE.encode() not in text
    assert SandboxEvent.objects.filter(action="secret_set", data__name="DEPLOY_TOKEN").exists()


def test_bad_names_unknown_secrets_and_clashes_are_refused_and_change_nothing(memory_backend, api):
    assert api.put("/api/v1/secrets/1BAD", {"value": "x"}, format="json").status_code == 400
    assert api.put("/api/v1/secrets/PATH", {"value": "x"}, format="json").status_code == 400
    too_big = {"value": "x" * 70000}
    assert api.put("/api/v1/secrets/BIG", too_big, format="json").status_code == 400
    unknown = api.post(
        "/api/v1/sandboxes", {"preset": "1vcpu_1gb_8gb", "secrets": ["NOPE"]}, format="json"
    )
    assert unknown.status_code == 400
    assert "NOPE" in error_of(unknown)["message"]
    api.put("/api/v1/secrets/TOKEN", {"value": "x"}, format="json")
    clash = api.post(
        "/api/v1/sandboxes",
        {"preset": "1vcpu_1gb_8gb", "secrets": ["TOKEN"], "env": {"TOKEN": "plain"}},
        format="json",
    )
    assert clash.status_code == 400
    bad_env = api.post(
        "/api/v1/sandboxes", {"preset": "1vcpu_1gb_8gb", "env": {"A-B": "x"}}, format="json"
    )
    assert bad_env.status_code == 400
    assert not Sandbox.objects.exists()
    assert list(TeamSecret.objects.values_list("name", flat=True)) == ["TOKEN"]


def test_viewers_read_only_tokens_and_other_teams_cannot_touch_secrets(
    memory_backend, member, viewer, team, outsider, other_team
):
    bearer_client(member, team).put("/api/v1/secrets/TOKEN", {"value": "x"}, format="json")
    for client in (
        bearer_client(viewer, team),
        bearer_client(member, team, can_write=False),
    ):
        assert client.put("/api/v1/secrets/TOKEN", {"value": "y"}, format="json").status_code == 403
        assert client.delete("/api/v1/secrets/TOKEN").status_code == 403
    mallory = bearer_client(outsider, other_team)
    assert mallory.get("/api/v1/secrets").json()["results"] == []
    assert mallory.delete("/api/v1/secrets/TOKEN").status_code == 404  # not hers
    created = mallory.post(
        "/api/v1/sandboxes", {"preset": "1vcpu_1gb_8gb", "secrets": ["TOKEN"]}, format="json"
    )
    assert created.status_code == 400  # another team's secret is not there for her
    assert team_secrets.environment_for(Sandbox(team=team, secret_names=["TOKEN"])) == {
        "TOKEN": "x"
    }


def test_keys_rotate_without_losing_a_secret(memory_backend, team, member, settings):
    old = settings.SANDBOX_SECRET_KEYS[0]
    team_secrets.set_secret(team=team, actor=Actor.for_user(member), name="TOKEN", value=VALUE)
    new = Fernet.generate_key().decode()
    settings.SANDBOX_SECRET_KEYS = [new, old]  # the new key first: it encrypts
    call_command("rotate_secret_keys")
    settings.SANDBOX_SECRET_KEYS = [new]  # the old key is gone
    assert team_secrets.environment_for(Sandbox(team=team, secret_names=["TOKEN"])) == {
        "TOKEN": VALUE
    }
    settings.SANDBOX_SECRET_KEYS = [old]  # without the key that encrypted it: a clear error
    with pytest.raises(team_secrets.SecretsNotConfigured, match="rotate_secret_keys"):
        team_secrets.environment_for(Sandbox(team=team, secret_names=["TOKEN"]))


def test_without_keys_secrets_are_refused_with_what_to_set(memory_backend, api, settings):
    settings.SANDBOX_SECRET_KEYS = []
    refused = api.put("/api/v1/secrets/TOKEN", {"value": "x"}, format="json")
    assert refused.status_code == 409
    assert "SANDBOX_SECRET_KEYS" in error_of(refused)["message"]
    assert not TeamSecret.objects.exists()


def test_a_deleted_secret_makes_exec_fail_clearly(memory_backend, api):
    api.put("/api/v1/secrets/TOKEN", {"value": "x"}, format="json")
    sandbox_id = api.post(
        "/api/v1/sandboxes", {"preset": "1vcpu_1gb_8gb", "secrets": ["TOKEN"]}, format="json"
    ).json()["id"]
    assert api.delete("/api/v1/secrets/TOKEN").status_code == 204
    ran = api.post(f"/api/v1/sandboxes/{sandbox_id}/exec", {"command": "true"}, format="json")
    assert ran.status_code == 409
    assert "TOKEN" in error_of(ran)["message"]
