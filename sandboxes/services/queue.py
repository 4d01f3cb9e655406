"""Handing slow provider work to django-q2, after the transaction that asked for it commits."""

from __future__ import annotations

from django.db import transaction
from django_q.tasks import async_task


def enqueue_on_commit(func: str, *args: object, name: str) -> None:
    """Run ``func(*args)`` in a worker once the current transaction has committed.

    Tasks take ids, re-read their rows and are idempotent, so a task that runs twice or
    after the row moved on does nothing harmful.
    """
    transaction.on_commit(lambda: async_task(func, *args, task_name=name))
