"""Waiting for PVE tasks by UPID.

A UPID looks like ``UPID:pve1:0003A1B2:0B4C5D6E:6650A1B2:vzclone:9000:root@pam!sbx:``
(node, pid, pstart, start time, type, id, user). ``GET /nodes/{node}/tasks/{upid}/status``
says ``running`` or ``stopped``; a stopped task succeeded when its ``exitstatus`` is
``OK`` (or ``WARNINGS: n``), anything else is the error.

Polling is adaptive so the control plane's overhead over a task's own time stays small
without hammering the API: the first poll comes after 50 ms (most tasks on a fast
cluster are done), later ones back off by 1.5x up to 250 ms for the first 10 s and up to
2 s after that. The waiter also remembers how long each task type took before (a moving
average of when it ended, between the last poll that saw it running and the first that
saw it stopped) and sleeps straight to 60 ms before that, then polls every 20 ms and
growing; so a 2 s clone costs three or four polls and is seen done about 20 ms after it
really ended.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from providers.errors import OperationFailed, ProviderError, Timeout, Unavailable
from providers.pve.client import PveClient

FIRST_POLL = 0.05
#: After sleeping to just before a task's expected end, poll this often (growing 1.5x).
NEAR_POLL = 0.02
#: How far before the expected end the first poll of a known task type comes.
LEAD = 0.06
SHORT_CAP = 0.25
LONG_CAP = 2.0
SHORT_PHASE = 10.0
POLL_FAILURES = 3


@dataclass(frozen=True)
class Upid:
    node: str
    type: str
    id: str
    raw: str

    @classmethod
    def parse(cls, value: str) -> Upid:
        parts = value.split(":")
        if len(parts) < 8 or parts[0] != "UPID":
            raise OperationFailed(f"PVE answered with something that is not a task id: {value!r}")
        return cls(node=parts[1], type=parts[5], id=parts[6], raw=value)


class TaskWaiter:
    def __init__(self, client: PveClient) -> None:
        self.client = client
        self._expected: dict[str, float] = {}
        self._lock = threading.Lock()

    def expected(self, task_type: str) -> float | None:
        with self._lock:
            return self._expected.get(task_type)

    def _learn(self, task_type: str, seconds: float) -> None:
        with self._lock:
            old = self._expected.get(task_type)
            self._expected[task_type] = seconds if old is None else 0.7 * old + 0.3 * seconds

    def wait(self, upid: str, *, what: str, timeout: float) -> None:
        """Return when the task succeeded; raise OperationFailed with PVE's reason if not."""
        task = Upid.parse(upid)
        started = time.monotonic()
        expected = self.expected(task.type)
        step = FIRST_POLL
        delay = FIRST_POLL
        if expected is not None and expected - LEAD > FIRST_POLL:
            delay, step = expected - LEAD, NEAR_POLL / 1.5
        failures = 0
        last_running: float | None = None
        while True:
            elapsed = time.monotonic() - started
            if elapsed + delay > timeout:
                delay = max(0.0, timeout - elapsed)
            time.sleep(delay)
            try:
                status = self.client.get(PveClient.task_path(task.node, task.raw))
                failures = 0
            except (Unavailable, Timeout) as exc:
                failures += 1
                if failures >= POLL_FAILURES:
                    raise Unavailable(
                        f"{what}: lost track of PVE task {task.raw} ({exc.message})"
                    ) from None
                status = {"status": "running"}
            except ProviderError as exc:
                raise type(exc)(f"{what}: cannot read PVE task {task.raw}: {exc.message}") from None
            if status.get("status") == "stopped":
                exit_status = str(status.get("exitstatus", ""))
                if exit_status == "OK" or exit_status.startswith("WARNINGS"):
                    # It ended between the last poll that saw it running and this one.
                    ended = time.monotonic() - started
                    if last_running is not None:
                        ended = (last_running + ended) / 2
                    self._learn(task.type, ended)
                    return
                raise OperationFailed(f"{what} failed: {exit_status or 'unknown error'}")
            elapsed = time.monotonic() - started
            last_running = elapsed
            if elapsed >= timeout:
                raise Timeout(f"{what} did not finish within {timeout:g} s (PVE task {task.raw})")
            cap = SHORT_CAP if elapsed < SHORT_PHASE else LONG_CAP
            step = min(step * 1.5, cap)
            delay = step
