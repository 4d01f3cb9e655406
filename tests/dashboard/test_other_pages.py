"""Snapshot versions browser, tokens, audit log, provider health, presets, team switcher."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from sandboxes.models import ActiveSnapshot, ApiToken, Membership, Snapshot, Team
from sandboxes.services import snapshots, tokens
from sandboxes.services.actors import Actor
from sandboxes.services.tokens import authenticate_token
from tests.dashboard.conftest import make_sandbox, signed_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def versions(running, member):
    """v2 taken from the running sandbox (a child of the shared v1), then v3 from v2."""
    actor = Actor.for_user(member)
    v2 = snapshots.take_snapshot(sandbox=running, actor=actor, label="deps")
    second = make_sandbox(running.team, member, snapshot_id=v2.snapshot_id)
    v3 = snapshots.take_snapshot(sandbox=second, actor=actor, label="app")
    return [Snapshot.objects.get(pk=v.pk) for v in (v2, v3)], second


def row_of(page: str, snapshot_id: str) -> str:
    return re.search(rf'<tr id="version-{snapshot_id}".*?</tr>', page, re.S).group(0)


def test_browser_lists_every_version_with_lineage_and_usage(alice, versions, member):
    (_v2, v3), _second = versions
    page = alice.get(reverse("snapshot-browser")).content.decode()
    v1_row = row_of(page, "memory_1vcpu_1gb_8gb_v1")
    assert 'badge ok">active' in v1_row
    assert "shared" in v1_row
    assert "1 sandbox" in v1_row  # the running one
    v3_row = row_of(page, v3.snapshot_id)
    assert re.search(r"from <a[^>]*>v2</a> ← <a[^>]*>v1</a>", v3_row)
    assert "app" in v3_row
    assert "alice" in v3_row
    assert "Start from" in v3_row
    # alice is a member: activation and deletion are shown with the reason, not offered
    assert "only the team&#x27;s owners and admins can delete snapshots (you are member)" in v3_row
    assert 'data-action="activate"' not in v3_row


def test_admins_roll_forward_and_back(versions, team_admin, team):
    (_v2, v3), _ = versions
    client = signed_in(team_admin)
    client.post(reverse("snapshot-activate", args=[v3.snapshot_id]))
    pointer = ActiveSnapshot.objects.get(team=team, preset_id="1vcpu_1gb_8gb")
    assert pointer.snapshot == v3
    page = client.get(reverse("snapshot-browser")).content.decode()
    assert 'badge ok">active' in row_of(page, v3.snapshot_id)
    assert "shared default" in row_of(page, "memory_1vcpu_1gb_8gb_v1")
    client.post(reverse("snapshot-activate", args=["memory_1vcpu_1gb_8gb_v1"]))
    pointer.refresh_from_db()
    assert pointer.snapshot.snapshot_id == "memory_1vcpu_1gb_8gb_v1"


def test_members_cannot_activate(alice, versions, team):
    (v2, _), _ = versions
    response = alice.post(reverse("snapshot-activate", args=[v2.snapshot_id]), follow=True)
    assert b"only the team&#x27;s owners and admins can activate" in response.content
    assert not ActiveSnapshot.objects.filter(team=team).exists()


def test_delete_only_what_nothing_uses(versions, team_admin):
    (v2, v3), _second = versions
    client = signed_in(team_admin)
    page = client.get(reverse("snapshot-browser")).content.decode()
    assert "1 sandbox(es) use it; delete them first" in row_of(page, v2.snapshot_id)
    assert 'data-action="delete"' in row_of(page, v3.snapshot_id)
    ask = client.post(reverse("snapshot-delete", args=[v3.snapshot_id]))
    assert b"It cannot be started again" in ask.content
    client.post(reverse("snapshot-delete", args=[v3.snapshot_id]), {"confirmed": "1"})
    v3.refresh_from_db()
    assert v3.status == "deleted"
    refused = client.post(
        reverse("snapshot-delete", args=[v2.snapshot_id]), {"confirmed": "1"}, follow=True
    )
    assert b"is used by sandbox(es)" in refused.content
    v2.refresh_from_db()
    assert v2.status == "ready"
    hidden = client.get(reverse("snapshot-browser")).content.decode()
    assert f'id="version-{v3.snapshot_id}"' not in hidden
    shown = client.get(reverse("snapshot-browser"), {"deleted": "1"}).content.decode()
    assert f'id="version-{v3.snapshot_id}"' in shown


def test_start_from_an_older_version_preselects_it(alice, versions):
    (v2, _), _ = versions
    page = alice.get(reverse("sandbox-new"), {"snapshot": v2.snapshot_id}).content.decode()
    assert f'<option value="{v2.snapshot_id}" selected>' in page


def test_version_page_and_compare(alice, versions):
    (v2, v3), second = versions
    page = alice.get(reverse("snapshot-detail", args=[v2.snapshot_id])).content.decode()
    assert second.pk in page  # used by
    assert v3.snapshot_id in page.split("Children")[1]
    pick = alice.get(reverse("snapshot-compare-pick"), {"v": [v3.snapshot_id, v2.snapshot_id]})
    assert pick["Location"] == reverse("snapshot-compare", args=[v3.snapshot_id, v2.snapshot_id])
    compare = alice.get(pick["Location"]).content.decode()
    assert f"{v3.snapshot_id} descends from {v2.snapshot_id}." in compare
    assert "deps" in compare
    assert "app" in compare
    one = alice.get(reverse("snapshot-compare-pick"), {"v": [v2.snapshot_id]}, follow=True)
    assert b"Choose exactly two different snapshots" in one.content


def test_token_secret_is_shown_once_and_works(alice, member, team):
    response = alice.post(reverse("token-list"), {"name": "ci", "expires_in": "30"})
    secret = re.search(
        r'id="new-secret" class="mono" readonly value="(sbt_[^"]+)"', response.content.decode()
    ).group(1)
    token = authenticate_token(secret)
    assert (token.user, token.team, token.name, token.can_write) == (member, team, "ci", True)
    assert "no-store" in response["Cache-Control"] or "no-cache" in response["Cache-Control"]
    listing = alice.get(reverse("token-list")).content.decode()
    assert secret not in listing
    assert token.prefix in listing
    alice.post(reverse("token-revoke", args=[token.pk]), {"confirmed": "1"})
    assert authenticate_token(secret) is None


def test_read_only_tokens(alice):
    alice.post(reverse("token-list"), {"name": "ro", "read_only": "on"})
    assert ApiToken.objects.get(name="ro").can_write is False


def test_audit_log_filters(alice, running, member):
    alice.post(reverse("sandbox-action", args=[running.pk, "pause"]))
    page = alice.get(reverse("audit-log"), {"action": "pause"}).content.decode()
    rows = re.findall(r'<tr class="outcome-(\w+)">', page)
    assert rows == ["succeeded", "requested"]
    by_sandbox = alice.get(reverse("audit-log"), {"sandbox": running.pk}).content.decode()
    assert by_sandbox.count(f">{running.pk}</a>") >= 4
    nobody = alice.get(reverse("audit-log"), {"actor": "zed"}).content.decode()
    assert "No events match." in nobody
    bad = alice.get(reverse("audit-log"), {"since": "yesterday"}).content.decode()
    assert "since: Enter a valid date/time." in bad


def test_provider_health_and_presets(alice, memory_backend):
    health = alice.get(reverse("provider-health")).content.decode()
    assert "memory" in health
    assert "reachable" in health
    assert "latency 0.0 ms" in health
    assert (
        'metrics <span class="muted small">— switched off in the in-memory test provider' in health
    )
    presets = alice.get(reverse("preset-list")).content.decode()
    assert "memory_1vcpu_1gb_8gb_v1" in presets
    assert "?preset=1vcpu_1gb_8gb&amp;provider=memory" in presets


def test_team_switcher(alice, member, running, memory_backend):
    gamma = Team.objects.create(slug="gamma", name="Gamma")
    Membership.objects.create(user=member, team=gamma, role="owner")
    page = alice.get(reverse("sandbox-list")).content.decode()
    assert 'id="team-select"' in page
    assert running.pk in page
    detail = reverse("sandbox-detail", args=[running.pk])
    response = alice.post(reverse("team-switch"), {"team": "gamma", "next": detail})
    assert response["Location"] == reverse("sandbox-list")  # the old team's page is a 404 now
    assert alice.session["current_team"] == "gamma"
    assert running.pk not in alice.get(reverse("sandbox-list")).content.decode()
    assert alice.get(detail).status_code == 404
    refused = alice.post(reverse("team-switch"), {"team": "beta"})
    assert refused.status_code == 404
    assert alice.session["current_team"] == "gamma"


def test_a_viewers_tokens_are_read_only(viewer, team):
    """As through the API: promoting the viewer later must not turn old tokens into writers."""
    response = signed_in(viewer).post(reverse("token-list"), {"name": "mine"})
    assert response.status_code == 200
    assert ApiToken.objects.get(name="mine").can_write is False


def test_members_cannot_reach_other_members_tokens(alice, member, team_admin, team):
    """Only owners and admins see (and revoke) other members' tokens, as on the list."""
    theirs, _ = tokens.create_api_token(
        user=team_admin, team=team, actor=Actor.for_user(team_admin), name="admins"
    )
    url = reverse("token-revoke", args=[theirs.pk])
    assert alice.post(url).status_code == 404  # not a confirmation page naming the token
    assert alice.post(url, {"confirmed": "1"}).status_code == 404
    assert ApiToken.objects.get(pk=theirs.pk).revoked_at is None
    mine, _ = tokens.create_api_token(user=member, team=team, actor=Actor.for_user(member))
    signed_in(team_admin).post(reverse("token-revoke", args=[mine.pk]), {"confirmed": "1"})
    assert ApiToken.objects.get(pk=mine.pk).revoked_at is not None


