"""Counting API requests per team and window, for the API's rate limits.

Two stores, chosen by settings: Redis (``REDIS_URL``; the ``throttle`` cache, atomic
INCR) or the database (``ThrottleCounter``: one upsert per request, atomic on
PostgreSQL and SQLite alike). Both are shared by every web worker.
"""

from __future__ import annotations

from django.conf import settings
from django.core.cache import caches
from django.db import connection, transaction

from sandboxes.models import ThrottleCounter

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """``"600/min"`` -> (600, 60); None or "" -> None (no limit).

    DRF's ``SimpleRateThrottle.parse_rate`` reads the same format, but only as a method of
    a throttle (which cannot be made without a scope), and it is stricter: ``600/Min`` or
    an empty rate would stop working. This one also serves a service with no DRF in it
    (``auth_failures``), and a bad value's error names the value.
    """
    if not rate:
        return None
    count, _, period = rate.partition("/")
    try:
        return int(count), PERIODS[period.strip()[:1].lower()]
    except (ValueError, KeyError):
        raise ValueError(f"{rate!r} is not a rate like 600/min") from None


def current_count(key: str, *, window: int) -> int:
    """``key``'s count in ``window`` without adding to it (0 in any other window)."""
    if settings.SANDBOX_API_THROTTLE_STORE == "redis":
        return caches["throttle"].get(f"{key}:{window}") or 0
    row = ThrottleCounter.objects.filter(key=key).values_list("window", "count").first()
    return row[1] if row and row[0] == window else 0


def forget(key: str, *, window: int) -> None:
    """Drop ``key``'s count (in ``window``, for Redis, whose keys are per window)."""
    if settings.SANDBOX_API_THROTTLE_STORE == "redis":
        caches["throttle"].delete(f"{key}:{window}")
    else:
        ThrottleCounter.objects.filter(key=key).delete()


def count_request(key: str, *, window: int, period: int) -> int:
    """Add one request to ``key``'s count in ``window`` (of ``period`` s); return the count."""
    if settings.SANDBOX_API_THROTTLE_STORE == "redis":
        return _count_in_redis(f"{key}:{window}", timeout=period + 1)
    return _count_in_database(key, window)


def _count_in_redis(key: str, *, timeout: int) -> int:
    cache = caches["throttle"]
    try:
        return cache.incr(key)  # INCR keeps the key's expiry
    except ValueError:  # the window's first request
        if cache.add(key, 1, timeout=timeout):
            return 1
        return cache.incr(key)


def _count_in_database(key: str, window: int) -> int:
    """One statement: insert the row, or count on in its window, or restart a new window."""
    table = connection.ops.quote_name(ThrottleCounter._meta.db_table)
    sql = f"""
        INSERT INTO {table} ("key", "window", "count") VALUES (%s, %s, 1)
        ON CONFLICT ("key") DO UPDATE SET
            "count" = CASE WHEN {table}."window" >= excluded."window"
                           THEN {table}."count" + 1 ELSE 1 END,
            "window" = CASE WHEN {table}."window" > excluded."window"
                            THEN {table}."window" ELSE excluded."window" END
        RETURNING "count"
    """  # noqa: S608 - the table name comes from the model, the values are parameters
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql" and not connection.in_atomic_block:
            # A counter lost in a crash costs nothing, but waiting for the WAL to reach
            # the disk on every API request would cost more than the rest of the request:
            # the upsert commits asynchronously.
            return _upsert_without_waiting_for_the_disk(cursor, sql, [key, window])
        cursor.execute(sql, [key, window])
        return cursor.fetchone()[0]


def _upsert_without_waiting_for_the_disk(cursor, sql: str, params: list) -> int:
    import psycopg

    if isinstance(cursor.cursor, psycopg.ClientCursor):
        # Django's default (client-side binding) sends both statements in one round trip;
        # together they are one implicit transaction, which SET LOCAL applies to.
        cursor.execute("SET LOCAL synchronous_commit TO OFF;" + sql, params)
        cursor.nextset()
        return cursor.fetchone()[0]
    with transaction.atomic():  # server-side binding: one statement per round trip
        cursor.execute("SET LOCAL synchronous_commit TO OFF")
        cursor.execute(sql, params)
        return cursor.fetchone()[0]
