"""The set-up and clean-up halves of bench_preview, run in their own process.

``python -m bench.preview_child setup HTTP_URL WS_URL`` migrates the bench database,
makes a team with a member and one running `local` sandbox whose services ``web`` (port
8080) and ``ws`` (port 8081) point at the two loopback upstreams, both ``private``; it
prints one JSON line with the sandbox id and a preview cookie for each service (the
browser's way in: a token from the dashboard exchanged at the preview host).
``python -m bench.preview_child cleanup`` deletes every local sandbox it made.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["DJANGO_SETTINGS_MODULE"] = "bench.api_settings"
os.environ["Q_SYNC"] = "1"  # the sandbox starts inline here, no worker needed

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from sandboxes.models import Membership, Sandbox, Team  # noqa: E402
from sandboxes.services import backends, lifecycle, previews  # noqa: E402
from sandboxes.services.actors import Actor  # noqa: E402


def setup(http_url: str, ws_url: str) -> dict:
    call_command("migrate", verbosity=0, interactive=False)
    team = Team.objects.create(slug="bench", name="bench")
    user = get_user_model().objects.create_user("bench-user")
    Membership.objects.create(user=user, team=team, role="member")
    actor = Actor.for_user(user)
    sandbox = lifecycle.create_sandbox(
        team=team, actor=actor, preset_id="1vcpu_1gb_8gb", provider="local"
    )
    sandbox.refresh_from_db()
    if sandbox.status != "running":
        raise RuntimeError(f"the sandbox is {sandbox.status}: {sandbox.last_error}")
    services = [
        {"name": "web", "port": 8080, "url": http_url, "sharing": "private"},
        {"name": "ws", "port": 8081, "url": ws_url, "sharing": "private"},
    ]
    Sandbox.objects.filter(pk=sandbox.pk).update(services=services)
    sandbox.refresh_from_db()
    cookies = {}
    for port in (8080, 8081):
        token = previews.issue_token(sandbox=sandbox, actor=actor, port=port)
        cookies[str(port)] = previews.exchange_token(token=token, sandbox_id=sandbox.pk, port=port)
    return {"sandbox": sandbox.pk, "cookies": cookies}


def cleanup() -> None:
    provider = backends.get_provider("local")
    for instance in provider.list():
        instance.delete()


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        print(json.dumps(setup(sys.argv[2], sys.argv[3])))
    else:
        cleanup()
