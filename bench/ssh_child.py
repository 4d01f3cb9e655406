"""The set-up and clean-up halves of bench_ssh, run in their own process.

``python -m bench.ssh_child setup PUBLIC_KEY`` migrates the bench database, makes a team,
a member with that SSH key registered and one running `local` sandbox, and prints one
JSON line (the sandbox's id). ``python -m bench.ssh_child cleanup`` deletes every local
sandbox it made.
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

from sandboxes.models import Membership, Team  # noqa: E402
from sandboxes.services import backends, lifecycle, ssh  # noqa: E402
from sandboxes.services.actors import Actor  # noqa: E402


def setup(public_key: str) -> dict:
    call_command("migrate", verbosity=0, interactive=False)
    team = Team.objects.create(slug="bench", name="bench")
    user = get_user_model().objects.create_user("bench-user")
    Membership.objects.create(user=user, team=team, role="member")
    actor = Actor.for_user(user)
    ssh.add_key(actor=actor, name="bench", public_key=public_key)
    sandbox = lifecycle.create_sandbox(
        team=team, actor=actor, preset_id="1vcpu_1gb_8gb", provider="local"
    )
    sandbox.refresh_from_db()
    if sandbox.status != "running":
        raise RuntimeError(f"the sandbox is {sandbox.status}: {sandbox.last_error}")
    return {"sandbox": sandbox.pk}


def cleanup() -> None:
    backends.get_provider("local").purge()


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        print(json.dumps(setup(sys.argv[2])), flush=True)
    else:
        cleanup()
