"""The set-up and clean-up halves of bench_fairness, run in their own process.

``python -m bench.fairness_child setup UPSTREAM_URL`` migrates the bench database, makes
two teams with a token each and one running `local` sandbox each, points team B's
sandbox's service ``web`` at UPSTREAM_URL (a loopback HTTP server), and prints one JSON
line. ``python -m bench.fairness_child breakdown SANDBOX_ID TOKEN`` sends requests through
the service proxy in-process (the ASGI application, no HTTP server) with each step of
the proxy timed, and prints the medians as one JSON line: where a proxied request's time
goes. ``python -m bench.fairness_child cleanup`` deletes every local sandbox it made.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

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


#: The proxy's steps, timed where they are called: (module, attribute, name).
STEPS = [
    ("sandboxes.services.auth_failures", "blocked_for", "token-guessing check (Redis GET)"),
    ("sandboxes.services.tokens", "authenticate_token", "token lookup (pool check + 1 query)"),
    ("sandboxes.selectors", "proxy_target", "sandbox lookup (1 query)"),
    ("sandboxes.services.long_calls", "acquire", "long-call slot taken"),
    ("sandboxes.proxy", "_send", "upstream request and its headers (requests, keep-alive)"),
    ("sandboxes.proxy", "_Body.prefetch_if_small", "upstream body read"),
    ("sandboxes.proxy", "_Body.close", "long-call slot released"),
]


def _timing(record: list[float], call: Callable) -> Callable:
    @functools.wraps(call)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            record.append((time.perf_counter() - start) * 1000)

    return timed


def breakdown(sandbox_id: str, token: str, repeat: int = 400) -> dict:
    import importlib

    import sandboxes.proxy_urls
    from config.asgi import application

    times: dict[str, list[float]] = collections.defaultdict(list)
    for module_name, attribute, name in STEPS:
        owner = importlib.import_module(module_name)
        *path, leaf = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, leaf, _timing(times[name], getattr(owner, leaf)))
    for pattern in sandboxes.proxy_urls.urlpatterns:
        pattern.callback = _timing(
            times["the view (all of the above and the rest)"], pattern.callback
        )
    path = f"/s/{sandbox_id}/web/ping"
    headers = [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    async def one() -> float:
        start = time.perf_counter()
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop()
            await asyncio.sleep(3600)  # no disconnect while the answer is sent
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] != 200:
                raise RuntimeError(f"the proxy answered {message['status']}")

        await application(dict(scope), receive, send)
        return (time.perf_counter() - start) * 1000

    async def run() -> list[float]:
        for _ in range(30):
            await one()
        for record in times.values():
            record.clear()
        return [await one() for _ in range(repeat)]

    total = asyncio.run(run())
    medians = {name: statistics.median(record) for name, record in times.items() if record}
    return {"whole request (ASGI application, in-process)": statistics.median(total), **medians}


def cleanup() -> None:
    backends.get_provider("local").purge()


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        print(json.dumps(setup(sys.argv[2])), flush=True)
    elif sys.argv[1] == "breakdown":
        print(json.dumps(breakdown(sys.argv[2], sys.argv[3])), flush=True)
    else:
        cleanup()
