"""Handing slow provider work to django-q2, after the transaction that asked for it commits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from django.db import transaction
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.tasks import async_task

Pending = tuple[str, tuple[object, ...], str]
_batch: ContextVar[list[Pending] | None] = ContextVar("enqueue_batch", default=None)


def enqueue_on_commit(func: str, *args: object, name: str) -> None:
    """Run ``func(*args)`` in a worker once the current transaction has committed.

    Tasks take ids, re-read their rows and are idempotent, so a task that runs twice or
    after the row moved on does nothing harmful.
    """
    transaction.on_commit(lambda: _send(func, args, name))


def _send(func: str, args: tuple[object, ...], name: str) -> None:
    batch = _batch.get()
    if batch is not None:
        batch.append((func, args, name))
    elif Conf.SYNC:
        async_task(func, *args, task_name=name)
    else:
        # In a transaction of its own: django-q2's database broker closes the connection
        # before a task enqueued outside one (with DB_CONN_MAX_AGE=0), so the caller's
        # next query would reconnect (5 ms of a warm pool's hit on SQLite, see
        # docs/benchmarks.md).
        with transaction.atomic():
            async_task(func, *args, task_name=name)


@contextlib.contextmanager
def batched() -> Iterator[None]:
    """Collect the tasks enqueued inside, and enqueue them together at the end.

    The sweep asks for many operations in a row. django-q2's database broker closes and
    reopens the connection for every task enqueued outside a transaction; enqueueing the
    sweep's tasks in one transaction (after the rows they refer to were committed) saves
    that per task. The tasks are enqueued even when the block raises: their rows already
    wait for them.
    """
    batch: list[Pending] = []
    token = _batch.set(batch)
    try:
        yield
    finally:
        _batch.reset(token)
        _flush(batch)


def _flush(batch: list[Pending]) -> None:
    if Conf.SYNC:  # tasks run inline (tests): each on its own, as if enqueued alone
        for func, args, name in batch:
            async_task(func, *args, task_name=name)
        return
    if not batch:
        return
    with transaction.atomic():
        broker = get_broker()
        for func, args, name in batch:
            async_task(func, *args, task_name=name, broker=broker)