def test_team_secrets_are_set_listed_by_name_and_never_shown(alice, viewer, team):
    value = "hunter2-very-secret"
    saved = alice.post(reverse("secret-list"), {"name": "DEPLOY_TOKEN", "value": value})
    assert saved.status_code == 302  # a reload cannot post the value again
    page = alice.get(reverse("secret-list")).content.decode()
    assert "DEPLOY_TOKEN" in page
    assert value not in page
    bad = alice.post(reverse("secret-list"), {"name": "PATH", "value": "x"})
    assert bad.status_code == 400
    assert "PATH is reserved" in bad.content.decode()
    (field,) = re.findall(r'<input type="password" name="value"[^>]*>', bad.content.decode())
    assert " value=" not in field  # what was typed is not sent back
    watcher = signed_in(viewer)
    refused = watcher.post(reverse("secret-list"), {"name": "OTHER", "value": "x"})
    assert refused.status_code == 400
    assert "cannot change its secrets" in refused.content.decode()
    assert "Set a secret" not in watcher.get(reverse("secret-list")).content.decode()
    alice.post(reverse("secret-delete", args=["DEPLOY_TOKEN"]), {"confirmed": "1"})
    after = alice.get(reverse("secret-list")).content.decode()
    assert "Deleted secret DEPLOY_TOKEN." in after
    assert '<td class="mono">DEPLOY_TOKEN</td>' not in after


def test_old_versions_links_lead_to_the_snapshot_pages(client):
    """The snapshot pages were first published under /versions/; bookmarks still work."""
    assert client.get("/versions/?provider=memory")["Location"] == "/snapshots/?provider=memory"
    old = client.get("/versions/memory_1vcpu_1gb_8gb_v1/compare/memory_1vcpu_1gb_8gb_v2/")
    assert old["Location"] == "/snapshots/memory_1vcpu_1gb_8gb_v1/compare/memory_1vcpu_1gb_8gb_v2/"
