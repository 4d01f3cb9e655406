"""The sandbox list, the new-sandbox form, live status and lifecycle actions."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from sandboxes.models import Sandbox, SandboxEvent
from sandboxes.services import lifecycle
from sandboxes.services.actors import Actor
from tests import taskqueue
from tests.dashboard.conftest import make_sandbox, signed_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_pages_need_a_signed_in_member(client, memory_backend, django_user_model):
    response = client.get(reverse("sandbox-list"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    htmx = client.get(reverse("sandbox-list"), headers={"HX-Request": "true"})
    assert htmx["HX-Redirect"] == reverse("login")
    loner = django_user_model.objects.create_user("loner", password="pw")
    page = signed_in(loner).get(reverse("sandbox-list"))
    assert page.status_code == 403
    assert b"not in a team" in page.content


def test_sign_in_lands_on_the_list(client, memory_backend, member):
    response = client.post(
        reverse("login"), {"username": "alice", "password": "pw-alice"}, follow=True
    )
    assert response.redirect_chain[-1][0] == reverse("sandbox-list")
    assert b"Sandboxes" in response.content


def test_list_shows_the_team_sandboxes_with_filters(alice, running, team, member, memory_backend):
    other = make_sandbox(team, member, name="other")
    lifecycle.pause_sandbox(sandbox=other, actor=Actor.for_user(member))
    page = alice.get(reverse("sandbox-list")).content.decode()
    assert running.pk in page
    assert other.pk in page
    paused_only = alice.get(reverse("sandbox-list"), {"status": "paused"}).content.decode()
    assert other.pk in paused_only
    assert running.pk not in paused_only
    found = alice.get(reverse("sandbox-list"), {"q": "dev"}).content.decode()
    assert running.pk in found
    assert other.pk not in found
    # The status chips count every status the team has.
    assert re.search(r"running <span class=\"count\">1</span>", page, re.I)
    assert re.search(r"paused <span class=\"count\">1</span>", page, re.I)


def test_htmx_filters_get_only_the_list_region(htmx, running):
    response = htmx.get(reverse("sandbox-list"), {"status": "running"})
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="sandbox-list"')
    assert "<html" not in body
    assert running.pk in body
    assert 'id="status-inputs" hx-swap-oob="true"' in body
    assert "HX-Request" in response["Vary"]


def test_transitional_rows_poll_and_settled_rows_stop(
    queued_tasks, htmx, alice, memory_backend, team, member
):
    sandbox = make_sandbox(team, member)
    assert sandbox.status == "starting"
    row = re.search(
        rf'<tr id="row-{sandbox.pk}"[^>]*>', alice.get(reverse("sandbox-list")).content.decode()
    )
    assert 'hx-trigger="every 1s"' in row.group(0)
    url = reverse("sandbox-status", args=[sandbox.pk])
    polling = htmx.get(url, {"part": "row"})
    assert polling.status_code == 200
    assert 'data-status="starting"' in polling.content.decode()
    assert taskqueue.drain() == 1
    settled = htmx.get(url, {"part": "row"})
    assert settled.status_code == 286  # HTMX stops polling
    body = settled.content.decode()
    assert 'data-status="running"' in body
    assert "hx-trigger" not in body


def test_status_panel_swaps_the_sections_the_status_governs(
    queued_tasks, htmx, memory_backend, team, member
):
    sandbox = make_sandbox(team, member)
    url = reverse("sandbox-status", args=[sandbox.pk])
    same = htmx.get(url, {"part": "panel", "shown": "starting"}).content.decode()
    assert 'id="sandbox-status"' in same
    assert 'hx-swap-oob="true"' in same
    assert 'id="sandbox-console"' not in same
    taskqueue.drain()
    changed = htmx.get(url, {"part": "panel", "shown": "starting"})
    body = changed.content.decode()
    assert changed.status_code == 286
    assert (
        '<section id="sandbox-console" class="card" aria-labelledby="console-h" hx-swap-oob="true">'
        in body
    )
    assert 'id="exec-command"' in body
    assert "disabled" not in body.split('id="exec-command"')[1].split(">")[0]
    assert 'id="sandbox-timeline"' in body
    assert "start</strong> succeeded" in body


def test_a_poll_without_htmx_goes_to_the_page(alice, running):
    response = alice.get(reverse("sandbox-status", args=[running.pk]))
    assert response.status_code == 302
    assert response["Location"] == reverse("sandbox-detail", args=[running.pk])


def test_actions_follow_the_status_and_the_capabilities(alice, running, memory_backend):
    page = alice.get(reverse("sandbox-detail", args=[running.pk])).content.decode()
    offered = set(re.findall(r'data-action="(\w+)"', page))
    assert {"pause", "hibernate", "stop", "delete", "exec", "snapshot"} <= offered
    assert "resume" not in offered
    assert "start" not in offered
    memory_backend.disabled.add("supports_pause")
    page = alice.get(reverse("sandbox-detail", args=[running.pk])).content.decode()
    button = re.search(r'<button[^>]*data-action="pause"[^>]*>', page).group(0)
    assert "disabled" in button
    assert "memory cannot pause: switched off in the in-memory test provider" in page


def test_pause_and_resume_through_htmx_return_the_panel(htmx, running):
    url = reverse("sandbox-action", args=[running.pk, "pause"])
    response = htmx.post(url, {"part": "panel"})
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<section id="sandbox-status"')
    running.refresh_from_db()
    assert running.status == "paused"
    assert 'data-action="resume"' in body
    htmx.post(reverse("sandbox-action", args=[running.pk, "resume"]), {"part": "row"})
    running.refresh_from_db()
    assert running.status == "running"


def test_actions_without_htmx_redirect_back_with_a_message(alice, running):
    url = reverse("sandbox-action", args=[running.pk, "stop"])
    response = alice.post(url, {"next": reverse("sandbox-list")}, follow=True)
    assert response.redirect_chain == [(reverse("sandbox-list"), 302)]
    assert b"Stop: requested" in response.content
    running.refresh_from_db()
    assert running.status == "stopped"
    # An action the status does not allow is refused with the service's reason.
    again = alice.post(url, follow=True)
    assert b"cannot stop a sandbox that is stopped" in again.content


def test_next_must_point_into_the_site(alice, running):
    url = reverse("sandbox-action", args=[running.pk, "pause"])
    response = alice.post(url, {"next": "https://evil.example/"})
    assert response["Location"] == reverse("sandbox-detail", args=[running.pk])


def test_delete_asks_first_without_javascript(alice, running):
    url = reverse("sandbox-action", args=[running.pk, "delete"])
    ask = alice.post(url, {"next": "/sandboxes/"})
    assert ask.status_code == 200
    assert b"Its files are gone for good" in ask.content
    assert b'name="confirmed" value="1"' in ask.content
    assert b'name="next" value="/sandboxes/"' in ask.content
    running.refresh_from_db()
    assert running.status == "running"
    alice.post(url, {"confirmed": "1"})
    running.refresh_from_db()
    assert running.status == "deleted"


def test_viewers_see_no_usable_actions(memory_backend, running, viewer):
    client = signed_in(viewer)
    page = client.get(reverse("sandbox-detail", args=[running.pk])).content.decode()
    button = re.search(r'<button[^>]*data-action="pause"[^>]*>', page).group(0)
    assert "disabled" in button
    assert "(viewer) is read-only" in page
    response = client.post(reverse("sandbox-action", args=[running.pk, "pause"]), follow=True)
    assert b"your role in this team cannot pause" in response.content
    running.refresh_from_db()
    assert running.status == "running"


def test_bulk_stop_and_delete(alice, memory_backend, team, member):
    first, second = make_sandbox(team, member), make_sandbox(team, member)
    response = alice.post(
        reverse("sandbox-bulk"), {"action": "stop", "ids": [first.pk, second.pk]}, follow=True
    )
    assert b"Stopping 2 sandbox(es)." in response.content
    assert set(Sandbox.objects.values_list("status", flat=True)) == {"stopped"}
    ask = alice.post(reverse("sandbox-bulk"), {"action": "delete", "ids": [first.pk]})
    assert b"Delete 1 sandbox(es)?" in ask.content
    alice.post(reverse("sandbox-bulk"), {"action": "delete", "ids": [first.pk], "confirmed": "1"})
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == ("deleted", "stopped")


def test_bulk_over_htmx_reports_refusals_and_returns_the_list(htmx, running, team, member):
    stopped = make_sandbox(team, member)
    lifecycle.stop_sandbox(sandbox=stopped, actor=Actor.for_user(member))
    response = htmx.post(
        reverse("sandbox-bulk"),
        {"action": "stop", "ids": [running.pk, stopped.pk], "query": "status=running"},
    )
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="sandbox-list"')
    assert "Stopping 1 sandbox(es)." in body
    assert f"{stopped}: cannot stop a sandbox that is stopped" in body


def test_new_form_defaults_to_the_active_version(alice, memory_backend):
    page = alice.get(reverse("sandbox-new")).content.decode()
    assert '<option value="" selected>Active version (memory_1vcpu_1gb_8gb_v1)</option>' in page
    assert "memory_1vcpu_1gb_8gb_v1" in page
    key = re.search(r'name="idempotency_key" value="(\w+)"', page).group(1)
    assert len(key) == 32


def test_create_lands_on_the_detail_page_once_per_form(alice, htmx, memory_backend, team):
    form = {
        "preset": "1vcpu_1gb_8gb",
        "provider": "memory",
        "snapshot": "",
        "name": "web",
        "ttl": "2h",
        "ttl_action": "delete",
        "idle_timeout": "15m",
        "idempotency_key": "a" * 32,
    }
    response = alice.post(reverse("sandbox-new"), form)
    sandbox = Sandbox.objects.get(team=team)
    assert response["Location"] == reverse("sandbox-detail", args=[sandbox.pk])
    assert (sandbox.name, sandbox.ttl_seconds, sandbox.idle_timeout_seconds) == ("web", 7200, 900)
    assert sandbox.snapshot.snapshot_id == "memory_1vcpu_1gb_8gb_v1"
    # A double submit of the same form (here: over HTMX) makes no second sandbox.
    again = htmx.post(reverse("sandbox-new"), form)
    assert again["HX-Redirect"] == reverse("sandbox-detail", args=[sandbox.pk])
    assert Sandbox.objects.filter(team=team).count() == 1
    # The same form sent with other values is refused, as an API retry would be.
    changed = alice.post(reverse("sandbox-new"), {**form, "name": "api", "ttl": "1h"})
    assert changed.status_code == 400
    assert b"This form already created a sandbox with other values" in changed.content
    assert Sandbox.objects.filter(team=team).count() == 1


def test_create_shows_errors_next_to_the_fields(alice, htmx, memory_backend, team):
    form = {
        "preset": "1vcpu_1gb_8gb",
        "provider": "memory",
        "ttl": "soon",
        "ttl_action": "stop",
        "idempotency_key": "b" * 32,
    }
    response = alice.post(reverse("sandbox-new"), form)
    assert response.status_code == 400
    assert b"write a duration like 90s" in response.content
    # A preset with no version on the provider: the service's reason, on the form.
    form.update(ttl="", preset="2vcpu_4gb_16gb")
    fragment = htmx.post(reverse("sandbox-new"), form)
    assert fragment.status_code == 200  # HTMX swaps 2xx only
    assert b"has no active version on memory" in fragment.content
    assert not Sandbox.objects.filter(team=team).exists()


def test_version_choices_follow_preset_and_provider(htmx, memory_backend):
    response = htmx.get(reverse("sandbox-new"), {"preset": "2vcpu_4gb_16gb", "provider": "memory"})
    body = response.content.decode()
    assert 'id="version-field"' in body
    assert "memory_1vcpu_1gb_8gb_v1" not in body


def test_list_query_count_does_not_grow_with_rows(
    alice, memory_backend, team, member, django_assert_num_queries
):
    from tests.dashboard.rows import add_sandboxes

    add_sandboxes(team, member, 10)
    list_url = reverse("sandbox-list")
    _count(alice, list_url)  # the first visit also stores the current team in the session
    ten = _count(alice, list_url)
    add_sandboxes(team, member, 990)
    with django_assert_num_queries(ten):
        assert alice.get(list_url).status_code == 200
    with django_assert_num_queries(ten):  # a page full of transitional rows costs the same
        assert alice.get(list_url, {"status": "starting"}).status_code == 200
    poll = reverse("sandbox-status", args=[Sandbox.objects.first().pk]) + "?part=row"
    # session, user, membership + team, the sandbox: nothing per row or per page
    with django_assert_num_queries(4):
        alice.get(poll, headers={"HX-Request": "true"})


def _count(client, url) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_events_of_actions_name_the_user(alice, running, member):
    alice.post(reverse("sandbox-action", args=[running.pk, "pause"]))
    event = SandboxEvent.objects.filter(sandbox=running, action="pause").order_by("id").first()
    assert (event.actor_user, event.outcome) == (member, "requested")


def test_each_row_acts_on_its_own_sandbox(alice, memory_backend, team, member):
    """Rows in the same status share one rendering of their forms: ids and names differ."""
    first = make_sandbox(team, member, name='<b>"bold"</b>')
    second = make_sandbox(team, member, name="plain")
    page = alice.get(reverse("sandbox-list")).content.decode()
    for sandbox, shown in ((first, "&lt;b&gt;&quot;bold&quot;&lt;/b&gt;"), (second, "plain")):
        row = re.search(rf'<tr id="row-{sandbox.pk}".*?</tr>', page, re.S).group(0)
        urls = set(re.findall(r'action="(/sandboxes/[^"]+)"', row))
        assert urls == {
            reverse("sandbox-action", args=[sandbox.pk, name])
            for name in ("pause", "hibernate", "stop", "delete")
        }
        assert f'hx-target="#row-{sandbox.pk}"' in row
        assert f'aria-label="Pause {shown}"' in row
        assert f'hx-confirm="Delete {shown}? Its files are gone for good."' in row
    assert "<b>" not in page.split('id="sandbox-list"')[1]
