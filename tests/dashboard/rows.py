"""Many sandboxes at once, for query-count tests and the benchmark.

Made with one bulk insert instead of the services: what is measured is reading and
rendering a big team, and provisioning a thousand instances would only slow that down.
"""

from __future__ import annotations

from django.utils import timezone

from sandboxes.models import Preset, Sandbox, Snapshot
from sandboxes.states import Status

STATUSES = [Status.RUNNING, Status.PAUSED, Status.STOPPED, Status.STARTING, Status.FAILED]


def add_sandboxes(team, user, count: int, *, provider: str = "memory") -> list[Sandbox]:
    preset = Preset.objects.get(pk="1vcpu_1gb_8gb")
    snapshot = Snapshot.objects.filter(provider=provider, preset=preset).first()
    now = timezone.now()
    rows = [
        Sandbox(
            team=team,
            created_by=user,
            name=f"bulk-{i}",
            provider=provider,
            preset=preset,
            snapshot=snapshot,
            vcpus=preset.vcpus,
            memory_mb=preset.memory_mb,
            disk_gb=preset.disk_gb,
            status=STATUSES[i % len(STATUSES)],
            provider_ref=f"bulk-{i}",
            created_at=now,
            status_changed_at=now,
        )
        for i in range(count)
    ]
    return Sandbox.objects.bulk_create(rows, batch_size=500)
