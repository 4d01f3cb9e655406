"""The in-process half of bench_api, run in its own process (its own Django settings).

``python -m bench.api_child`` migrates the bench database, seeds it, times
``GET /api/v1/sandboxes`` with Django's test client, and prints one JSON line: the
timings, the query counts, and a token for the load generator (of a throwaway database).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

os.environ["DJANGO_SETTINGS_MODULE"] = "bench.api_settings"

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from bench import timed  # noqa: E402
from sandboxes.models import Membership, Preset, Sandbox, Snapshot, Team  # noqa: E402
from sandboxes.services import tokens  # noqa: E402
from sandboxes.services.actors import Actor  # noqa: E402
from sandboxes.services.tokens import create_api_token  # noqa: E402

SANDBOXES = 10_000
OTHER_TEAM_SANDBOXES = 2_000
STATUSES = ["running"] * 6 + ["paused", "stopped", "hibernated", "failed"]


def seed() -> str:
    from django.contrib.auth import get_user_model

    preset = Preset.objects.order_by("vcpus").first()
    snapshot = Snapshot.objects.create(
        snapshot_id=f"bench_{preset.pk}_v1",
        provider="bench",
        preset=preset,
        version=1,
        status="ready",
        provider_ref="bench",
    )
    team = Team.objects.create(slug="bench", name="Bench")
    other = Team.objects.create(slug="bench-other", name="Other")
    user = get_user_model().objects.create_user("bench")
    Membership.objects.create(user=user, team=team, role="member")
    now = timezone.now()
    for target, count in ((team, SANDBOXES), (other, OTHER_TEAM_SANDBOXES)):
        Sandbox.objects.bulk_create(
            (
                Sandbox(
                    team=target,
                    provider="bench",
                    preset=preset,
                    snapshot=snapshot,
                    vcpus=preset.vcpus,
                    memory_mb=preset.memory_mb,
                    disk_gb=preset.disk_gb,
                    name=f"sandbox-{i}",
                    status=STATUSES[i % len(STATUSES)],
                    metadata={"ci": "bench", "n": str(i)},
                    services=[{"name": "web", "port": 8080, "url": f"http://x/{i}"}],
                    created_at=now - timedelta(seconds=i),
                )
                for i in range(count)
            ),
            batch_size=2000,
        )
    _, secret = create_api_token(user=user, team=team, actor=Actor.system(), name="bench")
    return secret


def interleaved(first, second, *, repeat: int) -> tuple[list[float], list[float]]:
    """Time two calls turn about, so a busy moment of the machine hits both alike."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeat // 10):
        a += timed(first, repeat=10, warmup=1)
        b += timed(second, repeat=10, warmup=1)
    return a, b


def orm_token_lookup(digest: str):
    """What services.tokens composes as SQL, through the ORM (for comparison)."""
    from django.db.models import OuterRef, Subquery

    from sandboxes.models import ApiToken

    role = Membership.objects.filter(user=OuterRef("user_id"), team=OuterRef("team_id"))
    return (
        ApiToken.objects.select_related("user", "team")
        .annotate(member_role=Subquery(role.values("role")[:1]))
        .get(digest=digest)
    )


def queries(client: Client, url: str) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    return len(captured.captured_queries), len(response.json()["results"])


def main() -> None:
    call_command("migrate", verbosity=0, interactive=False)
    secret = seed()
    with connection.cursor() as cursor:
        # What autovacuum does to a live table: statistics, and the visibility map that
        # lets a count use an index-only scan.
        cursor.execute("VACUUM ANALYZE" if connection.vendor == "postgresql" else "ANALYZE")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    page = "/api/v1/sandboxes"
    samples, bare_samples = interleaved(
        lambda: client.get(page), lambda: client.get("/bench/bare"), repeat=300
    )
    digest = tokens.digest_of(secret)
    assert tokens._lookup_token(digest).member_role == orm_token_lookup(digest).member_role
    lookup_samples, orm_lookup_samples = interleaved(
        lambda: tokens._lookup_token(digest), lambda: orm_token_lookup(digest), repeat=500
    )
    full, full_rows = queries(client, page)
    last, last_rows = queries(client, f"{page}?page=200")
    few, few_rows = queries(client, f"{page}?status=failed&page_size=5")
    print(
        json.dumps(
            {
                "samples": samples,
                "bare_samples": bare_samples,
                "lookup_samples": lookup_samples,
                "orm_lookup_samples": orm_lookup_samples,
                "queries": {
                    "full": [full, full_rows],
                    "last": [last, last_rows],
                    "few": [few, few_rows],
                },
                "vendor": connection.vendor,
                "throttle_store": settings.SANDBOX_API_THROTTLE_STORE,
                "token": secret,
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
