"""Per-team throttling: 429 with Retry-After, separate rates for creates, teams apart."""

from __future__ import annotations

import os
import socket
import uuid

import pytest
from django.core.cache import caches

from sandboxes.api.throttles import parse_rate
from sandboxes.models import Sandbox, ThrottleCounter
from sandboxes.services.throttling import count_request
from tests.api.conftest import bearer_client, error_of
from tests.system import require

pytestmark = pytest.mark.django_db


@pytest.fixture
def rates(settings):
    def set_rates(team: str, create: str) -> None:
        config = dict(settings.REST_FRAMEWORK)
        config["DEFAULT_THROTTLE_RATES"] = {"team": team, "team_create": create}
        settings.REST_FRAMEWORK = config

    return set_rates


def test_the_team_rate_answers_429_with_retry_after(rates, api, outsider_api):
    rates("3/min", "")
    assert [api.get("/api/v1/config").status_code for _ in range(3)] == [200] * 3
    response = api.get("/api/v1/sandboxes")
    assert response.status_code == 429
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= 60
    error = error_of(response)
    assert (error["code"], error["retry_after"]) == ("throttled", retry_after)
    # Another team has its own budget.
    assert outsider_api.get("/api/v1/config").status_code == 200


def test_tokens_of_one_team_share_its_budget(rates, api, member, team):
    rates("2/min", "")
    second = bearer_client(member, team)
    assert api.get("/api/v1/config").status_code == 200
    assert second.get("/api/v1/config").status_code == 200
    assert second.get("/api/v1/config").status_code == 429
    assert api.get("/api/v1/config").status_code == 429


def test_creates_have_their_own_rate(rates, memory_backend, api):
    rates("100/min", "2/min")
    body = {"preset": "1vcpu_1gb_8gb"}
    codes = [api.post("/api/v1/sandboxes", body, format="json").status_code for _ in range(3)]
    assert codes == [202, 202, 429]
    assert Sandbox.objects.count() == 2
    # Everything else still goes through.
    assert api.get("/api/v1/sandboxes").status_code == 200
    cmux = api.post("/api/sandboxes/start", {"snapshotId": "memory_1vcpu_1gb_8gb"}, format="json")
    assert cmux.status_code == 429  # cmux's start is a create too


def test_an_empty_rate_switches_the_limit_off(rates, api):
    rates("", "")
    assert {api.get("/api/v1/config").status_code for _ in range(20)} == {200}


@pytest.mark.parametrize(
    ("rate", "parsed"),
    [
        ("600/min", (600, 60)),
        ("5/s", (5, 1)),
        ("10/hour", (10, 3600)),
        ("1/d", (1, 86400)),
        ("", None),
    ],
)
def test_parse_rate(rate, parsed):
    assert parse_rate(rate) == parsed


def test_parse_rate_refuses_nonsense():
    with pytest.raises(ValueError, match="not a rate"):
        parse_rate("lots")


def redis_is_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("store", ["database", "redis"])
def test_counters_count_per_window_on_both_stores(settings, store):
    """The two stores several web workers share: a count per key, restarted by a new window."""
    if store == "redis":
        require("redis-server", redis_is_up(), "apt-get install redis-server; redis-server &")
        location = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
        settings.CACHES = {
            **settings.CACHES,
            "throttle": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": location,
            },
        }
    settings.SANDBOX_API_THROTTLE_STORE = store
    key = f"test:{uuid.uuid4().hex}"
    assert [count_request(key, window=7, period=60) for _ in range(3)] == [1, 2, 3]
    assert count_request(key + ":other", window=7, period=60) == 1
    assert count_request(key, window=8, period=60) == 1  # a new window starts from one
    assert count_request(key, window=8, period=60) == 2
    if store == "database":
        # A late request of an older window still counts, in the newer window.
        assert count_request(key, window=7, period=60) == 3
        assert ThrottleCounter.objects.get(key=key).window == 8
        assert ThrottleCounter.objects.count() == 2  # one row per key, whatever the windows
    else:
        caches["throttle"].delete_many([f"{key}:7", f"{key}:8", f"{key}:other:7"])


@pytest.mark.django_db(transaction=True)
def test_on_postgresql_the_counter_commits_on_its_own_and_leaves_the_session_alone(settings):
    from django.db import connection

    require(
        "PostgreSQL",
        connection.vendor == "postgresql",
        "run with DATABASE_URL=postgres://postgres@127.0.0.1:5432/sandboxes",
    )
    settings.SANDBOX_API_THROTTLE_STORE = "database"
    assert [count_request("pg:test", window=1, period=60) for _ in range(2)] == [1, 2]
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"  # SET LOCAL ended with the upsert's transaction
    assert not connection.in_atomic_block
    assert ThrottleCounter.objects.get(key="pg:test").count == 2
