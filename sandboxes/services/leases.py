"""Leases on rows: a worker takes one before calling a provider, so two workers never act
on the same sandbox or snapshot at once, and a dead worker's lease simply expires."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db import models
from django.db.models import Q
from django.utils import timezone

from sandboxes.services import workers


def claim(model: type[models.Model], pk: object, *, status: str, seconds: int) -> str | None:
    """Take the lease on the row if it is in ``status`` and nobody holds a live lease."""
    token = workers.lease_prefix() + uuid.uuid4().hex
    now = timezone.now()
    free = Q(lease_token="") | Q(lease_expires_at__lt=now)
    won = model.objects.filter(free, pk=pk, status=status).update(
        lease_token=token, lease_expires_at=now + timedelta(seconds=seconds)
    )
    return token if won else None
