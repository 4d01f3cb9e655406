"""What operators see of the background worker, and what happens to a lost one.

The processes themselves (a wedged cluster, kill -9 of each of its processes) are tested
in tests/background/test_worker_recovery.py; here the rows they leave are enough.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import Task

from sandboxes.models import Sandbox, SandboxEvent, Worker, WorkerState
from sandboxes.services import lifecycle, workers
from sandboxes.services.actors import Actor
from sandboxes.states import Status
from tests.api.conftest import bearer_client

pytestmark = pytest.mark.django_db


@contextlib.contextmanager
def cluster_mode():
    """Liveness as a deployment with a worker sees it (the tests run tasks inline)."""
    with mock.patch.object(Conf, "SYNC", False):
        yield


def worker(*, beat_ago: float | None, seen_ago: float = 1, state=WorkerState.RUNNING, **kw):
    now = timezone.now()
    return Worker.objects.create(
        host="w1",
        pid=4242,
        seen_at=now - timedelta(seconds=seen_ago),
        beat_at=None if beat_ago is None else now - timedelta(seconds=beat_ago),
        state=state,
        **kw,
    )


def finished_sweep(ago: float) -> None:
    stopped = timezone.now() - timedelta(seconds=ago)
    Task.objects.create(
        id="sweep1",
        name="sweep",
        func=workers.SWEEP_TASK,
        started=stopped,
        stopped=stopped,
        success=True,
    )


def test_a_worker_whose_cluster_runs_heartbeats_is_healthy(settings):
    settings.WORKER_STALL_SECONDS = 60
    worker(beat_ago=5)
    finished_sweep(30)
    with cluster_mode():
        live = workers.liveness()
    assert (live.mode, live.ok) == ("cluster", True)
    assert live.workers[0].alive
    assert 29 < live.last_sweep_seconds_ago < 60


def test_a_worker_whose_cluster_stopped_running_tasks_is_unhealthy(settings):
    settings.WORKER_STALL_SECONDS = 60
    worker(beat_ago=120, restarts=2, last_restart_reason="its cluster exited (killed by SIGKILL)")
    with cluster_mode():
        live = workers.liveness()
    assert not live.ok
    assert "no worker's cluster has run a task" in live.detail
    assert live.workers[0].restarts == 2


def test_a_busy_worker_is_alive_and_a_missing_one_is_named(settings):
    worker(beat_ago=600, state=WorkerState.BUSY)
    with cluster_mode():
        assert workers.liveness().workers[0].alive
    Worker.objects.all().delete()
    with cluster_mode():
        live = workers.liveness()
    assert not live.ok
    assert "manage.py worker" in live.detail


def test_schedules_that_stopped_running_make_the_worker_unhealthy(settings):
    settings.SANDBOX_SWEEP_MINUTES = 1
    settings.WORKER_STALL_SECONDS = 60
    worker(beat_ago=1, started_at=timezone.now() - timedelta(hours=1))
    finished_sweep(3600)
    with cluster_mode():
        live = workers.liveness()
    assert not live.ok
    assert "sweep" in live.detail


def test_health_and_the_providers_page_report_the_worker(memory_backend, client, member, team):
    api = bearer_client(member, team)
    worker(beat_ago=300, restarts=1, last_restart_reason="no heartbeat for 61 s")
    with cluster_mode():
        health = api.get("/api/v1/health").json()
        client.force_login(member)
        page = client.get("/providers/").content.decode()
    assert health["ok"] is False  # the provider is fine; the worker is not
    assert health["background"]["workers"][0]["last_restart_reason"] == "no heartbeat for 61 s"
    assert "not running tasks" in page
    assert "no heartbeat for 61 s" in page


@pytest.mark.django_db(transaction=True)
def test_the_work_of_a_worker_that_stopped_reporting_is_resumed(memory_backend, team, member):
    """A machine running a worker died mid-start: another worker's supervisor frees the
    lease its cluster held and the start resumes, without waiting for the lease."""
    lost = worker(beat_ago=900, seen_ago=900)
    with mock.patch.object(lifecycle, "_enqueue"):  # the start is left to the lost worker
        sandbox = lifecycle.create_sandbox(
            team=team, actor=Actor.for_user(member), preset_id="1vcpu_1gb_8gb"
        )
    Sandbox.objects.filter(pk=sandbox.pk).update(
        lease_token=f"{lost.pk}.3:" + "a" * 32,
        lease_expires_at=timezone.now() + timedelta(minutes=15),
    )
    assert workers.recover_lost_workers() == 1
    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING  # tasks run inline here
    assert SandboxEvent.objects.filter(sandbox=sandbox, action="reconcile").exists()
    assert Worker.objects.get(pk=lost.pk).state == WorkerState.STOPPED
    assert workers.recover_lost_workers() == 0  # recovered once


def test_leases_taken_in_a_supervised_cluster_carry_its_name(
    monkeypatch, memory_backend, team, member
):
    from sandboxes.services import leases

    with mock.patch.object(lifecycle, "_enqueue"):
        sandbox = lifecycle.create_sandbox(
            team=team, actor=Actor.for_user(member), preset_id="1vcpu_1gb_8gb"
        )
    monkeypatch.setenv(workers.CLUSTER_ENV, "7.2")
    token = leases.claim(Sandbox, sandbox.pk, status=Status.STARTING, seconds=60)
    assert token.startswith("7.2:")
