"""The set-up and clean-up halves of bench_terminal, run in their own process.

``python -m bench.terminal_child setup`` migrates the bench database, makes a team, a
member signed in (a Django session, as a browser has) and one running `local` sandbox,
measures the keystroke echo straight through the provider's terminal session (no
websocket: what the web terminal adds is the difference), and prints one JSON line.
``python -m bench.terminal_child cleanup`` deletes every local sandbox it made.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ["DJANGO_SETTINGS_MODULE"] = "bench.api_settings"
os.environ["Q_SYNC"] = "1"  # the sandbox starts inline here, no worker needed

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402

from sandboxes.models import Membership, Team  # noqa: E402
from sandboxes.services import backends, lifecycle  # noqa: E402
from sandboxes.services.actors import Actor  # noqa: E402
from sandboxes.services.terminals import open_terminal  # noqa: E402


def _echo_ms(terminal, key: bytes, expect: bytes) -> float:
    start = time.perf_counter()
    terminal.write(key)
    seen = b""
    while expect not in seen:
        seen += terminal.read(timeout=10)
    return (time.perf_counter() - start) * 1000


def _settle(terminal) -> None:
    """Read until the shell has said all it will (its prompt)."""
    while True:
        try:
            terminal.read(timeout=0.5)
        except TimeoutError:
            return


def direct_echo(sandbox, actor, repeat: int) -> list[float]:
    samples = []
    with open_terminal(sandbox=sandbox, actor=actor) as terminal:
        _settle(terminal)
        for _ in range(20):  # warm up
            _echo_ms(terminal, b"x", b"x")
            _echo_ms(terminal, b"\x7f", b"\x08")
        for _ in range(repeat // 2):
            samples.append(_echo_ms(terminal, b"x", b"x"))
            samples.append(_echo_ms(terminal, b"\x7f", b"\x08"))
    return samples


def setup(repeat: int) -> dict:
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
    browser = Client()
    browser.force_login(user)
    return {
        "sandbox": sandbox.pk,
        "cookie": f"sessionid={browser.cookies['sessionid'].value}",
        "direct": direct_echo(sandbox, actor, repeat),
    }


def cleanup() -> None:
    backends.get_provider("local").purge()


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        print(json.dumps(setup(int(sys.argv[2]))), flush=True)
    else:
        cleanup()
