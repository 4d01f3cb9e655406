"""Long calls (exec, ``?wait``, the service proxy) are capped per team and on the site.

One team's long calls beyond its cap are refused at once with 429 and ``Retry-After``
while another team's calls go through; a slot is freed when its call ends, however it
ends, and by its expiry when the process holding it died; the slots are shared by
every process through the database or Redis, as the API's rate counters are.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connection
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext

from providers.errors import Unavailable
from sandboxes.models import LongCallSlot, Sandbox
from sandboxes.services import lifecycle, long_calls
from sandboxes.services.actors import Actor
from sandboxes.services.errors import ProviderFailure, TooManyLongCalls
from sandboxes.services.interactive import exec_command
from tests.api.conftest import bearer_client, error_of
from tests.api.test_throttling import redis_is_up
from tests.background.harness import database_url
from tests.system import require
from tests.tcp_server import TcpServer

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def caps(settings):
    settings.SANDBOX_LONG_CALLS_PER_TEAM = 2
    settings.SANDBOX_LONG_CALLS_TOTAL = 10
    return settings


@pytest.fixture
def alpha_box(memory_backend, team, member) -> Sandbox:
    made = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(member), preset_id="1vcpu_1gb_8gb"
    )
    made.refresh_from_db()
    return made


@pytest.fixture
def beta_box(memory_backend, other_team, outsider) -> Sandbox:
    made = lifecycle.create_sandbox(
        team=other_team, actor=Actor.for_user(outsider), preset_id="1vcpu_1gb_8gb"
    )
    made.refresh_from_db()
    return made


def until(condition, what: str, limit: float = 30) -> None:
    """Wait for ``condition`` (bounded): the tests wait for states, never assert durations."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not {what} after {limit:g} s")
        time.sleep(0.02)


def assert_refused(response, scope: str = "team") -> None:
    assert response.status_code == 429
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= long_calls.MAX_RETRY_AFTER
    error = error_of(response)
    assert error["code"] == "too_many_long_calls"
    assert (error["retry_after"], error["scope"]) == (retry_after, scope)


# --- through the API, with real concurrent calls


def test_execs_beyond_the_team_cap_get_429_while_another_team_is_unaffected(
    caps, alpha_box, beta_box, member, team, outsider, other_team, tmp_path
):
    gate = tmp_path / "go"
    waiting = ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done; echo done"]
    url = f"/api/v1/sandboxes/{alpha_box.pk}/exec"
    answers: list[int] = []

    def long_exec() -> None:
        try:
            client = bearer_client(member, team)
            body = {"command": waiting, "timeout_seconds": 120}
            answers.append(client.post(url, body, format="json").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=long_exec) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        until(lambda: long_calls.in_use(team=team) == 2, "holding both of alpha's slots")
        alpha = bearer_client(member, team)
        assert_refused(alpha.post(url, {"command": ["true"]}, format="json"))
        assert alpha.get("/api/v1/config").status_code == 200  # a short call is no long call

        beta = bearer_client(outsider, other_team)
        assert beta.get("/api/v1/config").status_code == 200
        ran = beta.post(
            f"/api/v1/sandboxes/{beta_box.pk}/exec", {"command": ["echo", "b"]}, format="json"
        )
        assert (ran.status_code, ran.json()["stdout"]) == (200, "b\n")
    finally:
        gate.touch()
        for thread in threads:
            thread.join(60)
    assert answers == [200, 200]
    assert long_calls.in_use(team=team) == 0
    assert long_calls.in_use() == 0


def test_the_site_cap_holds_whatever_the_team(caps, beta_box, team, outsider, other_team):
    caps.SANDBOX_LONG_CALLS_TOTAL = 1
    slot = long_calls.acquire(team=team, kind="exec", seconds=60)  # alpha's call in flight
    try:
        beta = bearer_client(outsider, other_team)
        refused = beta.post(
            f"/api/v1/sandboxes/{beta_box.pk}/exec", {"command": ["true"]}, format="json"
        )
        assert_refused(refused, scope="site")
        assert long_calls.in_use(team=other_team) == 0  # its team slot was given back
    finally:
        slot.release()
    allowed = beta.post(
        f"/api/v1/sandboxes/{beta_box.pk}/exec", {"command": ["true"]}, format="json"
    )
    assert allowed.status_code == 200


