"""Idle hibernation: park running sandboxes nobody has used for their idle timeout.

Activity is what the control plane saw itself (``Sandbox.last_activity_at``: API calls,
exec, traffic through the service proxy) or what the provider observed
(``Instance.last_activity`` from the sweep's single ``list()``: traffic that reached an
exposed service directly), whichever is later; and, where the provider reports metrics,
a CPU sample at or above ``SANDBOX_IDLE_CPU_FRACTION`` of a vCPU (a build running with
nobody watching is not idle). Metrics are read only for sandboxes that look idle
otherwise. Parking means pause where the provider can, else hibernate, else stop; the
audit event says which and why.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import DateTimeField, DurationField, ExpressionWrapper, F, Func, Q, Value

from providers.base import Instance
from providers.errors import ProviderError
from sandboxes.models import Sandbox
from sandboxes.services import scheduled
from sandboxes.services.backends import capabilities
from sandboxes.services.errors import ServiceError
from sandboxes.services.inventory import Inventory
from sandboxes.states import Status

#: Look at this many candidates per action allowed: some turn out busy on the provider.
CANDIDATES_PER_ACTION = 4


class Seconds(Func):
    """An integer column of seconds as a duration, in SQL (SQLite cannot multiply one)."""

    output_field = DurationField()

    def as_sql(self, compiler, connection, **extra):
        return super().as_sql(
            compiler, connection, template="(%(expressions)s * INTERVAL '1 second')", **extra
        )

    def as_sqlite(self, compiler, connection, **extra):
        # SQLite stores durations as whole microseconds.
        return super().as_sql(compiler, connection, template="(%(expressions)s * 1000000)", **extra)


def idle_candidates(*, now: datetime, limit: int):
    """Running sandboxes whose own activity record is older than their idle timeout."""
    idle_since = ExpressionWrapper(
        Value(now) - Seconds(F("idle_timeout_seconds")), output_field=DateTimeField()
    )
    return (
        Sandbox.objects.filter(status=Status.RUNNING, idle_timeout_seconds__isnull=False)
        .alias(idle_since=idle_since)
        .filter(last_activity_at__lt=F("idle_since"))
        .select_related("team")
        .order_by("last_activity_at")[:limit]
    )


def _busy_at(instance: Instance, provider: str, *, since: datetime) -> datetime | None:
    """The latest CPU sample after ``since`` showing work, if the provider reports any."""
    try:
        if not capabilities(provider).supports_metrics:
            return None
        samples = instance.metrics()
    except (ProviderError, ServiceError):
        return None  # no evidence either way: the other signals decide
    threshold = settings.SANDBOX_IDLE_CPU_FRACTION
    busy = [
        sample.time
        for sample in samples
        if sample.time > since and (sample.cpu_fraction or 0) >= threshold
    ]
    return max(busy) if busy else None


def park_idle(*, now: datetime, inventory: Inventory, limit: int) -> int:
    """Pause (or hibernate, or stop) idle sandboxes; return how many were asked."""
    acted = 0
    for sandbox in idle_candidates(now=now, limit=limit * CANDIDATES_PER_ACTION):
        if acted >= limit:
            break
        listed = inventory.get(sandbox.provider)
        if listed is None:
            continue  # the provider could not be listed: its activity is unknown
        instance = listed.find(ref=sandbox.provider_ref, sandbox_id=sandbox.pk)
        if instance is None or instance.status != "running":
            continue  # drift: the reconciler corrects the row first
        deadline = timedelta(seconds=sandbox.idle_timeout_seconds)
        seen = instance.last_activity
        if seen is not None and seen > sandbox.last_activity_at:
            # The provider saw traffic we did not: remember it, so the row stops being a
            # candidate while that traffic keeps coming.
            Sandbox.objects.filter(pk=sandbox.pk, last_activity_at__lt=seen).update(
                last_activity_at=seen
            )
            if seen > now - deadline:
                continue
        last = max(sandbox.last_activity_at, seen or sandbox.last_activity_at)
        busy = _busy_at(instance, sandbox.provider, since=now - deadline)
        if busy is not None:
            Sandbox.objects.filter(pk=sandbox.pk, last_activity_at__lt=busy).update(
                last_activity_at=busy
            )
            continue
        try:
            operation, why = scheduled.park_operation(sandbox.provider)
        except ServiceError:
            continue
        data = {
            "idle_seconds": int((now - last).total_seconds()),
            "idle_timeout_seconds": sandbox.idle_timeout_seconds,
            "last_activity_at": last.isoformat(),
            "parked_by": operation,
        }
        if why:
            data["instead"] = why
        acted += scheduled.request(
            sandbox,
            operation,
            reason="idle",
            # Nobody used it since we looked (touch_activity moves last_activity_at on).
            only_if=Q(last_activity_at__lte=last),
            data=data,
        )
    return acted
