"""One sweep of the background work: reconciliation, garbage collection, idle hibernation.

The sweep runs every ``SANDBOX_SWEEP_MINUTES`` (``sandboxes/schedules.py``). It lists each
provider once, reads the sandboxes it needs with a few indexed queries, and then *asks*
for at most ``SANDBOX_SWEEP_BATCH`` actions per kind: the provider work itself happens in
the operation tasks it enqueues. Its cost is therefore a constant number of queries plus
a small constant per action, whatever the number of sandboxes.

Order matters a little: stuck rows and drift are settled first, so TTL, idle and
cleanup decisions are taken on corrected rows. A phase that raises is logged and the
others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from sandboxes.services import gc, idle, images, orphans, pools, queue, reconcile, workspaces
from sandboxes.services.inventory import take_inventory

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    #: Actions asked for, per phase.
    actions: dict[str, int] = field(default_factory=dict)
    #: Providers whose list failed (their sandboxes were left alone this time).
    unavailable: dict[str, str] = field(default_factory=dict)
    #: Phases that raised (name -> error), already logged.
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.actions.values())


def run_sweep(
    *, now: datetime | None = None, limit: int | None = None, stuck_seconds: int | None = None
) -> SweepReport:
    """One pass of every phase. ``stuck_seconds`` overrides ``SANDBOX_STUCK_SECONDS``."""
    now = now or timezone.now()
    stuck = settings.SANDBOX_STUCK_SECONDS if stuck_seconds is None else stuck_seconds
    limit = limit or settings.SANDBOX_SWEEP_BATCH
    report = SweepReport()
    inventory = take_inventory()
    report.unavailable = dict(inventory.unavailable)
    rows: list[reconcile.LiveRow] = []

    def load_rows() -> int:
        rows.extend(reconcile.live_rows())
        return 0

    phases: list[tuple[str, Callable[[], int]]] = [
        (
            "stuck",
            lambda: reconcile.resolve_stuck(
                now=now, inventory=inventory, limit=limit, stuck_seconds=stuck
            ),
        ),
        (
            "snapshots",
            lambda: reconcile.resolve_stuck_snapshots(now=now, limit=limit, stuck_seconds=stuck),
        ),
        ("setups", lambda: workspaces.resolve_stuck_setups(now=now, limit=limit)),
        ("rows", load_rows),
        ("drift", lambda: reconcile.correct_drift(rows=rows, inventory=inventory, limit=limit)),
        ("ttl", lambda: gc.expire_ttls(now=now, limit=limit)),
        ("idle", lambda: idle.park_idle(now=now, inventory=inventory, limit=limit)),
        ("failed", lambda: gc.clean_failed(now=now, limit=limit)),
        ("parked", lambda: gc.delete_long_parked(now=now, limit=limit)),
        ("orphans", lambda: orphans.collect(rows=rows, inventory=inventory, now=now, limit=limit)),
        ("images", lambda: images.fail_abandoned(now=now, limit=limit)),
        ("pools", lambda: pools.reconcile_members(inventory=inventory, now=now, limit=limit)),
    ]
    #: Phases that judge the providers against the rows: never on a failed read of them.
    needs_rows = {"drift", "orphans", "pools"}
    with queue.batched():
        for name, phase in phases:
            if name in needs_rows and "rows" in report.errors:
                continue
            try:
                count = phase()
            except Exception as exc:  # one broken phase must not stop the others
                logger.exception("sweep phase %s failed", name)
                report.errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            if name != "rows":
                report.actions[name] = count
    if report.total or report.errors:
        logger.info("sweep: %s", report)
    return report


def run_snapshot_retention(*, now: datetime | None = None, limit: int | None = None) -> int:
    with queue.batched():
        return gc.enforce_snapshot_retention(limit=limit or settings.SANDBOX_SWEEP_BATCH, now=now)
