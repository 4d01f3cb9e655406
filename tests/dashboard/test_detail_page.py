"""The sandbox detail page: settings, services, wake-on, exec console, snapshots, charts."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from django.urls import reverse

from providers.base import MetricSample
from sandboxes.models import Snapshot
from tests import taskqueue

pytestmark = pytest.mark.django_db(transaction=True)


def detail(client, sandbox) -> str:
    return client.get(reverse("sandbox-detail", args=[sandbox.pk])).content.decode()


def test_detail_shows_status_metadata_and_timeline(alice, running):
    page = detail(alice, running)
    assert 'data-status="running"' in page
    assert "memory_1vcpu_1gb_8gb_v1" in page
    timeline = page.split('id="sandbox-timeline"')[1]
    assert timeline.index("create</strong> requested") < timeline.index("start</strong> succeeded")
    # settled: the panel does not poll
    panel = re.search(r'<section id="sandbox-status"[^>]*>', page).group(0)
    assert "hx-trigger" not in panel


def test_exec_shows_exit_code_and_escaped_output(htmx, alice, running):
    url = reverse("sandbox-exec", args=[running.pk])
    response = htmx.post(url, {"command": "echo '<b>hi</b>'; echo oops >&2; exit 3", "timeout": 5})
    body = response.content.decode()
    assert '<strong id="exec-exit-code" class="error">3</strong>' in body
    assert "&lt;b&gt;hi&lt;/b&gt;" in body
    assert "<b>hi</b>" not in body
    assert re.search(r'<pre id="exec-stderr"[^>]*>oops\n</pre>', body)
    # Without JavaScript the same form renders the whole page with the result.
    page = alice.post(url, {"command": "echo plain", "timeout": 5}).content.decode()
    assert "<html" in page
    assert re.search(r'<pre id="exec-stdout"[^>]*>plain\n</pre>', page)


def test_exec_refusal_is_shown_in_the_console(htmx, running, alice):
    alice.post(reverse("sandbox-action", args=[running.pk, "pause"]))
    body = htmx.post(reverse("sandbox-exec", args=[running.pk]), {"command": "true"}).content
    assert b"cannot exec a sandbox that is paused" in body
    empty = htmx.post(reverse("sandbox-exec", args=[running.pk]), {"command": ""}).content
    assert b"command: This field is required." in empty


def test_services_are_exposed_linked_and_removed(htmx, running):
    add = htmx.post(
        reverse("sandbox-service-add", args=[running.pk]), {"name": "web", "port": 8080}
    )
    body = add.content.decode()
    running.refresh_from_db()
    url = running.services[0]["url"]
    # Linked to its preview URL through the dashboard (which signs the browser in there;
    # a provider's own URL, such as local's http+unix socket, is for the control plane
    # only); the preview URL and the provider's URL are shown.
    assert f'href="/preview/{running.pk}/8080/"' in body
    assert f"http://8080-{running.pk}.localhost" in body
    assert url in body
    assert "Exposed web at" in body
    # Who may open it: private by default, changed from the page.
    assert '<option value="private" selected>' in body
    shared = htmx.post(
        reverse("sandbox-service-sharing", args=[running.pk, "web"]), {"sharing": "public"}
    )
    assert '<option value="public" selected>' in shared.content.decode()
    running.refresh_from_db()
    assert running.services[0]["sharing"] == "public"
    refused = htmx.post(
        reverse("sandbox-service-sharing", args=[running.pk, "web"]), {"sharing": "world"}
    )
    assert "sharing: one of private, team, public" in refused.content.decode()
    running.refresh_from_db()
    assert running.services[0]["sharing"] == "public"
    bad = htmx.post(reverse("sandbox-service-add", args=[running.pk]), {"name": "Web!", "port": 1})
    assert b"1-32 lowercase letters" in bad.content
    htmx.post(reverse("sandbox-service-hide", args=[running.pk, "web"]))
    running.refresh_from_db()
    assert running.services == []


def test_wake_on_is_saved(htmx, running, memory_backend):
    htmx.post(reverse("sandbox-wake-on", args=[running.pk]), {"http": "on"})
    running.refresh_from_db()
    assert (running.wake_on_http, running.wake_on_ssh) == (True, False)
    assert memory_backend.instances[running.provider_ref].wake_on == (True, False)


def test_settings_are_edited(alice, htmx, running):
    url = reverse("sandbox-settings", args=[running.pk])
    response = htmx.post(
        url,
        {
            "name": "renamed",
            "ttl": "1h30m",
            "ttl_action": "pause",
            "idle_timeout": "",
            "metadata": "ticket=42\nowner = me",
        },
    )
    assert b"Settings saved." in response.content
    assert b'value="1h30m"' in response.content
    running.refresh_from_db()
    assert (running.name, running.ttl_seconds, running.ttl_action) == ("renamed", 5400, "pause")
    assert running.idle_timeout_seconds is None
    assert running.metadata == {"ticket": "42", "owner": "me"}
    bad = alice.post(url, {"ttl_action": "pause", "metadata": "no equals sign"})
    assert bad.status_code == 400
    assert b"line 1: write key=value" in bad.content
    running.refresh_from_db()
    assert running.metadata == {"ticket": "42", "owner": "me"}


def test_a_nul_character_in_metadata_is_refused_and_changes_nothing(alice, running):
    """PostgreSQL cannot store it in JSON: a form error, not a 500 (the API refuses it too)."""
    url = reverse("sandbox-settings", args=[running.pk])
    bad = alice.post(url, {"name": "renamed", "ttl_action": "pause", "metadata": "k=a\x00b"})
    assert bad.status_code == 400
    assert b"NUL" in bad.content
    running.refresh_from_db()
    assert (running.name, running.metadata) == ("dev", {})


def test_snapshot_is_taken_and_its_section_polls_until_ready(queued_tasks, htmx, running, member):
    response = htmx.post(reverse("sandbox-snapshot", args=[running.pk]), {"label": "deps"})
    body = response.content.decode()
    assert "Taking snapshot memory_1vcpu_1gb_8gb_v2" in body
    assert 'hx-trigger="every 1s"' in body
    url = reverse("sandbox-snapshots", args=[running.pk])
    assert htmx.get(url).status_code == 200
    taskqueue.drain()
    done = htmx.get(url)
    assert done.status_code == 286
    version = Snapshot.objects.get(snapshot_id="memory_1vcpu_1gb_8gb_v2")
    assert (version.status, version.label, version.created_by) == ("ready", "deps", member)
    assert 'data-status="ready"' in done.content.decode()


def test_charts_say_when_the_provider_reports_nothing(htmx, running):
    body = htmx.get(reverse("sandbox-metrics", args=[running.pk])).content.decode()
    assert "not reported by memory" in body
    assert "<svg" not in body


def test_charts_draw_the_provider_samples(htmx, alice, running, memory_backend):
    memory_backend.enabled.add("supports_metrics")
    memory_backend.samples[running.provider_ref] = [
        MetricSample(datetime(2025, 1, 1, 0, 0, i, tzinfo=UTC), cpu, mem * 2**20)
        for i, (cpu, mem) in enumerate([(0.1, 100), (0.9, 300), (0.5, 200)])
    ]
    body = htmx.get(reverse("sandbox-metrics", args=[running.pk])).content.decode()
    assert body.count("<polyline") == 2
    assert "now 0.50 vCPU, peak 0.90 vCPU" in body
    assert "now 200 MiB, peak 300 MiB" in body
    assert 'hx-trigger="every 15s"' in body  # keeps refreshing while running
    page = alice.get(reverse("sandbox-metrics", args=[running.pk])).content.decode()
    assert "<html" in page
    assert page.count("<polyline") == 2
