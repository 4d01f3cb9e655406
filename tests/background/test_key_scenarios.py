"""The background work's key promises, against every provider the conformance suite runs.

* an expired TTL is acted on exactly once, even with two real workers (and two racing
  sweeps);
* a worker killed mid-start is recovered by reconciliation, with exactly one instance;
* an orphan instance is removed after its grace period, and nothing else is;
* a snapshot version in use is never deleted by retention;
* an idle sandbox is paused, and a request through the service proxy wakes it and is
  served.
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_q.models import Task
from django_q.tasks import async_task

from providers import unix_http
from providers.base import InstanceStatus
from providers.errors import NotFound
from sandboxes.models import Outcome, Sandbox, SandboxEvent, Snapshot, SnapshotStatus
from sandboxes.services import gc, interactive, lifecycle, scheduled, snapshots
from sandboxes.services.actors import Actor
from sandboxes.services.sweep import run_snapshot_retention, run_sweep
from sandboxes.states import Status
from tests.background import harness

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def actor(member) -> Actor:
    return Actor.for_user(member)


def start(backend, team, actor, **kwargs) -> Sandbox:
    sandbox = lifecycle.create_sandbox(
        team=team, actor=actor, preset_id=backend.preset_id, provider=backend.name, **kwargs
    )
    sandbox.refresh_from_db()
    return sandbox


def scheduler_events(sandbox: Sandbox, action: str):
    return SandboxEvent.objects.filter(sandbox=sandbox, action=action, actor_kind="scheduler")


# --- TTL exactly once ---------------------------------------------------------------------


def test_two_sweeps_racing_act_on_an_expired_ttl_once(backend, team, actor):
    sandbox = start(backend, team, actor, ttl_seconds=3600, ttl_action="stop")
    assert sandbox.status == Status.RUNNING
    Sandbox.objects.filter(pk=sandbox.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    now = timezone.now()
    # Both sweeps pick the sandbox before either acts: only the compare-and-set decides.
    picked = [gc.ttl_candidates(now=now, limit=10) for _ in range(2)]
    assert [[s.pk for s in p] for p in picked] == [[sandbox.pk], [sandbox.pk]]
    barrier = threading.Barrier(2)
    acted: list[int] = []

    def sweep(candidates):
        barrier.wait()
        try:
            acted.append(gc.act_on_expired(candidates, now=now))
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep, args=(p,)) for p in picked]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(acted) == [0, 1]
    sandbox.refresh_from_db()
    assert sandbox.status == Status.STOPPED
    assert sandbox.expires_at is None
    assert backend.status_of(sandbox.provider_ref) == InstanceStatus.STOPPED
    requested = scheduler_events(sandbox, "stop")
    assert requested.count() == 1
    assert requested.get().data["reason"] == "ttl_expired"
    assert not SandboxEvent.objects.filter(sandbox=sandbox, outcome=Outcome.REFUSED).exists()
    assert run_sweep().actions["ttl"] == 0  # and never again


@pytest.mark.slow
def test_an_expired_ttl_is_acted_on_once_with_two_real_workers(
    shared_backend, team, actor, tmp_path
):
    sandbox = start(shared_backend, team, actor, ttl_seconds=3600, ttl_action="stop")
    assert sandbox.status == Status.RUNNING
    Sandbox.objects.filter(pk=sandbox.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = shared_backend.worker_env(SBX_TEST_LIST_BARRIER=str(barrier), SBX_TEST_LIST_PARTIES="2")
    names = ("sandboxes-a", "sandboxes-b")
    with harness.clusters(env, tmp_path, names), harness.tasks_to_the_broker():
        # One sweep in each worker; both wait inside the provider's list() until the other
        # is there too, so they judge the same rows at the same moment.
        for name in names:
            async_task("sandboxes.tasks.run_sweep", cluster=name)
        harness.wait_until(
            lambda: (
                set(
                    Task.objects.filter(func="sandboxes.tasks.run_sweep").values_list(
                        "cluster", flat=True
                    )
                )
                >= set(names)
                and Sandbox.objects.get(pk=sandbox.pk).status == Status.STOPPED
            ),
            what="a sweep ran in each worker and the sandbox stopped",
        )
    sandbox.refresh_from_db()
    assert sandbox.status == Status.STOPPED
    assert sandbox.expires_at is None
    assert shared_backend.status_of(sandbox.provider_ref) == InstanceStatus.STOPPED
    sweeps = Task.objects.filter(func="sandboxes.tasks.run_sweep")
    assert all(task.success for task in sweeps), [task.result for task in sweeps]
    assert sorted(task.result["ttl"] for task in sweeps)[-2:] == [0, 1]
    assert len(list(barrier.glob("list.*"))) >= 2  # the two workers met in list()
    requested = scheduler_events(sandbox, "stop")
    assert requested.count() == 1, list(requested.values("data", "outcome"))
    assert requested.get().data["reason"] == "ttl_expired"
    stopped = SandboxEvent.objects.filter(sandbox=sandbox, action="stop", outcome="succeeded")
    assert stopped.count() == 1
    assert not SandboxEvent.objects.filter(sandbox=sandbox, outcome=Outcome.REFUSED).exists()


# --- a worker killed mid-start ------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_killed_mid_start_is_recovered_by_reconciliation(
    shared_backend, team, actor, tmp_path, settings
):
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "hold").write_text("")
    env = shared_backend.worker_env(
        SBX_TEST_HOLD_DIR=str(hold), SANDBOX_OPERATION_LEASE_SECONDS="3"
    )
    with harness.clusters(env, tmp_path), harness.tasks_to_the_broker():
        sandbox = lifecycle.create_sandbox(
            team=team, actor=actor, preset_id=shared_backend.preset_id
        )
        entered = harness.wait_until(
            lambda: list(hold.glob("entered.*")), what="the worker made the instance"
        )
        pid = int(entered[0].suffix[1:])
        made = entered[0].read_text()
        os.kill(pid, 9)  # the worker dies inside create, before recording the instance
    sandbox.refresh_from_db()
    assert sandbox.status == Status.STARTING
    assert sandbox.provider_ref == ""
    assert sandbox.lease_token != ""
    assert [i.id for i in shared_backend.instances_of(sandbox.pk)] == [made]

    harness.wait_until(lambda: harness.lease_expired(sandbox.pk), what="the lease expired")
    settings.SANDBOX_STUCK_SECONDS = 0
    report = run_sweep()
    assert report.actions["stuck"] == 1

    sandbox.refresh_from_db()
    assert sandbox.status == Status.RUNNING
    assert sandbox.provider_ref == made
    assert [i.id for i in shared_backend.instances_of(sandbox.pk)] == [made]
    assert shared_backend.status_of(made) == InstanceStatus.RUNNING
    retried = scheduler_events(sandbox, "reconcile").get()
    assert retried.data["reason"] == "stuck"
    assert retried.data["resolution"] == "retried"
    # Found by its marker: not yet started, unless the provider's create boots.
    booted = shared_backend.name in harness.BOOTS_AT_CREATE
    assert retried.data["observed"] == ("running" if booted else "stopped")


def test_a_start_whose_worker_died_after_recording_the_instance_resumes_it(
    backend, team, actor, settings
):
    """The worker died after ``create`` was recorded (inside ``start``): resumed by ref."""
    sandbox = start(backend, team, actor)
    lifecycle.stop_sandbox(sandbox=sandbox, actor=actor)
    ref = Sandbox.objects.get(pk=sandbox.pk).provider_ref
    past = timezone.now() - timedelta(hours=1)
    Sandbox.objects.filter(pk=sandbox.pk).update(
        status=Status.STARTING,
        operation="start",
        lease_token="dead-worker",
        lease_expires_at=past,
        status_changed_at=past,
    )
    settings.SANDBOX_STUCK_SECONDS = 60
    assert run_sweep().actions["stuck"] == 1
    sandbox.refresh_from_db()
    assert (sandbox.status, sandbox.provider_ref) == (Status.RUNNING, ref)
    assert [i.id for i in backend.instances_of(sandbox.pk)] == [ref]


# --- orphans ------------------------------------------------------------------------------


def make_orphan(backend, sandbox_id: str, team_slug: str = "alpha"):
    spec = backend.put.spec(sandbox_id=sandbox_id, preset_id=backend.preset_id)
    metadata = {
        "sandbox_id": sandbox_id,
        "team": team_slug,
        "preset": backend.preset_id,
        "snapshot_id": backend.snapshot.snapshot_id,
    }
    instance = backend.provider.create(spec, backend.put.snapshot_ref, metadata)
    backend.put.made.append(instance)
    return instance


def test_an_orphan_is_removed_after_its_grace_period_and_nothing_else(
    backend, team, actor, settings
):
    settings.SANDBOX_ORPHAN_GRACE_SECONDS = 600
    settings.SANDBOX_ORPHAN_POLICY = "delete"
    keeper = start(backend, team, actor)
    orphan = make_orphan(backend, "sbx-orphan00001")

    first = run_sweep()
    assert first.actions["orphans"] == 1
    found = SandboxEvent.objects.get(action="orphan_found")
    assert (found.actor_kind, found.team, found.sandbox) == ("scheduler", team, None)
    assert found.data["ref"] == orphan.id
    assert found.data["reason"] == "no_row"
    assert backend.provider.get(orphan.id)  # still there: within its grace period

    later = timezone.now() + timedelta(seconds=601)
    assert run_sweep(now=later).actions["orphans"] == 1
    with pytest.raises(NotFound):
        backend.provider.get(orphan.id)
    removed = SandboxEvent.objects.filter(action="orphan_delete").order_by("id")
    assert [(e.outcome, e.actor_kind) for e in removed] == [
        (Outcome.REQUESTED, "scheduler"),
        (Outcome.SUCCEEDED, "scheduler"),
    ]
    keeper.refresh_from_db()
    assert keeper.status == Status.RUNNING
    assert backend.status_of(keeper.provider_ref) == InstanceStatus.RUNNING
    assert run_sweep(now=later).actions["orphans"] == 0


def test_an_orphan_is_adopted_when_its_metadata_rebuilds_the_row(backend, team, settings):
    settings.SANDBOX_ORPHAN_GRACE_SECONDS = 0
    settings.SANDBOX_ORPHAN_POLICY = "adopt"
    orphan = make_orphan(backend, "sbx-lostrow0001")
    orphan.start()
    run_sweep()
    adopted = Sandbox.objects.get(pk="sbx-lostrow0001")
    assert adopted.team == team
    assert adopted.provider_ref == orphan.id
    assert adopted.status == Status.RUNNING
    assert adopted.snapshot == backend.snapshot
    assert adopted.preset_id == backend.preset_id
    assert scheduler_events(adopted, "orphan_adopt").get().outcome == Outcome.SUCCEEDED
    assert backend.status_of(orphan.id) == InstanceStatus.RUNNING
    # Adopted: a row owns it now, so it is no orphan any more.
    run_sweep()
    assert Sandbox.objects.filter(pk="sbx-lostrow0001").count() == 1
    assert not SandboxEvent.objects.filter(action="orphan_delete").exists()


# --- snapshot retention ---------------------------------------------------------------------


def test_a_version_in_use_is_never_deleted(backend, team, actor, settings, team_admin):
    if not backend.provider.capabilities.supports_snapshots:
        pytest.skip(f"{backend.name} takes no snapshots")
    settings.SNAPSHOT_RETENTION = 1
    source = start(backend, team, actor)
    versions = [snapshots.take_snapshot(sandbox=source, actor=actor) for _ in range(3)]
    for version in versions:
        version.refresh_from_db()
        assert version.status == SnapshotStatus.READY
    v2, v3, v4 = versions
    user = start(backend, team, actor, snapshot_id=v2.snapshot_id)
    assert user.status == Status.RUNNING

    run_snapshot_retention()
    states = {s.pk: s.status for s in Snapshot.objects.all()}
    assert states[v3.pk] == SnapshotStatus.DELETED  # beyond retention, unused
    assert states[v2.pk] == SnapshotStatus.READY  # in use by `user`
    assert states[v4.pk] == SnapshotStatus.READY  # the newest of its scope
    assert states[backend.snapshot.pk] == SnapshotStatus.READY  # active (and in use)
    with pytest.raises(NotFound):  # gone on the provider too
        backend.provider.create(backend.put.spec(), v3.provider_ref, {"sandbox_id": "x"})
    event = SandboxEvent.objects.get(snapshot=v3, action="delete_version", outcome="requested")
    assert (event.actor_kind, event.data["reason"]) == ("scheduler", "retention")

    # A candidate that comes into use after it was chosen is refused, not deleted.
    lifecycle.delete_sandbox(sandbox=user, actor=actor)
    chosen = gc.retention_candidates(keep=1)
    assert [s.pk for s in chosen] == [v2.pk]
    again = start(backend, team, actor, snapshot_id=v2.snapshot_id)
    assert gc.delete_snapshots(chosen) == 0
    assert Snapshot.objects.get(pk=v2.pk).status == SnapshotStatus.READY
    assert Sandbox.objects.get(pk=again.pk).status == Status.RUNNING
    lifecycle.delete_sandbox(sandbox=again, actor=actor)
    assert run_snapshot_retention() == 1
    assert Snapshot.objects.get(pk=v2.pk).status == SnapshotStatus.DELETED


# --- idle, then woken by a request -----------------------------------------------------------


def test_an_idle_sandbox_is_paused_and_woken_by_a_request(backend, team, actor, member, client):
    """Parked by the sweep, woken through the service proxy (whatever the provider's own
    ``supports_wake_on``: the proxy does the waking). A sandbox parked by *stop* (a
    provider that can neither pause nor hibernate) is not woken: it answers 409 and stays
    stopped, which is checked instead. Without a recipe in ``HTTP_SERVICES`` only the
    parking is checked (and the test says so by skipping)."""
    serve = harness.HTTP_SERVICES.get(backend.name)
    operation, _ = scheduled.park_operation(backend.name)
    parked = {"pause": Status.PAUSED, "hibernate": Status.HIBERNATED, "stop": Status.STOPPED}
    wakes = operation != "stop"
    sandbox = start(backend, team, actor, idle_timeout_seconds=60)
    port, stop_service = serve(backend, sandbox, b"hello") if serve else (0, lambda: None)
    try:
        if serve:
            interactive.expose_service(sandbox=sandbox, actor=actor, name="web", port=port)
        interactive.set_wake_on(sandbox=sandbox, actor=actor, http=True, ssh=False)
        # A minute passes without use (setting the service up was use, on some providers).
        report = run_sweep(now=timezone.now() + timedelta(seconds=61))
        assert report.actions["idle"] == 1
        sandbox.refresh_from_db()
        assert sandbox.status == parked[operation]
        assert backend.status_of(sandbox.provider_ref) != InstanceStatus.RUNNING
        event = scheduler_events(sandbox, operation).get()
        assert event.data["reason"] == "idle"
        assert event.data["idle_seconds"] >= 60
        if serve is None:
            pytest.skip(f"parked; no HTTP service recipe for {backend.name} in HTTP_SERVICES")

        if serve is not None and backend.name == "local":
            # The provider's own endpoint never wakes it: only the proxy, which records it.
            url = backend.provider.get(sandbox.provider_ref).networking.http_services[0].url
            with unix_http.session() as session:
                assert session.get(url + "hello", timeout=10).status_code == 503
            assert backend.status_of(sandbox.provider_ref) == InstanceStatus.PAUSED
            assert Sandbox.objects.get(pk=sandbox.pk).status == Status.PAUSED

        client.force_login(member)
        response = client.get(f"/s/{sandbox.pk}/web/hello?x=1")
        if not wakes:
            assert response.status_code == 409
            assert Sandbox.objects.get(pk=sandbox.pk).status == parked[operation]
            return
        assert response.status_code == 200
        assert b"".join(response.streaming_content) == b"hello"
        sandbox.refresh_from_db()
        assert sandbox.status == Status.RUNNING
        assert backend.status_of(sandbox.provider_ref) == InstanceStatus.RUNNING
        woke = SandboxEvent.objects.get(sandbox=sandbox, action="resume", outcome="requested")
        assert woke.data == {"reason": "wake_on_http", "requested_by": "alice"}
        assert timezone.now() - sandbox.last_activity_at < timedelta(seconds=30)
        assert run_sweep().actions["idle"] == 0  # the request counted as activity
    finally:
        stop_service()