def test_wait_is_a_long_call(caps, alpha_box, member, team):
    Sandbox.objects.filter(pk=alpha_box.pk).update(status="starting")
    alpha = bearer_client(member, team)
    url = f"/api/v1/sandboxes/{alpha_box.pk}"
    held = [long_calls.acquire(team=team, kind="exec", seconds=60) for _ in range(2)]
    try:
        assert_refused(alpha.get(f"{url}?wait=1"))
        assert alpha.get(url).status_code == 200  # without ?wait it does not wait
    finally:
        for slot in held:
            slot.release()
    waited = alpha.get(f"{url}?wait=1")
    assert (waited.status_code, waited.json()["status"]) == (200, "starting")
    assert long_calls.in_use(team=team) == 0


class Upstream(TcpServer):
    """Answers every request with a small 200."""

    def __init__(self) -> None:
        super().__init__(serve=self._answer)

    def _answer(self, conn) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


def test_the_service_proxy_is_a_long_call_until_its_body_is_passed_on(
    caps, alpha_box, client, member, team
):
    upstream = Upstream()
    service = {"name": "web", "port": 8080, "url": f"http://127.0.0.1:{upstream.port}/"}
    Sandbox.objects.filter(pk=alpha_box.pk).update(services=[service])
    client.force_login(member)
    held = [long_calls.acquire(team=team, kind="exec", seconds=60) for _ in range(2)]
    try:
        refused = client.get(f"/s/{alpha_box.pk}/web/")
        assert refused.status_code == 429
        assert 1 <= int(refused["Retry-After"]) <= long_calls.MAX_RETRY_AFTER
        assert refused.json()["error"]["code"] == "too_many_long_calls"
        assert upstream.connections == 0  # refused before anything reached the sandbox
        for slot in held:
            slot.release()
        response = client.get(f"/s/{alpha_box.pk}/web/")
        assert response.status_code == 200
        assert long_calls.in_use(team=team) == 1  # the body is still to be passed on
        assert b"".join(response.streaming_content) == b"ok"
        assert long_calls.in_use(team=team) == 0
    finally:
        upstream.close()


def test_under_asgi_the_proxy_streams_the_body_and_then_frees_the_slot(
    caps, alpha_box, member, team
):
    """Django reads a synchronous streaming body whole before sending it under ASGI: the
    proxy gives an ASGI server an asynchronous one, read chunk by chunk."""
    upstream = Upstream()
    service = {"name": "web", "port": 8080, "url": f"http://127.0.0.1:{upstream.port}/"}
    Sandbox.objects.filter(pk=alpha_box.pk).update(services=[service])

    async def fetch():
        client = AsyncClient()
        await client.aforce_login(member)
        response = await client.get(f"/s/{alpha_box.pk}/web/")
        held = await sync_to_async(long_calls.in_use)(team=team)
        body = b"".join([chunk async for chunk in response.streaming_content])
        return response, held, body

    # A thread of its own: the browser tests' Playwright (sync API) leaves an event loop
    # running in the main thread, where async_to_sync refuses to run.
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            response, held, body = pool.submit(async_to_sync(fetch)).result()
    finally:
        upstream.close()
    assert (response.status_code, body) == (200, b"ok")
    assert response.is_async
    assert held == 1
    assert long_calls.in_use(team=team) == 0


# --- released however the call ends


def test_a_slot_is_released_after_success_and_after_an_exception(
    caps, alpha_box, member, team, memory_backend
):
    actor = Actor.for_user(member)
    exec_command(sandbox=alpha_box, actor=actor, command=["true"])
    assert long_calls.in_use(team=team) == 0
    memory_backend.faults["exec"] = [Unavailable("agent unreachable")]
    with pytest.raises(ProviderFailure):
        exec_command(sandbox=alpha_box, actor=actor, command=["true"])
    assert long_calls.in_use(team=team) == 0
    inside = []

    def failing_call() -> None:
        with long_calls.held(team=team, kind="exec", seconds=5):
            inside.append(long_calls.in_use(team=team))
            raise RuntimeError("the call failed")

    with pytest.raises(RuntimeError):
        failing_call()
    assert inside == [1]
    assert long_calls.in_use(team=team) == 0
    assert long_calls.in_use() == 0


