"""Every django-q2 schedule of the project, declared in one place.

``sync_schedules()`` (``manage.py sync_schedules``, also run after every ``migrate`` and by
``manage.py serve``) makes the ``django_q`` Schedule table match this list by name:
missing schedules are created, changed ones updated, and schedules carrying our prefix
that are no longer declared are removed. Running it twice, or from several machines,
changes nothing the second time. Schedules without our prefix (an operator's own) are
never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

PREFIX = "sandboxes."


@dataclass(frozen=True)
class Declared:
    name: str
    func: str
    #: Minutes between runs, read from settings when the schedules are synced.
    minutes: Callable[[], int]


SCHEDULES: tuple[Declared, ...] = (
    Declared(
        name=PREFIX + "sweep",
        func="sandboxes.tasks.run_sweep",
        minutes=lambda: settings.SANDBOX_SWEEP_MINUTES,
    ),
    Declared(
        name=PREFIX + "snapshot-retention",
        func="sandboxes.tasks.run_snapshot_retention",
        minutes=lambda: settings.SANDBOX_RETENTION_MINUTES,
    ),
    Declared(
        name=PREFIX + "pools",
        func="sandboxes.tasks.maintain_pools",
        minutes=lambda: settings.SANDBOX_POOL_MINUTES,
    ),
)


def sync_schedules(
    declared: tuple[Declared, ...] = SCHEDULES, *, using: str = "default"
) -> list[str]:
    """Install the declared schedules; return what changed, as lines for a person."""
    from django_q.models import Schedule

    changes: list[str] = []
    wanted = {item.name: item for item in declared}
    with transaction.atomic(using=using):
        existing: dict[str, Schedule] = {}
        for schedule in (
            Schedule.objects.using(using).filter(name__startswith=PREFIX).order_by("pk")
        ):
            if schedule.name not in wanted:
                schedule.delete(using=using)
                changes.append(f"removed {schedule.name}")
            elif schedule.name in existing:  # a duplicate from a concurrent first sync
                schedule.delete(using=using)
                changes.append(f"removed duplicate {schedule.name}")
            else:
                existing[schedule.name] = schedule
        for name, item in wanted.items():
            values = {
                "func": item.func,
                "schedule_type": Schedule.MINUTES,
                "minutes": item.minutes(),
                "repeats": -1,
                "args": None,
                "kwargs": None,
                "hook": None,
                "cluster": None,
            }
            schedule = existing.get(name)
            if schedule is None:
                Schedule.objects.using(using).create(name=name, **values)
                changes.append(f"created {name} (every {values['minutes']} min)")
                continue
            stale = {k: v for k, v in values.items() if getattr(schedule, k) != v}
            if stale:
                Schedule.objects.using(using).filter(pk=schedule.pk).update(**stale)
                changes.append(f"updated {name} ({', '.join(sorted(stale))})")
    return changes
