"""Schedules installed by name; the sweep's bounds and its resilience."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import Schedule

from bench.bench_background import populate
from providers.errors import Unavailable
from sandboxes import schedules, tasks
from sandboxes.models import Sandbox
from sandboxes.services import lifecycle
from sandboxes.services.actors import Actor
from sandboxes.services.sweep import run_sweep
from sandboxes.states import Status
from tests.background import harness

pytestmark = pytest.mark.django_db(transaction=True)


def ours() -> dict[str, tuple[str, int]]:
    return {
        s.name: (s.func, s.minutes)
        for s in Schedule.objects.filter(name__startswith=schedules.PREFIX)
    }


def test_migrate_installs_the_declared_schedules():
    # The test database was flushed and post_migrate ran, as after `manage.py migrate`.
    assert ours() == {
        "sandboxes.sweep": ("sandboxes.tasks.run_sweep", 1),
        "sandboxes.snapshot-retention": ("sandboxes.tasks.run_snapshot_retention", 60),
        "sandboxes.pools": ("sandboxes.tasks.maintain_pools", 1),
    }
    assert all(
        s.schedule_type == Schedule.MINUTES and s.repeats == -1 for s in Schedule.objects.all()
    )


def test_sync_is_idempotent_and_follows_the_settings(settings):
    assert schedules.sync_schedules() == []
    settings.SANDBOX_SWEEP_MINUTES = 5
    assert schedules.sync_schedules() == ["updated sandboxes.sweep (minutes)"]
    assert ours()["sandboxes.sweep"] == ("sandboxes.tasks.run_sweep", 5)
    assert schedules.sync_schedules() == []


def test_sync_removes_what_we_no_longer_declare_and_leaves_other_schedules():
    Schedule.objects.create(name="sandboxes.retired-job", func="sandboxes.tasks.gone")
    Schedule.objects.create(name="sandboxes.sweep", func="sandboxes.tasks.run_sweep", minutes=1)
    Schedule.objects.create(name="nightly-report", func="reports.nightly")
    out = StringIO()
    call_command("sync_schedules", stdout=out)
    assert "removed sandboxes.retired-job" in out.getvalue()
    assert "removed duplicate sandboxes.sweep" in out.getvalue()
    assert set(ours()) == {"sandboxes.sweep", "sandboxes.snapshot-retention", "sandboxes.pools"}
    assert Schedule.objects.filter(name="nightly-report").exists()
    out = StringIO()
    call_command("sync_schedules", stdout=out)
    assert out.getvalue().strip() == "schedules are up to date"


def test_the_scheduled_task_runs_a_sweep(memory_backend, team, member):
    sandbox = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(member), preset_id="1vcpu_1gb_8gb", ttl_seconds=60
    )
    Sandbox.objects.filter(pk=sandbox.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert tasks.run_sweep()["ttl"] == 1
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.STOPPED


def sweep_queries() -> tuple[int, dict[str, int]]:
    with harness.tasks_to_the_broker(), CaptureQueriesContext(connection) as queries:
        report = run_sweep()
    assert report.errors == {}
    return len(queries), report.actions


def test_a_sweep_costs_the_same_queries_for_ten_times_the_sandboxes(memory_backend, settings):
    """The sweep reads with a fixed number of queries and acts at most a batch per kind."""
    settings.SANDBOX_SWEEP_BATCH = 1  # a hundred sandboxes fill every kind's batch too
    populate(100, team_count=3, prefix="s")
    small, small_actions = sweep_queries()
    # Retire the first population: deleted rows without instances need nothing.
    Sandbox.objects.update(status=Status.DELETED)
    memory_backend.instances.clear()
    populate(1000, team_count=3, prefix="l")
    large, large_actions = sweep_queries()
    every_kind_once = {
        **dict.fromkeys(["stuck", "drift", "ttl", "idle", "failed", "parked", "orphans"], 1),
        "snapshots": 0,
        "setups": 0,
        "images": 0,
        "pools": 0,
    }
    assert small_actions == large_actions == every_kind_once
    assert large == small


def test_a_provider_that_cannot_be_listed_does_not_stop_the_rest(memory_backend, team, member):
    sandbox = lifecycle.create_sandbox(
        team=team, actor=Actor.for_user(member), preset_id="1vcpu_1gb_8gb", ttl_seconds=60
    )
    Sandbox.objects.filter(pk=sandbox.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    memory_backend.faults["list"] = [Unavailable("API down")]
    report = run_sweep()
    assert report.unavailable == {"memory": "API down"}
    assert report.errors == {}
    assert report.actions["ttl"] == 1  # decided from the database alone
    assert report.actions["drift"] == report.actions["orphans"] == 0
