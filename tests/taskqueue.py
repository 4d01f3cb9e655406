"""Running queued django-q2 tasks from a test, the way a ``qcluster`` would.

The test settings run tasks synchronously on commit. Tests that need to see a sandbox
*between* the request and the work (a ``starting`` badge that later turns ``running``)
switch that off with ``queued_tasks`` and run what was queued when they choose:
``drain()`` once, or ``QueueWorker`` in a thread beside a live server. Tasks go through
django-q2's own broker and worker code; only the process model differs (a thread shares
the in-memory provider's state with the web server, which a forked cluster would not).
"""

from __future__ import annotations

import threading

from django.db import close_old_connections, connection
from django_q.brokers import get_broker
from django_q.tasks import _sync


def drain() -> int:
    """Run every queued task (and the tasks they queue) now; return how many ran."""
    broker = get_broker()
    ran = 0
    while True:
        batch = broker.dequeue()
        if not batch:
            return ran
        for ack_id, payload in batch:
            _sync(payload)  # django-q2's worker and monitor, in this thread
            broker.acknowledge(ack_id)
            ran += 1


class QueueWorker(threading.Thread):
    """A worker thread that drains the queue while ``running`` is set.

    ``hold()`` keeps queued work waiting (to look at a transitional status), ``release()``
    lets it go on.
    """

    def __init__(self, poll_seconds: float = 0.05) -> None:
        super().__init__(name="test-queue-worker", daemon=True)
        self.poll_seconds = poll_seconds
        self.running = threading.Event()
        self.running.set()
        self._halt = threading.Event()
        self.errors: list[BaseException] = []

    def hold(self) -> None:
        self.running.clear()

    def release(self) -> None:
        self.running.set()

    def run(self) -> None:
        try:
            while not self._halt.wait(self.poll_seconds):
                if self.running.is_set():
                    close_old_connections()
                    drain()
        except BaseException as exc:  # reported by the fixture that owns the worker
            self.errors.append(exc)
        finally:
            connection.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
