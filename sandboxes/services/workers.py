"""Keeping the background worker alive: heartbeats, stall detection, recovery, liveness.

A django-q2 cluster can wedge for good: its processes share multiprocessing queues whose
locks are not robust, so a worker killed (``kill -9``, the OOM killer) while it waits on
the task queue takes the queue's read lock with it, and every other worker then waits
forever. ``manage.py worker`` (``sandboxes.supervisor``) therefore runs the cluster as a
child and watches what matters, not whether processes exist:

* every ``WORKER_HEARTBEAT_SECONDS`` it enqueues a heartbeat task addressed to its current
  cluster (``generation``). A cluster that takes another worker's heartbeat passes it on,
  so on several machines each supervisor still learns about its own cluster. The beat is
  recorded in the cluster's monitor process after the broker acknowledged the task, so it
  proves the whole pipeline: pusher, a worker, the monitor;
* with no beat for ``WORKER_STALL_SECONDS`` while some of its worker processes are idle
  (a cluster whose workers are all on long tasks is busy, not stalled), or when the
  cluster's main process is gone, it kills the cluster's process group and starts a new
  one, then recovers: leases taken by the dead cluster are released and a sweep that does
  not wait ``SANDBOX_STUCK_SECONDS`` resumes every operation it left in a transitional
  status. Operations are idempotent and leased, so one that also comes back from the
  broker later does nothing.

Liveness (``/api/v1/health``, the providers page) is read from the ``Worker`` rows and
the age of the last finished sweep.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import Task
from django_q.tasks import async_task

from sandboxes.logfilters import HEARTBEAT_TASK
from sandboxes.models import Sandbox, Snapshot, Worker, WorkerState

logger = logging.getLogger(__name__)

#: Set by the supervisor in its cluster's environment: ``<worker pk>.<generation>``.
CLUSTER_ENV = "SANDBOXES_WORKER_CLUSTER"
#: The directory where the cluster's worker processes say which task they are on.
RUN_DIR_ENV = "SANDBOXES_WORKER_RUN_DIR"
SWEEP_TASK = "sandboxes.tasks.run_sweep"
#: A heartbeat taken by other clusters this many times in a row is dropped (the next
#: one is on its way).
MAX_HOPS = 16


def cluster_name(worker: Worker) -> str:
    return f"{worker.pk}.{worker.generation}"


def current_cluster() -> str:
    """The cluster this process belongs to ('' outside a supervised cluster)."""
    return os.environ.get(CLUSTER_ENV, "")


def lease_prefix() -> str:
    """Leases taken in a supervised cluster carry its name, so a supervisor that killed
    the cluster can release exactly what it held."""
    cluster = current_cluster()
    return f"{cluster}:" if cluster else ""


# --- the supervisor's side ---------------------------------------------------------------


def register(*, host: str, pid: int) -> Worker:
    now = timezone.now()
    return Worker.objects.create(
        host=host, pid=pid, started_at=now, seen_at=now, state=WorkerState.STARTING
    )


def send_heartbeat(*, worker: Worker) -> None:
    """Ask the current cluster to prove it works (also marks the supervisor as seen)."""
    Worker.objects.filter(pk=worker.pk).update(seen_at=timezone.now(), state=worker.state)
    _enqueue_heartbeat(cluster_name(worker), 0)


def _enqueue_heartbeat(cluster: str, hops: int) -> None:
    # django-q2 logs "Enqueued [queue] id" without the task's name: silence that one line.
    quiet = logging.getLogger("django-q")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        async_task(HEARTBEAT_TASK, cluster, hops, save=False, task_name="heartbeat")
    finally:
        quiet.setLevel(level)


def last_beat(*, worker: Worker) -> datetime | None:
    return Worker.objects.filter(pk=worker.pk).values_list("beat_at", flat=True).get()


def set_state(*, worker: Worker, state: WorkerState) -> None:
    worker.state = state
    Worker.objects.filter(pk=worker.pk).update(state=state, seen_at=timezone.now())


def begin_generation(*, worker: Worker, reason: str = "") -> str:
    """A new cluster is about to start: count the restart (if it is one); its name."""
    now = timezone.now()
    worker.generation += 1
    fields: dict[str, object] = {"generation": worker.generation, "seen_at": now}
    if reason:
        worker.restarts += 1
        fields.update(restarts=worker.restarts, last_restart_at=now, last_restart_reason=reason)
        logger.warning("worker %s: restarting its cluster: %s", worker.pk, reason)
    worker.state = WorkerState.STARTING
    fields["state"] = worker.state
    Worker.objects.filter(pk=worker.pk).update(**fields)
    return cluster_name(worker)


def recover_from(*, cluster: str) -> int:
    """The cluster ``cluster`` is dead: free its leases and have its work resumed now.

    Returns how many leases were released. The recovery sweep is queued for the next
    cluster, which also resumes operations whose task the dead cluster had taken from the
    queue before it took their lease (the broker would give those back only after
    ``Q_CLUSTER['retry']``).
    """
    return _release_and_resume(Q(lease_token__startswith=f"{cluster}:"), now=timezone.now())


def _release_and_resume(held: Q, *, now: datetime) -> int:
    released = Sandbox.objects.filter(held).update(lease_expires_at=now)
    released += Snapshot.objects.filter(held).update(lease_expires_at=now)
    async_task(SWEEP_TASK, 0, task_name="sweep after a worker restart")
    return released


def stop(*, worker: Worker) -> None:
    set_state(worker=worker, state=WorkerState.STOPPED)


def recover_lost_workers(*, now: datetime | None = None) -> int:
    """Workers whose supervisor stopped reporting (its machine died, it was killed):
    recover what their clusters held, as for a cluster restart; return how many.

    Any supervisor does this on each probe; the first to mark a lost worker stopped
    recovers it. Stopped workers are forgotten after a week.
    """
    now = now or timezone.now()
    silent = settings.WORKER_STALL_SECONDS + 3 * settings.WORKER_HEARTBEAT_SECONDS
    Worker.objects.filter(state=WorkerState.STOPPED, seen_at__lt=now - timedelta(days=7)).delete()
    recovered = 0
    lost = Worker.objects.exclude(state=WorkerState.STOPPED).filter(
        seen_at__lt=now - timedelta(seconds=silent)
    )
    for row in lost:
        won = (
            Worker.objects.filter(pk=row.pk, seen_at=row.seen_at)
            .exclude(state=WorkerState.STOPPED)
            .update(state=WorkerState.STOPPED)
        )
        if won:
            logger.warning(
                "worker %s on %s stopped reporting: recovering its work", row.pk, row.host
            )
            _release_and_resume(Q(lease_token__startswith=f"{row.pk}."), now=now)
            recovered += 1
    return recovered


# --- the cluster's side ------------------------------------------------------------------


def heartbeat(*, cluster: str, hops: int) -> None:
    """Run in a worker process: nothing to do; the monitor records it (``note_done``)."""


def note_busy(*, busy: bool) -> None:
    """In a worker process, around each task: the supervisor counts busy workers from
    these files (``busy_workers``) to tell a busy cluster from a stalled one."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        return
    marker = Path(run_dir) / f"busy.{os.getpid()}"
    if busy:
        marker.touch()
    else:
        marker.unlink(missing_ok=True)


