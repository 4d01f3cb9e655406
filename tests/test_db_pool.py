"""The PostgreSQL connection pool (``DB_POOL_*``; sandboxes/db_pool.py).

Each web process borrows connections from a pool instead of opening one per request.
Long calls (exec, ``?wait``, the service proxy) give theirs back while they wait on a
sandbox, so N + 1 long calls on a pool of N still leave a connection for a short
request; a forked child (django-q2's workers) makes a pool of its own; SQLite has none.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from django.db import connection, transaction

from config import settings as project_settings
from sandboxes import db_pool
from sandboxes.models import Sandbox, Team
from sandboxes.services import lifecycle, long_calls
from sandboxes.services.actors import Actor
from tests.api.conftest import bearer_client

pytestmark = pytest.mark.django_db(transaction=True)
POOL_SIZE = 2

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the pool is PostgreSQL's (DATABASE_URL=postgres://)"
)


def until(condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.05)


# --- the settings


def test_postgresql_gets_a_pool_sized_by_the_environment(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db.internal:5432/sandboxes")
    monkeypatch.setenv("DB_POOL_MAX_SIZE", "6")
    monkeypatch.setenv("DB_POOL_MIN_SIZE", "9")  # more than the maximum: the maximum
    monkeypatch.setenv("DB_POOL_TIMEOUT", "3")
    monkeypatch.setenv("DB_CONN_MAX_AGE", "60")  # the pool replaces persistent connections
    config = project_settings._database()
    assert config["OPTIONS"]["pool"] == {
        "min_size": 6,
        "max_size": 6,
        "timeout": 3,
        "max_idle": 300,
    }
    assert config["CONN_MAX_AGE"] == 0
    assert config["CONN_HEALTH_CHECKS"] is True


def test_a_pool_size_of_zero_is_a_connection_per_request_as_before(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db.internal:5432/sandboxes")
    monkeypatch.setenv("DB_POOL_MAX_SIZE", "0")
    monkeypatch.setenv("DB_CONN_MAX_AGE", "60")
    config = project_settings._database()
    assert "pool" not in config.get("OPTIONS", {})
    assert config["CONN_MAX_AGE"] == 60


def test_sqlite_has_no_pool(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite3'}")
    monkeypatch.setenv("DB_POOL_MAX_SIZE", "6")
    config = project_settings._database()
    assert "pool" not in config["OPTIONS"]
    assert config["CONN_MAX_AGE"] == 0


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's behaviour")
def test_on_sqlite_giving_back_keeps_the_connection():
    Team.objects.count()
    before = connection.connection
    db_pool.give_back()
    assert not db_pool.pooled()
    assert connection.connection is before


# --- PostgreSQL: the pool itself


@pytest.fixture
def small_pool() -> Iterator[int]:
    """The default database's pool made POOL_SIZE connections for the test."""
    options = connection.settings_dict["OPTIONS"]  # shared with every thread's connection
    saved = options.get("pool")
    connection.close()
    connection.close_pool()
    options["pool"] = {"min_size": 1, "max_size": POOL_SIZE, "timeout": 5}
    try:
        yield POOL_SIZE
    finally:
        connection.close()
        connection.close_pool()
        if saved is None:
            options.pop("pool", None)
        else:
            options["pool"] = saved


@postgres_only
def test_long_execs_beyond_the_pool_size_leave_a_connection_for_a_short_request(
    small_pool, settings, memory_backend, team, member, tmp_path
):
    settings.SANDBOX_LONG_CALLS_PER_TEAM = small_pool + 2
    box = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(member), preset_id="1vcpu_1gb_8gb"
    )
    clients = [bearer_client(member, team) for _ in range(small_pool + 2)]
    gate = tmp_path / "go"
    waiting = ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done; echo done"]
    url = f"/api/v1/sandboxes/{box.pk}/exec"
    answers: list[int] = []

    def long_exec(client) -> None:
        try:
            body = {"command": waiting, "timeout_seconds": 120}
            answers.append(client.post(url, body, format="json").status_code)
        finally:
            connection.close()

    def slots_held() -> int:
        held = long_calls.in_use(team=team)
        connection.close()  # this thread holds none while the others run
        return held

    assert Sandbox.objects.get(pk=box.pk).status == "running"
    connection.close()
    threads = [threading.Thread(target=long_exec, args=(c,)) for c in clients[:-1]]
    for thread in threads:
        thread.start()
    try:
        # Each exec borrowed a connection to authenticate and take its slot: the third
        # could only do so because the first two gave theirs back.
        until(lambda: slots_held() == small_pool + 1, "every long exec running")
        short = clients[-1].get("/api/v1/config")
        assert short.status_code == 200
    finally:
        gate.touch()
        for thread in threads:
            thread.join(60)
    assert answers == [200] * (small_pool + 1)


@postgres_only
def test_giving_back_inside_a_transaction_keeps_the_connection(small_pool):
    with transaction.atomic():
        Team.objects.create(slug="kept", name="Kept")
        before = connection.connection
        db_pool.give_back()
        assert connection.connection is before  # the transaction goes on
    assert Team.objects.filter(slug="kept").exists()
    db_pool.give_back()
    assert connection.connection is None  # back in the pool


@postgres_only
def test_a_forked_child_makes_a_pool_of_its_own(small_pool):
    assert Team.objects.count() == 0  # the parent borrowed a connection from its pool
    parent_pool = connection.pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing inherited is used, its own pool works
        answer = b"E"
        try:
            fresh = connection.connection is None and connection.pool is not parent_pool
            answer = b"1" if fresh and Team.objects.count() == 0 else b"0"
        finally:
            os.write(write, answer)
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert connection.pool is parent_pool
    assert Team.objects.count() == 0  # the parent's connection still works
