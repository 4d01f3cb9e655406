"""Admin writes to teams, memberships, tokens and snapshot versions go through the services:
each leaves an audit event naming the operator, and a refusal shows on the form."""

from __future__ import annotations

import pytest

from sandboxes.models import (
    ActorKind,
    ApiToken,
    Environment,
    Membership,
    Role,
    SandboxEvent,
    Snapshot,
    Team,
    TeamSecret,
)
from sandboxes.services import environments, team_secrets
from sandboxes.services.actors import Actor
from sandboxes.services.tokens import create_api_token

pytestmark = pytest.mark.django_db


def only_event(action: str) -> SandboxEvent:
    [event] = SandboxEvent.objects.filter(action=action)
    return event


def assert_by_operator(event: SandboxEvent, admin_user) -> None:
    assert event.actor_kind == ActorKind.USER
    assert event.actor_user == admin_user
    assert event.actor_label == admin_user.get_username()


@pytest.fixture
def owner(django_user_model, team):
    user = django_user_model.objects.create_user(username="olga", password="pw")
    Membership.objects.create(user=user, team=team, role=Role.OWNER)
    return user


def test_a_role_changed_in_the_admin_is_audited(admin_client, admin_user, team, owner, member):
    membership = Membership.objects.get(user=member, team=team)
    response = admin_client.post(
        f"/admin/sandboxes/membership/{membership.pk}/change/", {"role": Role.ADMIN}
    )
    assert response.status_code == 302, response.content
    membership.refresh_from_db()
    assert membership.role == Role.ADMIN
    event = only_event("change_role")
    assert_by_operator(event, admin_user)
    assert event.team == team
    assert event.data == {"user": "alice", "from": Role.MEMBER, "to": Role.ADMIN}


def test_a_member_added_in_the_admin_is_audited(
    admin_client, admin_user, team, owner, django_user_model
):
    bob = django_user_model.objects.create_user(username="bob")
    response = admin_client.post(
        "/admin/sandboxes/membership/add/", {"user": bob.pk, "team": team.pk, "role": "viewer"}
    )
    assert response.status_code == 302, response.content
    assert Membership.objects.get(user=bob, team=team).role == Role.VIEWER
    event = only_event("add_member")
    assert_by_operator(event, admin_user)
    assert event.data == {"user": "bob", "role": "viewer"}


def test_a_member_removed_in_the_admin_is_audited(admin_client, admin_user, team, owner, member):
    membership = Membership.objects.get(user=member, team=team)
    response = admin_client.post(
        f"/admin/sandboxes/membership/{membership.pk}/delete/", {"post": "yes"}
    )
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    event = only_event("remove_member")
    assert_by_operator(event, admin_user)
    assert event.data == {"user": "alice", "role": Role.MEMBER}


def test_members_removed_in_bulk_are_each_audited(admin_client, team, owner, member, viewer):
    selected = Membership.objects.filter(user__in=[member, viewer]).values_list("pk", flat=True)
    admin_client.post(
        "/admin/sandboxes/membership/",
        {"action": "delete_selected", "_selected_action": list(selected), "post": "yes"},
    )
    assert set(Membership.objects.values_list("user__username", flat=True)) == {"olga"}
    assert SandboxEvent.objects.filter(action="remove_member").count() == 2


def test_demoting_the_last_owner_is_a_form_error(admin_client, team, owner):
    membership = Membership.objects.get(user=owner)
    response = admin_client.post(
        f"/admin/sandboxes/membership/{membership.pk}/change/", {"role": Role.MEMBER}
    )
    assert response.status_code == 200  # the form again, with the reason
    assert b"last owner" in response.content
    membership.refresh_from_db()
    assert membership.role == Role.OWNER
    assert not SandboxEvent.objects.filter(action="change_role").exists()


