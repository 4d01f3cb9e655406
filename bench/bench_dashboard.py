"""The dashboard under a big team: the sandbox list with 1,000 sandboxes, and a status poll.

Runs in-process through Django's test client (middleware, session, auth, templates: all
of a request but the socket) against a scratch database made for the run (SQLite, or
PostgreSQL when ``DATABASE_URL`` points there). The sandboxes run on the in-memory test
provider: the pages never call a provider, so the provider does not change what is
measured, and no real instances are needed for 1,000 rows.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench import Result, median_result, timed

ROWS = 1000
LIST_TARGET_MS = 60
POLL_TARGET_MS = 10


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings_test")
    import django

    django.setup()


def _scratch_database():
    """Create the bench's own test database; return a function that drops it."""
    from django.conf import settings
    from django.db import connection

    # Not setup_test_environment(): it instruments template rendering for assertions,
    # which is overhead a real server does not have.
    original = connection.settings_dict["NAME"]
    test = connection.settings_dict.setdefault("TEST", {})
    if connection.vendor == "sqlite":
        test["NAME"] = str(Path(settings.DATA_DIR) / f"bench-dashboard-{os.getpid()}.sqlite3")
    else:
        test["NAME"] = f"bench_dashboard_{os.getpid()}"
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    return lambda: connection.creation.destroy_test_db(original, verbosity=0)


def _team_with_sandboxes():
    """A team, a member, the memory provider with a version, and ROWS sandboxes."""
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from providers.registry import register_provider
    from sandboxes.models import Membership, Preset, Team
    from sandboxes.services import backends
    from sandboxes.services.actors import Actor
    from sandboxes.services.snapshots import import_snapshot
    from tests import memory_provider

    register_provider(memory_provider.NAME, lambda: memory_provider.MemoryProvider)
    settings.SANDBOX_PROVIDER_CONFIG = {"SANDBOX_PROVIDERS": memory_provider.NAME}
    backends.reset()
    preset = Preset.objects.get(pk="1vcpu_1gb_8gb")
    if not preset.offered_on(memory_provider.NAME):  # restricted to other providers
        preset.providers = [*preset.providers, memory_provider.NAME]
        preset.save(update_fields=["providers"])
    import_snapshot(
        provider=memory_provider.NAME,
        preset_id=preset.pk,
        ref="base",
        actor=Actor.system(),
        activate=True,
    )
    team = Team.objects.create(slug="bench", name="Bench")
    user = get_user_model().objects.create_user("bench")
    Membership.objects.create(user=user, team=team, role="member")
    return team, user


def _measure(team, user) -> list[Result]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from sandboxes.models import Sandbox
    from tests.dashboard.rows import add_sandboxes

    client = Client()
    client.force_login(user)
    htmx = Client(headers={"HX-Request": "true"})
    htmx.force_login(user)
    list_url = reverse("sandbox-list")

    def get(c, url):
        response = c.get(url)
        assert response.status_code in (200, 286), (url, response.status_code)

    def queries(url) -> int:
        with CaptureQueriesContext(connection) as captured:
            get(client, url)
        return len(captured)

    add_sandboxes(team, user, 10)
    get(client, list_url)  # the first visit also writes the current team to the session
    with_ten = queries(list_url)
    add_sandboxes(team, user, ROWS - 10)
    with_thousand = queries(list_url)
    transitional = Sandbox.objects.filter(team=team, status="starting").first()
    poll_row = reverse("sandbox-status", args=[transitional.pk]) + "?part=row"
    poll_panel = reverse("sandbox-status", args=[transitional.pk]) + "?part=panel&shown=starting"
    list_ms = timed(lambda: get(client, list_url), repeat=60, warmup=5)
    filtered_ms = timed(lambda: get(client, list_url + "?status=starting"), repeat=30, warmup=3)
    row_ms = timed(lambda: get(htmx, poll_row), repeat=300, warmup=20)
    panel_ms = timed(lambda: get(htmx, poll_panel), repeat=300, warmup=20)
    with CaptureQueriesContext(connection) as captured:
        get(htmx, poll_row)
    poll_queries = len(captured)
    return [
        median_result(
            f"sandbox list page, team of {ROWS} sandboxes (first page of 50)",
            list_ms,
            at_most=LIST_TARGET_MS,
        ),
        Result(
            name="list page queries with 10 and with 1,000 sandboxes",
            value=with_thousand,
            unit="queries",
            target=f"constant (= {with_ten} with 10)",
            met=with_thousand == with_ten,
        ),
        median_result(
            "sandbox list, filtered to starting (every row polling)", filtered_ms, at_most=None
        ),
        median_result(
            "status poll of a starting sandbox (list row)",
            row_ms,
            at_most=POLL_TARGET_MS,
            detail=f"{poll_queries} queries",
        ),
        median_result(
            "status poll of a starting sandbox (detail panel, unchanged)",
            panel_ms,
            at_most=POLL_TARGET_MS,
        ),
    ]


def run() -> list[Result]:
    _setup_django()
    drop = _scratch_database()
    try:
        team, user = _team_with_sandboxes()
        return _measure(team, user)
    finally:
        drop()
