"""``manage.py worker``: a django-q2 cluster that is restarted when it dies or stalls.

What counts as stalled, and how the work a dead cluster held is resumed, is explained in
``sandboxes.services.workers``; this module only runs processes and the probe loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from sandboxes.models import WorkerState
from sandboxes.services import workers

logger = logging.getLogger(__name__)

#: How long the cluster gets to stop on its own before its process group is killed.
STOP_GRACE_SECONDS = 5
MAX_BACKOFF_SECONDS = 60
#: Before a new cluster's first heartbeat, it gets this long (at least): on a loaded
#: machine Django and django-q2 take a while to start, and a cluster restarted for being
#: slow to start would never get to run anything.
STARTUP_GRACE_SECONDS = 60


class Supervisor:
    def __init__(self, *, manage: list[str]) -> None:
        self.manage = manage
        self.worker = workers.register(host=socket.gethostname(), pid=os.getpid())
        self.run_root = Path(tempfile.mkdtemp(prefix="sandboxes-worker-"))
        self.stopping = threading.Event()
        self.cluster: subprocess.Popen | None = None
        self.cluster_name = ""
        self.run_dir = self.run_root
        self.started_at = timezone.now()
        self.backoff = 0.0

    # --- the loop --------------------------------------------------------------------

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        try:
            self._start_cluster()
            while not self.stopping.wait(settings.WORKER_HEARTBEAT_SECONDS):
                try:
                    self.check()
                except Exception:  # the database may be away for a while: keep watching
                    logger.exception("worker %s: probe failed", self.worker.pk)
        finally:
            self._stop_cluster()
            with contextlib.suppress(Exception):
                workers.stop(worker=self.worker)
            shutil.rmtree(self.run_root, ignore_errors=True)

    def check(self) -> None:
        """One probe: restart a dead or stalled cluster, then send the next heartbeat."""
        workers.recover_lost_workers()
        assert self.cluster is not None
        code = self.cluster.poll()
        if code is not None:
            self.restart(f"its cluster exited ({_describe_exit(code)})")
        else:
            self._judge_heartbeat()
        workers.send_heartbeat(worker=self.worker)

    def _judge_heartbeat(self) -> None:
        now = timezone.now()
        beat = workers.last_beat(worker=self.worker)
        started = beat is not None and beat >= self.started_at
        since = beat if started else self.started_at
        silent = (now - since).total_seconds()
        stall = settings.WORKER_STALL_SECONDS
        if silent <= (stall if started else max(stall, STARTUP_GRACE_SECONDS)):
            if started:
                self.backoff = 0.0
                if self.worker.state != WorkerState.RUNNING:
                    workers.set_state(worker=self.worker, state=WorkerState.RUNNING)
            return
        total = settings.Q_CLUSTER["workers"]
        busy = workers.busy_workers(self.run_dir)
        if busy >= total:  # long tasks, not a wedge: django-q2's timeout bounds them
            if self.worker.state != WorkerState.BUSY:
                workers.set_state(worker=self.worker, state=WorkerState.BUSY)
            return
        self.restart(
            f"no heartbeat for {silent:.0f} s with {busy} of {total} worker processes busy"
        )

    # --- the cluster ------------------------------------------------------------------

    def restart(self, reason: str) -> None:
        dead = self.cluster_name
        self._kill_cluster()
        if self.backoff and self.stopping.wait(self.backoff):
            return  # asked to stop while backing off
        self.backoff = min(max(1.0, self.backoff * 2), MAX_BACKOFF_SECONDS)
        self._start_cluster(reason=reason)
        released = workers.recover_from(cluster=dead)
        logger.warning("worker %s: %s leases of %s released", self.worker.pk, released, dead)

    def _start_cluster(self, *, reason: str = "") -> None:
        self.cluster_name = workers.begin_generation(worker=self.worker, reason=reason)
        self.run_dir = self.run_root / self.cluster_name
        self.run_dir.mkdir()
        env = {
            **os.environ,
            workers.CLUSTER_ENV: self.cluster_name,
            workers.RUN_DIR_ENV: str(self.run_dir),
        }
        self.started_at = timezone.now()
        # A process group of its own: the cluster's processes are killed together.
        self.cluster = subprocess.Popen([*self.manage, "qcluster"], env=env, process_group=0)

    def _kill_cluster(self) -> None:
        if self.cluster is None:
            return
        _signal_group(self.cluster.pid, signal.SIGKILL)
        self.cluster.wait()

    def _stop_cluster(self) -> None:
        """SIGTERM first (django-q2 finishes the tasks in hand), then what is left dies."""
        if self.cluster is None:
            return
        if self.cluster.poll() is None:
            self.cluster.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.cluster.wait(STOP_GRACE_SECONDS)
        self._kill_cluster()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has exited
        os.killpg(pgid, signum)


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def run_worker() -> None:
    Supervisor(manage=[sys.executable, str(settings.BASE_DIR / "manage.py")]).run()