def test_removing_the_last_owner_is_refused_not_a_server_error(admin_client, team, owner):
    membership = Membership.objects.get(user=owner)
    url = f"/admin/sandboxes/membership/{membership.pk}/delete/"
    response = admin_client.post(url, {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert b"last owner" in response.content
    assert Membership.objects.filter(pk=membership.pk).exists()
    assert not SandboxEvent.objects.filter(action="remove_member").exists()


def test_team_changes_in_the_admin_are_audited(admin_client, admin_user, team):
    response = admin_client.post(
        f"/admin/sandboxes/team/{team.pk}/change/",
        {
            "name": "Alpha",
            "max_sandboxes": "3",
            "max_vcpus": "",
            "max_memory_mb": "",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content
    team.refresh_from_db()
    assert team.max_sandboxes == 3
    event = only_event("update_team")
    assert_by_operator(event, admin_user)
    assert event.data == {"changes": {"max_sandboxes": [None, 3]}}

    response = admin_client.post(
        "/admin/sandboxes/team/add/",
        {
            "slug": "gamma",
            "name": "Gamma",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content
    assert_by_operator(only_event("create_team"), admin_user)
    # What the service refuses is a form error.
    response = admin_client.post(
        "/admin/sandboxes/team/add/",
        {
            "slug": "Not_A_Slug",
            "name": "x",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200
    assert b"lowercase letters" in response.content
    assert not Team.objects.filter(slug="Not_A_Slug").exists()


def test_a_token_revoked_in_the_admin_is_audited_and_never_deleted(
    admin_client, admin_user, team, member
):
    token, _ = create_api_token(user=member, team=team, actor=Actor.for_user(member))
    url = "/admin/sandboxes/apitoken/"
    assert admin_client.post(f"{url}{token.pk}/delete/", {"post": "yes"}).status_code == 403
    assert admin_client.post(f"{url}{token.pk}/change/", {"name": "x"}).status_code == 403
    response = admin_client.post(url, {"action": "revoke", "_selected_action": [token.pk]})
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert token.name == ""
    assert_by_operator(only_event("revoke_token"), admin_user)
    assert ApiToken.objects.filter(pk=token.pk).exists()


def test_a_version_label_edited_in_the_admin_is_audited(memory_backend, admin_client, admin_user):
    version = Snapshot.objects.get(snapshot_id="memory_1vcpu_1gb_8gb_v1")
    response = admin_client.post(
        f"/admin/sandboxes/snapshot/{version.pk}/change/", {"label": "golden"}
    )
    assert response.status_code == 302, response.content
    version.refresh_from_db()
    assert version.label == "golden"
    event = only_event("edit_version")
    assert_by_operator(event, admin_user)
    assert event.snapshot == version
    assert event.data == {"snapshot_id": version.snapshot_id, "label": ["base", "golden"]}


def test_environments_secrets_and_builds_are_shown_read_only_and_no_secret_value(
    memory_backend, admin_client, team, owner
):
    """The admin lists what teams keep, but changes go through the team's own services (which
    audit them), and a secret's value never reaches a page, not even an operator's."""
    actor = Actor.for_user(owner)
    team_secrets.set_secret(team=team, actor=actor, name="DEPLOY_KEY", value="s3cr3t-value-x")
    environment = environments.create_environment(
        team=team,
        actor=actor,
        data={"name": "web", "preset": "1vcpu_1gb_8gb", "provider": "memory"},
    )
    secret = TeamSecret.objects.get(name="DEPLOY_KEY")
    pages = {
        "/admin/sandboxes/environment/": "web",
        f"/admin/sandboxes/environment/{environment.pk}/change/": "web",
        "/admin/sandboxes/teamsecret/": "DEPLOY_KEY",
        f"/admin/sandboxes/teamsecret/{secret.pk}/change/": "DEPLOY_KEY",
        "/admin/sandboxes/imagebuild/": "image build",
    }
    for url, shown in pages.items():
        page = admin_client.get(url).content.decode()
        assert shown in page, url
        assert "s3cr3t-value-x" not in page, url
        assert secret.ciphertext not in page, url
    before = Environment.objects.get(pk=environment.pk).name
    response = admin_client.post(
        f"/admin/sandboxes/environment/{environment.pk}/change/", {"name": "renamed"}
    )
    assert response.status_code == 403
    assert Environment.objects.get(pk=environment.pk).name == before
    assert admin_client.post(f"/admin/sandboxes/teamsecret/{secret.pk}/delete/").status_code == 403
    assert TeamSecret.objects.filter(pk=secret.pk).exists()
