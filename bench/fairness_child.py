"""The set-up and clean-up halves of bench_fairness, run in their own process.

``python -m bench.fairness_child setup UPSTREAM_URL`` migrates the bench database, makes
two teams with a token each and one running `local` sandbox each, points team B's
sandbox's service ``web`` at UPSTREAM_URL (a loopback HTTP server), and prints one JSON
line. ``python -m bench.fairness_child cleanup`` deletes every local sandbox it made.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["DJANGO_SETTINGS_MODULE"] = "bench.api_settings"
os.environ["Q_SYNC"] = "1"  # the sandboxes start inline here, no worker needed

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from sandboxes.models import Membership, Sandbox, Team  # noqa: E402
from sandboxes.services import backends, lifecycle  # noqa: E402
from sandboxes.services.actors import Actor  # noqa: E402
from sandboxes.services.tokens import create_api_token  # noqa: E402


def setup(upstream: str) -> dict:
    call_command("migrate", verbosity=0, interactive=False)
    made = {}
    for slug in ("team-a", "team-b"):
        team = Team.objects.create(slug=slug, name=slug)
        user = get_user_model().objects.create_user(f"{slug}-user")
        Membership.objects.create(user=user, team=team, role="member")
        _, secret = create_api_token(user=user, team=team, actor=Actor.system(), name="bench")
        sandbox = lifecycle.create_sandbox(
            team=team, actor=Actor.for_user(user), preset_id="1vcpu_1gb_8gb", provider="local"
        )
        sandbox.refresh_from_db()
        if sandbox.status != "running":
            raise RuntimeError(f"{slug}'s sandbox is {sandbox.status}: {sandbox.last_error}")
        made[slug] = {"token": secret, "sandbox": sandbox.pk}
    service = {"name": "web", "port": 8080, "url": upstream}
    Sandbox.objects.filter(pk=made["team-b"]["sandbox"]).update(services=[service])
    return made


def cleanup() -> None:
    backends.get_provider("local").purge()


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        print(json.dumps(setup(sys.argv[2])), flush=True)
    else:
        cleanup()
