"""Slots for long calls, so one team's long calls cannot take the server from the others.

A *long call* is a request that waits on something outside the control plane: an exec,
``GET /api/v1/sandboxes/{id}?wait=N``, a request through the service proxy (and the wake
it may do first). Each holds a thread and a database connection for as long as it
waits. While it runs it holds one of its team's ``SANDBOX_LONG_CALLS_PER_TEAM`` slots and
one of the site's ``SANDBOX_LONG_CALLS_TOTAL``; when either is full the call is refused
at once with ``TooManyLongCalls`` (the API answers 429 with ``Retry-After``) instead of
queueing behind the others.

The slots live where the API's rate counters do (``sandboxes.services.throttling``), so
every web process on every machine counts the same ones: in Redis with ``REDIS_URL``
(``SET NX`` with an expiry, through the ``throttle`` cache), else in the database
(``LongCallSlot``: one conditional upsert, atomic on PostgreSQL and SQLite). A slot is a
key (``longcall:team:<id>:<n>``, ``longcall:all:<n>``) held by a random holder id until
an expiry: the call's own bound plus a margin, so a process killed while holding one
frees it by itself, and a live call never outlives its slot.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import caches
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

    keys: list[str]
    holder: str
    expires_at: float
    released: bool = field(default=False)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        for key in self.keys:
            _store().release(key, self.holder)

    def extend(self, *, seconds: float) -> None:
        """Keep holding for ``seconds`` more (plus the margin): a stream still flowing."""
        expires_at = time.time() + seconds + MARGIN_SECONDS
        if self.released or expires_at - self.expires_at < seconds / 2:
            return  # renewed recently enough: one write per half period at most
        self.expires_at = expires_at
        for key in self.keys:
            _store().renew(key, self.holder, expires_at)


def acquire(*, team: Team, kind: str, seconds: float) -> Slot:
    """Hold a slot of ``team`` and one of the site for a call bounded by ``seconds``.

    ``kind`` (exec, wait, proxy) only names the call in the refusal. Raises
    ``TooManyLongCalls`` when the team's or the site's slots are all held. A cap of 0
    means no cap: no slot is taken for it.
    """
    holder = uuid.uuid4().hex
    expires_at = time.time() + seconds + MARGIN_SECONDS
    slot = Slot(keys=[], holder=holder, expires_at=expires_at)
    caps = (
        (f"longcall:team:{team.pk}", settings.SANDBOX_LONG_CALLS_PER_TEAM, "team"),
        ("longcall:all", settings.SANDBOX_LONG_CALLS_TOTAL, "site"),
    )
    for prefix, cap, scope in caps:
        if cap <= 0:
            continue
        key, retry_after = _take_one(prefix, cap, holder, expires_at)
        if key is None:
            slot.release()  # the team slot taken before a full site is given back
            raise TooManyLongCalls(kind=kind, scope=scope, limit=cap, retry_after=retry_after)
        slot.keys.append(key)
    return slot


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
        prefix, cap = "longcall:all", settings.SANDBOX_LONG_CALLS_TOTAL
    else:
        prefix, cap = f"longcall:team:{team.pk}", settings.SANDBOX_LONG_CALLS_PER_TEAM
    keys = [f"{prefix}:{n}" for n in range(max(cap, 0))]
    return len(_store().live(keys, time.time())) if keys else 0


def _take_one(prefix: str, cap: int, holder: str, expires_at: float) -> tuple[str | None, int]:
    """(the key taken, 0), or (None, seconds to suggest waiting) when all are held."""
    keys = [f"{prefix}:{n}" for n in range(cap)]
    store = _store()
    now = time.time()
    live = store.live(keys, now)
    free = [key for key in keys if key not in live]
    # Another process may take a free key first: then the next one is tried. A random
    # order keeps callers arriving together from all racing for the same key.
    random.shuffle(free)
    for key in free:
        if store.claim(key, holder, expires_at, now):
            return key, 0
    live = store.live(keys, time.time()) or live
    soonest = min(live.values(), default=now) - MARGIN_SECONDS - now
    return None, max(1, min(MAX_RETRY_AFTER, math.ceil(soonest)))


def _store() -> _DatabaseSlots | _RedisSlots:
    return _RedisSlots() if settings.SANDBOX_API_THROTTLE_STORE == "redis" else _DatabaseSlots()


class _DatabaseSlots:
    def live(self, keys: list[str], now: float) -> dict[str, float]:
        rows = LongCallSlot.objects.filter(key__in=keys, expires_at__gt=now)
        return dict(rows.values_list("key", "expires_at"))

    def claim(self, key: str, holder: str, expires_at: float, now: float) -> bool:
        """Insert the key, or take it over once expired: one statement, so of two processes
        racing for it exactly one gets a row back."""
        table = connection.ops.quote_name(LongCallSlot._meta.db_table)
        sql = f"""
            INSERT INTO {table} ("key", "holder", "expires_at") VALUES (%s, %s, %s)
            ON CONFLICT ("key") DO UPDATE SET
                "holder" = excluded."holder", "expires_at" = excluded."expires_at"
            WHERE {table}."expires_at" <= %s
            RETURNING "holder"
        """  # noqa: S608 - the table name comes from the model, the values are parameters
        with connection.cursor() as cursor:
            cursor.execute(sql, [key, holder, expires_at, now])
            row = cursor.fetchone()
        return row is not None and row[0] == holder

    def release(self, key: str, holder: str) -> None:
        LongCallSlot.objects.filter(key=key, holder=holder).delete()

    def renew(self, key: str, holder: str, expires_at: float) -> None:
        LongCallSlot.objects.filter(key=key, holder=holder).update(expires_at=expires_at)


class _RedisSlots:
    """Values are ``"<holder> <expires_at>"``; Redis drops a key at its expiry by itself."""

    def __init__(self) -> None:
        self.cache = caches["throttle"]

    def live(self, keys: list[str], now: float) -> dict[str, float]:
        found = self.cache.get_many(keys)
        return {key: float(value.split()[1]) for key, value in found.items()}

    def claim(self, key: str, holder: str, expires_at: float, now: float) -> bool:
        timeout = max(1, math.ceil(expires_at - now))
        return self.cache.add(key, f"{holder} {expires_at}", timeout=timeout)  # SET NX EX

    def release(self, key: str, holder: str) -> None:
        # Read, then delete: not one atomic step, but the key is ours until its expiry,
        # which lies past the call's own bound, so nobody else can hold it in between.
        value = self.cache.get(key)
        if value is not None and value.split()[0] == holder:
            self.cache.delete(key)

    def renew(self, key: str, holder: str, expires_at: float) -> None:
        value = self.cache.get(key)
        if value is not None and value.split()[0] == holder:
            timeout = max(1, math.ceil(expires_at - time.time()))
            self.cache.set(key, f"{holder} {expires_at}", timeout=timeout)
