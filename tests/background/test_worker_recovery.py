"""The background worker cannot wedge: ``manage.py worker`` against ``kill -9``.

django-q2's processes share multiprocessing queues whose locks die with their holder: a
worker killed while it waits for a task takes the task queue's read lock with it, and
the cluster then never runs another task (the first test shows it on a bare
``qcluster``). The supervisor restarts such a cluster, and one that died, and resumes
what it held without waiting for leases or ``SANDBOX_STUCK_SECONDS``.

The filestore provider is enough here (it is shared between processes): what is under
test is the queue and the worker processes, not a provider.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest
from django_q.tasks import async_task

from providers.base import InstanceStatus
from sandboxes.models import Sandbox, SandboxEvent, Worker, WorkerState
from sandboxes.services import lifecycle
from sandboxes.services.actors import Actor
from sandboxes.states import Status
from tests.background import harness

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

#: Short enough for a test, long enough that a healthy cluster on a loaded CI machine is
#: never taken for a stalled one.
TIMING = {"WORKER_HEARTBEAT_SECONDS": "1", "WORKER_STALL_SECONDS": "6", "Q_WORKERS": "2"}


@pytest.fixture(scope="module")
def filestore_put(tmp_path_factory):
    with harness.harness("filestore", tmp_path_factory) as put:
        yield put


@pytest.fixture
def backend(filestore_put, presets):
    active = harness.activate("filestore", filestore_put)
    yield active
    harness.clean_up(active)


@pytest.fixture
def actor(member) -> Actor:
    return Actor.for_user(member)


# --- processes ----------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    with contextlib.suppress(FileNotFoundError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return sorted(int(child) for child in text.split())
    return []


def _roles_now(main: int, workers: int) -> dict[str, int] | None:
    """The cluster's processes by role, once all are up: django-q2 forks the sentinel
    from the main process, then the workers, the monitor and the pusher, in order."""
    sentinel = _children(main)
    spawned = _children(sentinel[0]) if sentinel else []
    if len(spawned) < workers + 2:
        return None
    roles = {"main": main, "sentinel": sentinel[0], "monitor": spawned[-2], "pusher": spawned[-1]}
    roles.update({f"worker {n + 1}": pid for n, pid in enumerate(spawned[:workers])})
    return roles


def cluster_roles(main: int, workers: int = 2) -> dict[str, int]:
    return harness.wait_until(lambda: _roles_now(main, workers), what="the cluster started")


def supervised_roles(supervisor: int, workers: int = 2) -> dict[str, int]:
    """The roles in the supervisor's current cluster (a dead one may linger a moment)."""
    return harness.wait_until(
        lambda: (main := _children(supervisor)) and _roles_now(main[0], workers),
        what="the supervised cluster started",
    )


@contextlib.contextmanager
def supervised(backend, tmp_path: Path, **env: str):
    worker = harness.Cluster(
        backend.worker_env(**TIMING, **env), tmp_path / "worker.log", command="worker"
    )
    try:
        harness.wait_until(
            lambda: Worker.objects.filter(pid=worker.process.pid, beat_at__isnull=False).exists(),
            what="the supervised cluster ran its first heartbeat",
        )
        yield worker
    finally:
        worker.process.send_signal(signal.SIGTERM)  # it stops its own cluster
        with contextlib.suppress(Exception):
            worker.process.wait(30)
        for leftover in _children(worker.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leftover, signal.SIGKILL)
        worker.kill()


def ran_since_restart(supervisor: int) -> bool:
    """The supervisor's current cluster has run a heartbeat (it is past its start-up)."""
    record = Worker.objects.get(pid=supervisor)
    return bool(record.beat_at and record.beat_at > (record.last_restart_at or record.started_at))


def create(backend, team, actor) -> Sandbox:
    return lifecycle.create_sandbox(team=team, actor=actor, preset_id=backend.preset_id)


def wait_running(sandbox: Sandbox, *, after: str) -> None:
    harness.wait_until(
        lambda: Sandbox.objects.filter(pk=sandbox.pk, status=Status.RUNNING).exists(),
        what=f"{sandbox.pk} running after {after}",
        seconds=120,
    )


def assert_started_once(backend, sandbox: Sandbox) -> None:
    sandbox.refresh_from_db()
    assert [i.id for i in backend.instances_of(sandbox.pk)] == [sandbox.provider_ref]
    assert backend.status_of(sandbox.provider_ref) == InstanceStatus.RUNNING
    started = SandboxEvent.objects.filter(sandbox=sandbox, action="start", outcome="succeeded")
    assert started.count() == 1


# --- the attack, without the supervisor -------------------------------------------------


