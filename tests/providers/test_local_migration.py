"""The data migration seeding version 1 of every local preset (the built-in base, the host's
/usr: labelled so since 0012)."""

from __future__ import annotations

import pytest

from providers.local.layers import BASE_REF
from providers.snapshot_ids import parse_snapshot_id
from sandboxes.models import ActiveSnapshot, Preset, Snapshot


@pytest.mark.django_db
def test_every_local_preset_has_an_active_shared_first_version():
    local_presets = [p for p in Preset.objects.all() if p.offered_on("local")]
    assert local_presets
    for preset in local_presets:
        snapshot = Snapshot.objects.get(provider="local", preset=preset, version=1)
        assert snapshot.snapshot_id == f"local_{preset.id}_v1"
        assert parse_snapshot_id(snapshot.snapshot_id).provider == "local"
        assert (snapshot.team, snapshot.status) == (None, "ready")
        assert snapshot.label == "host /usr"  # named as what it is (0012)
        assert snapshot.provider_ref == BASE_REF
        active = ActiveSnapshot.objects.get(team=None, provider="local", preset=preset)
        assert active.snapshot == snapshot
    others = Preset.objects.exclude(id__in=[p.id for p in local_presets])
    assert not Snapshot.objects.filter(provider="local", preset__in=others).exists()
