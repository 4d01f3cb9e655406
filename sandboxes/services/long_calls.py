"""Slots for long calls, so one team's long calls cannot take the server from the others.

A *long call* is a request that waits on something outside the control plane: an exec,
``GET /api/v1/sandboxes/{id}?wait=N``, a request through the service proxy (and the wake
it may do first). Each holds a thread and a database connection for as long as it
waits. While it runs it holds one of its team's ``SANDBOX_LONG_CALLS_PER_TEAM`` slots and
one of the site's ``SANDBOX_LONG_CALLS_TOTAL``; when either is full the call is refused
at once with ``TooManyLongCalls`` (the API answers 429 with ``Retry-After``) instead of
queueing behind the others.

The slots live where the API's rate counters do (``sandboxes.services.throttling``), so
every web process on every machine counts the same ones. Each held slot carries a random
holder id and an expiry: the call's own bound plus a margin, so a process killed while
holding one frees it by itself, and a live call never outlives its slot.

* Redis (``REDIS_URL``, the ``throttle`` cache's server): one sorted set per team and one
  for the site, holder -> expiry; one Lua script drops the expired, checks both caps and
  adds to both atomically (one round trip), and a release is one more.
* The database (``LongCallSlot``): ``cap`` keys per scope (``longcall:team:<id>:<n>``,
  ``longcall:all:<n>``); a free key of a scope is chosen and taken with one conditional
  ``INSERT ... SELECT`` upsert (atomic on PostgreSQL and SQLite alike), and released with
  one ``DELETE`` of the holder's rows.

Times are the web processes' clocks (``time.time()``): keep them in step (NTP).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
from django.conf import settings
from django.db import connection

from sandboxes.models import LongCallSlot, Team
from sandboxes.services.errors import TooManyLongCalls

#: Added to a call's own bound for its slot's expiry: a call that ends at its bound still
#: releases its slot itself, and one in a killed process frees it this much later.
MARGIN_SECONDS = 30
#: ``Retry-After`` is when the first held call must end at the latest, but at most this:
#: most calls end well before their bound.
MAX_RETRY_AFTER = 10


@dataclass
class Slot:
    """A held team slot and site slot; ``release`` frees both (once; later calls do nothing)."""

    scopes: list[str]
    holder: str
    expires_at: float
    released: bool = field(default=False)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.scopes:
            _store().release(self.scopes, self.holder)

    def extend(self, *, seconds: float) -> None:
        """Keep holding for ``seconds`` more (plus the margin): a stream still flowing."""
        expires_at = time.time() + seconds + MARGIN_SECONDS
        if self.released or not self.scopes or expires_at - self.expires_at < seconds / 2:
            return  # renewed recently enough: one write per half period at most
        self.expires_at = expires_at
        _store().renew(self.scopes, self.holder, expires_at)


def _caps(team: Team) -> list[tuple[str, int, str]]:
    """(scope key, cap, scope name) of the caps in force; a cap of 0 is no cap."""
    caps = [
        (f"longcall:team:{team.pk}", settings.SANDBOX_LONG_CALLS_PER_TEAM, "team"),
        ("longcall:all", settings.SANDBOX_LONG_CALLS_TOTAL, "site"),
    ]
    return [cap for cap in caps if cap[1] > 0]


def acquire(*, team: Team, kind: str, seconds: float) -> Slot:
    """Hold a slot of ``team`` and one of the site for a call bounded by ``seconds``.

    ``kind`` (exec, wait, proxied request) only names the call in the refusal. Raises
    ``TooManyLongCalls`` when the team's or the site's slots are all held; then nothing
    is held.
    """
    holder = uuid.uuid4().hex
    now = time.time()
    expires_at = now + seconds + MARGIN_SECONDS
    caps = _caps(team)
    if caps:
        full = _store().acquire([(key, cap) for key, cap, _ in caps], holder, expires_at, now)
        if full is not None:
            index, soonest = full
            _, cap, scope = caps[index]
            wait = max(1, min(MAX_RETRY_AFTER, math.ceil(soonest - MARGIN_SECONDS - now)))
            raise TooManyLongCalls(kind=kind, scope=scope, limit=cap, retry_after=wait)
    return Slot(scopes=[key for key, _, _ in caps], holder=holder, expires_at=expires_at)


@contextlib.contextmanager
def held(*, team: Team, kind: str, seconds: float) -> Iterator[Slot]:
    """``acquire`` for the block; released when it ends, by an exception too."""
    slot = acquire(team=team, kind=kind, seconds=seconds)
    try:
        yield slot
    finally:
        slot.release()


def in_use(*, team: Team | None = None) -> int:
    """How many slots are held now: ``team``'s, or the site's."""
    if team is None:
        scope, cap = "longcall:all", settings.SANDBOX_LONG_CALLS_TOTAL
    else:
        scope, cap = f"longcall:team:{team.pk}", settings.SANDBOX_LONG_CALLS_PER_TEAM
    return _store().in_use(scope, cap, time.time()) if cap > 0 else 0


def _store() -> _DatabaseSlots | _RedisSlots:
    return _RedisSlots() if settings.SANDBOX_API_THROTTLE_STORE == "redis" else _DatabaseSlots()


#: What ``acquire`` answers when a scope is full: (its index, the soonest expiry in it).
Full = tuple[int, float] | None


class _DatabaseSlots:
    def acquire(
        self, caps: list[tuple[str, int]], holder: str, expires_at: float, now: float
    ) -> Full:
        for index, (scope, cap) in enumerate(caps):
            soonest = self._take_one(scope, cap, holder, expires_at, now)
            if soonest is not None:
                if index:
                    self.release([], holder)  # the slots taken before a full one
                return index, soonest
        return None

    def _take_one(self, scope: str, cap: int, holder: str, expires_at: float, now: float):
        """None when a key was taken, else the soonest expiry among the held ones.

        One statement when a key is free (the common case). It comes back empty when the
        scope is full or another process took the key it chose first: then the live keys
        are read, and a scope not full is tried again. Each such loss is a key another
        process took, so ``cap`` tries are enough unless keys are freed meanwhile; after
        them the scope counts as full, as when every key is held."""
        keys = [f"{scope}:{n}" for n in range(cap)]
        live: dict[str, float] = {}
        for _ in range(cap):
            if self._claim(keys, holder, expires_at, now):
                return None
            now = time.time()
            live = self._live(keys, now)
            if len(live) >= cap:
                break
        return min(live.values(), default=now)

    def _live(self, keys: list[str], now: float) -> dict[str, float]:
        rows = LongCallSlot.objects.filter(key__in=keys, expires_at__gt=now)
        return dict(rows.values_list("key", "expires_at"))

    def _claim(self, keys: list[str], holder: str, expires_at: float, now: float) -> bool:
        """Take one of ``keys`` not held now: insert it, or take it over once expired.

        One statement (SQLite 3.35+ and PostgreSQL alike), so of two processes racing for
        a key exactly one gets a row back: PostgreSQL re-checks the conflict's ``WHERE``
        on the row as the winner committed it, SQLite runs writers one at a time. The
        candidate is chosen at random among the free keys, so callers arriving together
        do not all race for the first one. (The ``WHERE`` before ``ON CONFLICT`` is what
        SQLite needs to parse an upsert of a ``SELECT``.)"""
        table = connection.ops.quote_name(LongCallSlot._meta.db_table)
        candidates = ", ".join(["(%s)"] * len(keys))
        sql = f"""
            WITH candidate ("key") AS (VALUES {candidates})
            INSERT INTO {table} ("key", "holder", "expires_at")
            SELECT candidate."key", %s, %s FROM candidate
            WHERE NOT EXISTS (
                SELECT 1 FROM {table} AS held
                WHERE held."key" = candidate."key" AND held."expires_at" > %s
            )
            ORDER BY random() LIMIT 1
            ON CONFLICT ("key") DO UPDATE SET
                "holder" = excluded."holder", "expires_at" = excluded."expires_at"
            WHERE {table}."expires_at" <= %s
            RETURNING "holder"
        """  # noqa: S608 - the table name comes from the model, the values are parameters
        with connection.cursor() as cursor:
            cursor.execute(sql, [*keys, holder, expires_at, now, now])
            row = cursor.fetchone()
        return row is not None and row[0] == holder

    def release(self, scopes: list[str], holder: str) -> None:
        """One ``DELETE`` of the holder's rows (one holder per call); a single statement
        needs no transaction around it (the ORM's delete would add one, and a query for
        related rows)."""
        table = connection.ops.quote_name(LongCallSlot._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f'DELETE FROM {table} WHERE "holder" = %s', [holder])  # noqa: S608

    def renew(self, scopes: list[str], holder: str, expires_at: float) -> None:
        LongCallSlot.objects.filter(holder=holder).update(expires_at=expires_at)

    def in_use(self, scope: str, cap: int, now: float) -> int:
        return len(self._live([f"{scope}:{n}" for n in range(cap)], now))


#: KEYS: one sorted set per cap (holder -> expiry). ARGV: now, expiry, holder, then the caps.
#: Drops the expired; answers {index, soonest expiry} of the first full set, else adds the
#: holder to every set and answers {-1}. A set expires with its last holder.
ACQUIRE = """
local now = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return {i - 1, first[2]}
  end