def test_a_bare_qcluster_wedges_for_good_when_its_idle_workers_are_killed(
    backend, team, actor, tmp_path
):
    """Why ``manage.py worker`` exists: django-q2 alone never runs another task."""
    env = backend.worker_env(Q_WORKERS="2")
    with harness.clusters(env, tmp_path) as (cluster,), harness.tasks_to_the_broker():
        roles = cluster_roles(cluster.process.pid)
        first = create(backend, team, actor)
        wait_running(first, after="the cluster started")
        for role in ("worker 1", "worker 2"):  # both idle: one of them holds the lock
            os.kill(roles[role], signal.SIGKILL)
        # The sentinel starts two new workers; they wait for the dead one's lock.
        harness.wait_until(
            lambda: len(_children(roles["sentinel"])) == 4, what="the sentinel replaced them"
        )
        second = create(backend, team, actor)
        with pytest.raises(AssertionError, match="gave up waiting"):
            harness.wait_until(
                lambda: Sandbox.objects.filter(pk=second.pk, status=Status.RUNNING).exists(),
                what="a task run by a wedged cluster",
                seconds=15,
            )
        assert Sandbox.objects.get(pk=second.pk).status == Status.STARTING


# --- with the supervisor ------------------------------------------------------------------


def test_killing_any_process_of_the_cluster_never_stops_creates(backend, team, actor, tmp_path):
    with supervised(backend, tmp_path) as worker, harness.tasks_to_the_broker():
        supervisor = worker.process.pid
        roles = list(supervised_roles(supervisor))
        for role in roles:  # each kind of process in turn, in a cluster that ran a task
            harness.wait_until(
                lambda: ran_since_restart(supervisor), what="the cluster ran a heartbeat"
            )
            os.kill(supervised_roles(supervisor)[role], signal.SIGKILL)
            sandbox = create(backend, team, actor)
            wait_running(sandbox, after=f"kill -9 of the cluster's {role}")
            assert_started_once(backend, sandbox)
        record = Worker.objects.get(pid=supervisor)
    assert record.restarts >= 1
    assert record.last_restart_reason  # what the supervisor saw, for the operator
    # Each kill was recovered from; nothing ran twice to a different end.
    for sandbox in Sandbox.objects.all():
        assert_started_once(backend, sandbox)


def test_a_cluster_killed_mid_create_is_restarted_and_the_start_resumed_at_once(
    backend, team, actor, tmp_path
):
    """The dead cluster's lease is released and the start resumed: neither the 900 s
    lease nor the 300 s stuck threshold is waited for."""
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "hold").write_text("")
    env = {
        "SBX_TEST_HOLD_DIR": str(hold),
        "SANDBOX_OPERATION_LEASE_SECONDS": "900",
        "SANDBOX_STUCK_SECONDS": "300",
    }
    with supervised(backend, tmp_path, **env) as worker, harness.tasks_to_the_broker():
        sandbox = create(backend, team, actor)
        entered = harness.wait_until(
            lambda: list(hold.glob("entered.*")), what="the worker made the instance"
        )
        made = entered[0].read_text()
        os.killpg(_children(worker.process.pid)[0], signal.SIGKILL)  # the whole cluster
        (hold / "hold").unlink()
        wait_running(sandbox, after="its cluster was killed inside create")
    sandbox.refresh_from_db()
    assert sandbox.provider_ref == made  # resumed by reference: no second instance
    assert_started_once(backend, sandbox)
    retried = SandboxEvent.objects.get(sandbox=sandbox, action="reconcile")
    assert (retried.data["reason"], retried.data["resolution"]) == ("stuck", "retried")
    assert "exited" in Worker.objects.get(pid=worker.process.pid).last_restart_reason


def test_a_cluster_busy_with_long_tasks_is_not_taken_for_a_stalled_one(
    backend, team, actor, tmp_path
):
    with supervised(backend, tmp_path) as worker, harness.tasks_to_the_broker():
        for _ in range(2):
            async_task("time.sleep", 10)  # longer than WORKER_STALL_SECONDS
        harness.wait_until(
            lambda: Worker.objects.filter(pid=worker.process.pid, state=WorkerState.BUSY).exists(),
            what="the supervisor saw every worker process busy",
        )
        sandbox = create(backend, team, actor)  # served once a worker is free
        wait_running(sandbox, after="the long tasks")
        record = Worker.objects.get(pid=worker.process.pid)
    assert record.restarts == 0
    assert_started_once(backend, sandbox)


def test_two_workers_on_one_queue_each_hear_their_own_cluster(backend, team, actor, tmp_path):
    """Heartbeats taken by the other machine's cluster are passed on, so neither
    supervisor mistakes a healthy cluster for a stalled one."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    with supervised(backend, one) as first, supervised(backend, two) as second:
        pids = (first.process.pid, second.process.pid)
        start = {w.pid: w.beat_at for w in Worker.objects.filter(pid__in=pids)}
        harness.wait_until(
            lambda: all(w.beat_at > start[w.pid] for w in Worker.objects.filter(pid__in=pids)),
            what="both supervisors heard their own cluster again",
        )
        # Three stall windows: a supervisor that heard only the other cluster would
        # have restarted its own by now.
        harness.wait_until(
            lambda: all(
                (w.beat_at - start[w.pid]).total_seconds() > 18
                for w in Worker.objects.filter(pid__in=pids)
            ),
            what="both kept hearing their own cluster",
            seconds=60,
        )
        restarts = {w.pid: w.restarts for w in Worker.objects.filter(pid__in=pids)}
    assert restarts == {pids[0]: 0, pids[1]: 0}