def busy_workers(run_dir: Path) -> int:
    """How many live worker processes are on a task (a killed one's file is ignored)."""
    count = 0
    for marker in run_dir.glob("busy.*"):
        try:
            os.kill(int(marker.suffix[1:]), 0)
        except (ProcessLookupError, ValueError):
            marker.unlink(missing_ok=True)
            continue
        count += 1
    return count


def note_done(*, task: dict) -> None:
    """In the monitor, after the broker acknowledged ``task``: record a heartbeat that
    was ours, pass on one that was for another cluster."""
    if task.get("func") != HEARTBEAT_TASK or not task.get("success"):
        return
    cluster, hops = task["args"]
    worker_pk, generation = (int(part) for part in cluster.split("."))
    if cluster == current_cluster():
        Worker.objects.filter(pk=worker_pk).update(beat_at=timezone.now())
        return
    # Another cluster's: pass it on while that cluster is still the worker's current one.
    current = Worker.objects.filter(pk=worker_pk, generation=generation).exclude(
        state=WorkerState.STOPPED
    )
    if hops < MAX_HOPS and current.exists():
        _enqueue_heartbeat(cluster, hops + 1)


# --- liveness, for people --------------------------------------------------------------


@dataclass(frozen=True)
class WorkerLiveness:
    host: str
    pid: int
    state: str
    alive: bool
    seen_seconds_ago: float
    beat_seconds_ago: float | None
    restarts: int
    last_restart_reason: str


@dataclass(frozen=True)
class Liveness:
    #: "inline": tasks run in the request (Q_SYNC); "cluster": a worker runs them.
    mode: str
    ok: bool
    detail: str
    workers: list[WorkerLiveness]
    last_sweep_seconds_ago: float | None


def sweep_stale_seconds() -> int:
    """A sweep older than this means the schedules are not running."""
    return settings.SANDBOX_SWEEP_MINUTES * 60 * 3 + settings.WORKER_STALL_SECONDS


def liveness(*, now: datetime | None = None) -> Liveness:
    now = now or timezone.now()
    sweep_age = _last_sweep_age(now)
    if Conf.SYNC:
        return Liveness("inline", True, "tasks run inline (Q_SYNC)", [], sweep_age)
    stall = settings.WORKER_STALL_SECONDS
    recent = now - timedelta(seconds=stall + 3 * settings.WORKER_HEARTBEAT_SECONDS)
    rows = Worker.objects.exclude(state=WorkerState.STOPPED).filter(seen_at__gte=recent)
    workers = [_worker_liveness(row, now) for row in rows]
    alive = [w for w in workers if w.alive]
    sweep_due = sweep_age is None or sweep_age > sweep_stale_seconds()
    oldest_start = min((row.started_at for row in rows), default=now)
    sweep_late = sweep_due and (now - oldest_start).total_seconds() > sweep_stale_seconds()
    if not workers:
        detail = "no worker has reported: start one with `manage.py worker`"
    elif not alive:
        detail = f"no worker's cluster has run a task in the last {stall} s"
    elif sweep_late:
        detail = "the last sweep is older than expected: are the schedules installed?"
    else:
        detail = f"{len(alive)} worker(s) running tasks"
    return Liveness("cluster", bool(alive) and not sweep_late, detail, workers, sweep_age)


def _worker_liveness(row: Worker, now: datetime) -> WorkerLiveness:
    beat_age = (now - row.beat_at).total_seconds() if row.beat_at else None
    fresh = beat_age is not None and beat_age <= settings.WORKER_STALL_SECONDS
    return WorkerLiveness(
        host=row.host,
        pid=row.pid,
        state=row.state,
        alive=fresh or row.state == WorkerState.BUSY,
        seen_seconds_ago=(now - row.seen_at).total_seconds(),
        beat_seconds_ago=beat_age,
        restarts=row.restarts,
        last_restart_reason=row.last_restart_reason,
    )


def _last_sweep_age(now: datetime) -> float | None:
    stopped = (
        Task.objects.filter(func=SWEEP_TASK, success=True)
        .order_by("-stopped")
        .values_list("stopped", flat=True)
        .first()
    )
    return (now - stopped).total_seconds() if stopped else None