end
local ttl = math.ceil(tonumber(ARGV[2]) - now) + 1
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[2], ARGV[3])
  if redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
end
return {-1}
"""

#: KEYS: the holder's sets. ARGV: the new expiry, holder, seconds to keep the sets for.
#: (A script: EXPIRE's GT option needs Redis 7.)
RENEW = """
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', ARGV[1], ARGV[2])
  if redis.call('TTL', key) < tonumber(ARGV[3]) then redis.call('EXPIRE', key, ARGV[3]) end
end
"""


@functools.cache
def _redis(location: str) -> redis.Redis:
    return redis.Redis.from_url(location)


class _RedisSlots:
    """On the server of the ``throttle`` cache, under its key prefix."""

    def __init__(self) -> None:
        cache = settings.CACHES["throttle"]
        self.client = _redis(cache["LOCATION"])
        self.prefix = cache.get("KEY_PREFIX", "")

    def _key(self, scope: str) -> str:
        return f"{self.prefix}:{scope}" if self.prefix else scope

    def acquire(
        self, caps: list[tuple[str, int]], holder: str, expires_at: float, now: float
    ) -> Full:
        keys = [self._key(scope) for scope, _ in caps]
        answer = self.client.eval(
            ACQUIRE, len(keys), *keys, now, expires_at, holder, *(cap for _, cap in caps)
        )
        return None if int(answer[0]) < 0 else (int(answer[0]), float(answer[1]))

    def release(self, scopes: list[str], holder: str) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for scope in scopes:
                pipe.zrem(self._key(scope), holder)
            pipe.execute()

    def renew(self, scopes: list[str], holder: str, expires_at: float) -> None:
        keys = [self._key(scope) for scope in scopes]
        ttl = max(1, math.ceil(expires_at - time.time()) + 1)
        self.client.eval(RENEW, len(keys), *keys, expires_at, holder, ttl)

    def in_use(self, scope: str, cap: int, now: float) -> int:
        return self.client.zcount(self._key(scope), f"({now}", "+inf")