def test_a_cap_of_zero_is_no_cap(caps, team):
    caps.SANDBOX_LONG_CALLS_PER_TEAM = 0
    caps.SANDBOX_LONG_CALLS_TOTAL = 0
    slots = [long_calls.acquire(team=team, kind="exec", seconds=5) for _ in range(50)]
    assert long_calls.in_use(team=team) == 0
    for slot in slots:
        slot.release()


# --- the database store: one statement per cap to take a slot, one to free it


@pytest.fixture
def in_database(caps):
    caps.SANDBOX_API_THROTTLE_STORE = "database"
    return caps


def test_a_slot_is_one_statement_per_cap_and_its_release_one_more(in_database, team):
    with CaptureQueriesContext(connection) as taking:
        slot = long_calls.acquire(team=team, kind="exec", seconds=5)
    assert len(taking.captured_queries) == 2  # the team's cap, then the site's
    with CaptureQueriesContext(connection) as freeing:
        slot.release()
    assert [q["sql"].split()[0] for q in freeing.captured_queries] == ["DELETE"]
    assert long_calls.in_use(team=team) == 0
    assert long_calls.in_use() == 0


def test_a_full_team_is_refused_until_its_soonest_slot_would_end(in_database, team, monkeypatch):
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)  # the clock stands still
    first = long_calls.acquire(team=team, kind="exec", seconds=3)
    second = long_calls.acquire(team=team, kind="exec", seconds=60)
    with pytest.raises(TooManyLongCalls) as refused:
        long_calls.acquire(team=team, kind="exec", seconds=5)
    assert (refused.value.scope, refused.value.limit, refused.value.retry_after) == ("team", 2, 3)
    assert long_calls.in_use() == 2  # the refused call holds no site slot either
    first.release()
    third = long_calls.acquire(team=team, kind="exec", seconds=5)
    assert long_calls.in_use(team=team) == 2
    for slot in (second, third):
        slot.release()
    assert long_calls.in_use(team=team) == long_calls.in_use() == 0


def test_a_full_site_gives_back_the_team_slot_it_took(in_database, team, other_team):
    in_database.SANDBOX_LONG_CALLS_TOTAL = 1
    held = long_calls.acquire(team=other_team, kind="exec", seconds=60)
    with pytest.raises(TooManyLongCalls) as refused:
        long_calls.acquire(team=team, kind="exec", seconds=5)
    assert (refused.value.scope, refused.value.limit) == ("site", 1)
    assert long_calls.in_use(team=team) == 0
    held.release()


def test_an_expired_slot_is_taken_over(in_database, team, monkeypatch):
    stale = [long_calls.acquire(team=team, kind="exec", seconds=1) for _ in range(2)]
    later = time.time() + 1 + long_calls.MARGIN_SECONDS + 1  # both past their expiry
    monkeypatch.setattr(time, "time", lambda: later)
    fresh = [long_calls.acquire(team=team, kind="exec", seconds=5) for _ in range(2)]
    assert long_calls.in_use(team=team) == 2
    for slot in stale:
        slot.release()  # a late release frees nothing of the new holders
    assert long_calls.in_use(team=team) == 2
    for slot in fresh:
        slot.release()


def test_callers_arriving_together_spread_over_the_keys(in_database, team):
    in_database.SANDBOX_LONG_CALLS_PER_TEAM = 10
    keys = set()
    for _ in range(20):
        slot = long_calls.acquire(team=team, kind="exec", seconds=5)
        keys |= set(LongCallSlot.objects.filter(holder=slot.holder).values_list("key", flat=True))
        slot.release()
    # Always the first free key would be one team key (and one site key): a random one is
    # the same key 20 times in a row with a chance of 10^-19.
    assert len([key for key in keys if key.startswith(f"longcall:team:{team.pk}:")]) > 1


