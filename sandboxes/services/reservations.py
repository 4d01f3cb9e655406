"""Reservations in the database: the ``ReservationStore`` providers claim shared keys with.

Atomic through ``Reservation``'s unique (namespace, key) constraint: two workers that
try to claim the same key at once cannot both insert it, whatever the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from django.db import IntegrityError, OperationalError, transaction

from sandboxes.models import Reservation

T = TypeVar("T")

#: Candidates tried per call before giving up (the caller skips keys already held).
MAX_TRIES = 500
#: SQLite answers "database is locked" under concurrent writers: wait and try again.
BUSY_RETRIES = 50


def _when_free(call: Callable[[], T]) -> T:
    """Run ``call``, waiting out SQLite's "database (table) is locked" answers."""
    for attempt in range(BUSY_RETRIES):
        try:
            return call()
        except OperationalError as exc:
            if "locked" not in str(exc).lower() or attempt == BUSY_RETRIES - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


class DbReservationStore:
    def reserve(self, namespace: str, candidates: Iterable[str], owner: str) -> str | None:
        for tries, key in enumerate(candidates):
            if tries >= MAX_TRIES:
                return None
            if _when_free(lambda key=key: self._insert(namespace, key, owner[:200])):
                return key
        return None

    @staticmethod
    def _insert(namespace: str, key: str, owner: str) -> bool:
        try:
            with transaction.atomic():
                Reservation.objects.create(namespace=namespace, key=key, owner=owner)
        except IntegrityError:
            return False
        return True

    def release(self, namespace: str, key: str) -> None:
        _when_free(lambda: Reservation.objects.filter(namespace=namespace, key=key).delete())

    def keys(self, namespace: str) -> set[str]:
        rows = (
            Reservation.objects.filter(namespace=namespace).order_by().values_list("key", flat=True)
        )
        return _when_free(lambda: set(rows))
