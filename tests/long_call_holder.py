"""Another process holding long-call slots, for tests of what several web processes share.

``python -m tests.long_call_holder TEAM_ID COUNT SECONDS MARGIN [REDIS_URL KEY_PREFIX]``
takes COUNT of the team's slots (each bounded by SECONDS, plus MARGIN instead of the
usual margin), prints ``held``, then waits for a line on stdin: ``release`` frees them
and prints ``released``. Killed instead, it leaves them for their expiry to free.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings_test")

import django

django.setup()

from django.test.utils import override_settings  # noqa: E402

from sandboxes.models import Team  # noqa: E402
from sandboxes.services import long_calls  # noqa: E402


def main(team_id: str, count: str, seconds: str, margin: str, *redis: str) -> None:
    overrides = {}
    if redis:
        location, prefix = redis
        overrides = {
            "SANDBOX_API_THROTTLE_STORE": "redis",
            "CACHES": {
                "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
                "throttle": {
                    "BACKEND": "django.core.cache.backends.redis.RedisCache",
                    "LOCATION": location,
                    "KEY_PREFIX": prefix,
                },
            },
        }
    long_calls.MARGIN_SECONDS = float(margin)
    with override_settings(**overrides):
        team = Team.objects.get(pk=int(team_id))
        slots = [
            long_calls.acquire(team=team, kind="exec", seconds=float(seconds))
            for _ in range(int(count))
        ]
        print("held", flush=True)
        if sys.stdin.readline().strip() == "release":
            for slot in slots:
                slot.release()
            print("released", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
