"""The sandbox status state machine.

Every status change is one of ``TRANSITIONS`` and happens as a compare-and-set on the row
(``UPDATE ... WHERE status = <from>``; see ``services/transitions.py``), so two workers or
two clicks never both act on one sandbox.

A *transitional* status (starting, pausing, ...) means "an operation was asked for and a
worker is carrying it out"; the operation's worker moves the sandbox on to a settled status.
"""

from __future__ import annotations

from django.db import models


class Status(models.TextChoices):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    HIBERNATED = "hibernated"
    RESUMING = "resuming"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"


S = Status

TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.PENDING: frozenset({S.STARTING, S.DELETING, S.FAILED}),
    # A restart that fails settles on what the provider shows (its instance is kept).
    S.STARTING: frozenset({S.RUNNING, S.FAILED, S.DELETING, S.STOPPED, S.PAUSED, S.HIBERNATED}),
    # The settled -> settled moves are the reconciler's drift corrections (someone paused,
    # stopped or broke the instance in the provider's own UI).
    S.RUNNING: frozenset(
        {S.PAUSING, S.STOPPING, S.DELETING, S.PAUSED, S.HIBERNATED, S.STOPPED, S.FAILED}
    ),
    # pausing ends paused (RAM kept) or hibernated (RAM on disk); back to running if the
    # provider refused.
    S.PAUSING: frozenset({S.PAUSED, S.HIBERNATED, S.RUNNING, S.FAILED, S.DELETING}),
    S.PAUSED: frozenset(
        {S.RESUMING, S.PAUSING, S.STOPPING, S.DELETING, S.RUNNING, S.HIBERNATED, S.STOPPED}
        | {S.FAILED}
    ),
    S.HIBERNATED: frozenset(
        {S.RESUMING, S.STOPPING, S.DELETING, S.RUNNING, S.PAUSED, S.STOPPED, S.FAILED}
    ),
    S.RESUMING: frozenset({S.RUNNING, S.PAUSED, S.HIBERNATED, S.FAILED, S.DELETING}),
    S.STOPPING: frozenset({S.STOPPED, S.RUNNING, S.FAILED, S.DELETING}),
    S.STOPPED: frozenset({S.STARTING, S.DELETING, S.RUNNING, S.PAUSED, S.HIBERNATED, S.FAILED}),
    S.DELETING: frozenset({S.DELETED, S.FAILED}),
    S.DELETED: frozenset(),
    S.FAILED: frozenset({S.STARTING, S.DELETING, S.RUNNING, S.STOPPED}),
}

TRANSITIONAL: frozenset[Status] = frozenset(
    {S.PENDING, S.STARTING, S.PAUSING, S.RESUMING, S.STOPPING, S.DELETING}
)
SETTLED: frozenset[Status] = frozenset(Status) - TRANSITIONAL
#: Statuses that hold resources against the team's quota.
LIVE: frozenset[Status] = frozenset(Status) - {S.DELETED, S.FAILED}
#: Settled and live: the sandbox has its instance and no operation is under way
#: (running, paused, hibernated or stopped).
SETTLED_LIVE: frozenset[Status] = SETTLED & LIVE
#: Parked: not running, but woken by a resume (wake-on-HTTP does it through the proxy).
PARKED: frozenset[Status] = frozenset({S.PAUSED, S.HIBERNATED})
#: On the way into or out of parked: a wake waits for these to end.
WAKING: frozenset[Status] = frozenset({S.PAUSING, S.RESUMING})

#: The statuses each action on a sandbox's instance needs; the lifecycle operations have
#: theirs in ``services.lifecycle.OPERATIONS``. The services enforce these, and the
#: dashboard reads the same sets to show a disabled button with the reason.
ACTION_STATUSES: dict[str, frozenset[Status]] = {
    "exec": frozenset({S.RUNNING}),
    "terminal": frozenset({S.RUNNING}),
    "services": SETTLED_LIVE,
    "wake_on": SETTLED_LIVE,
    "snapshot": frozenset({S.RUNNING, S.PAUSED, S.STOPPED}),
}


def can_transition(current: str, target: str) -> bool:
    return Status(target) in TRANSITIONS[Status(current)]


def is_transitional(status: str) -> bool:
    return Status(status) in TRANSITIONAL


def in_words(statuses: frozenset[Status]) -> str:
    """``running, paused or stopped``: the statuses in the order they are declared."""
    names = [str(status) for status in Status if status in statuses]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