def test_callers_racing_for_the_last_slots_never_share_one(in_database, team):
    in_database.SANDBOX_LONG_CALLS_PER_TEAM = 3
    callers = 8
    start = threading.Barrier(callers)

    def call(_: int) -> str | None:
        try:
            start.wait(30)
            slot = long_calls.acquire(team=team, kind="exec", seconds=60)
            return slot.holder
        except TooManyLongCalls:
            return None
        finally:
            connection.close()  # each thread's own connection

    with ThreadPoolExecutor(callers) as pool:
        holders = [h for h in pool.map(call, range(callers)) if h is not None]
    assert len(holders) == 3
    rows = LongCallSlot.objects.filter(key__startswith=f"longcall:team:{team.pk}:")
    assert sorted(rows.values_list("holder", flat=True)) == sorted(holders)  # one key each
    for holder_id in holders:
        long_calls.Slot(scopes=["x"], holder=holder_id, expires_at=0).release()
    assert long_calls.in_use(team=team) == long_calls.in_use() == 0


# --- shared by processes, freed when the holder dies


@pytest.fixture(params=["database", "redis"])
def store(request, settings):
    """The store the slots live in, and the arguments that give a child process the same."""
    if request.param == "database":
        settings.SANDBOX_API_THROTTLE_STORE = "database"
        return []
    require("redis-server", redis_is_up(), "apt-get install redis-server; redis-server &")
    location = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    prefix = f"test-{uuid.uuid4().hex}"  # keys of no other run
    settings.CACHES = {
        **settings.CACHES,
        "throttle": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": location,
            "KEY_PREFIX": prefix,
        },
    }
    settings.SANDBOX_API_THROTTLE_STORE = "redis"
    return [location, prefix]


def holder(team, store: list[str], *, seconds: float, margin: float) -> subprocess.Popen:
    """Another process (another web server) holding both of ``team``'s slots."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.long_call_holder"),
            *(str(team.pk), "2", str(seconds), str(margin), *store),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": database_url(),
            "PYTHONPATH": str(ROOT),
            # Every process must use the same caps: they name the slots.
            "SANDBOX_LONG_CALLS_PER_TEAM": "2",
            "SANDBOX_LONG_CALLS_TOTAL": "10",
        },
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_slots_are_counted_across_processes(caps, store, team, other_team):
    other = holder(team, store, seconds=60, margin=30)
    try:
        with pytest.raises(TooManyLongCalls) as refused:
            long_calls.acquire(team=team, kind="exec", seconds=5)
        assert refused.value.scope == "team"
        assert long_calls.in_use(team=team) == 2
        long_calls.acquire(team=other_team, kind="exec", seconds=5).release()
        other.stdin.write("release\n")
        other.stdin.flush()
        assert other.stdout.readline().strip() == "released"
    finally:
        other.kill()
        other.wait(30)
    long_calls.acquire(team=team, kind="exec", seconds=5).release()


def test_the_slots_of_a_killed_process_free_themselves_at_their_expiry(caps, store, team):
    other = holder(team, store, seconds=5, margin=0)
    os.kill(other.pid, signal.SIGKILL)  # dies holding both, releasing nothing
    other.wait(30)
    with pytest.raises(TooManyLongCalls):
        long_calls.acquire(team=team, kind="exec", seconds=5)

    def acquired() -> bool:
        try:
            long_calls.acquire(team=team, kind="exec", seconds=5).release()
        except TooManyLongCalls:
            return False
        return True

    until(acquired, "free again", limit=60)
    until(lambda: long_calls.in_use(team=team) == 0, "free of the dead holder's slots")
    both = [long_calls.acquire(team=team, kind="exec", seconds=5) for _ in range(2)]
    for slot in both:
        slot.release()


def test_a_stream_still_flowing_keeps_its_slot_past_its_first_bound(caps, store, team, monkeypatch):
    slot = long_calls.acquire(team=team, kind="proxied request", seconds=1)
    slot.extend(seconds=600)
    later = time.time() + 300  # past the first bound (1 s + the margin), inside the new one
    with monkeypatch.context() as clock:
        clock.setattr(time, "time", lambda: later)
        assert long_calls.in_use(team=team) == 1
    slot.release()
    assert long_calls.in_use(team=team) == 0
