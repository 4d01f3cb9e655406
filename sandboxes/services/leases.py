"""Leases on rows: a worker takes one before calling a provider, so two workers never act
on the same sandbox or snapshot at once, and a dead worker's lease simply expires."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.db import models
from django.db.models import Q
from django.utils import timezone

from sandboxes.services import workers


def new_lease(*, seconds: int) -> tuple[str, datetime]:
    """A fresh lease token and its expiry: for ``claim``, and for a row inserted already
    leased by its creator (a warm pool's hit starts it at once, nobody may take it first)."""
    return workers.lease_prefix() + uuid.uuid4().hex, timezone.now() + timedelta(seconds=seconds)


def claim(model: type[models.Model], pk: object, *, status: str, seconds: int) -> str | None:
    """Take the lease on the row if it is in ``status`` and nobody holds a live lease."""
    token, expires_at = new_lease(seconds=seconds)
    free = Q(lease_token="") | Q(lease_expires_at__lt=timezone.now())
    won = model.objects.filter(free, pk=pk, status=status).update(
        lease_token=token, lease_expires_at=expires_at
    )
    return token if won else None
