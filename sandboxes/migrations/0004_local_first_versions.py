"""Seed version 1 of every preset offered on the local provider: its built-in base layer.

The local provider builds that base (``provider_ref="base"``) on first use, so the first
sandbox needs nothing prepared by hand. Shared (no team) and active for every team.
"""

from django.db import migrations

PROVIDER = "local"
BASE_REF = "base"  # providers.local.layers.BASE_REF, copied: migrations stay frozen in time


def seed(apps, schema_editor):
    Preset = apps.get_model("sandboxes", "Preset")
    Snapshot = apps.get_model("sandboxes", "Snapshot")
    ActiveSnapshot = apps.get_model("sandboxes", "ActiveSnapshot")
    for preset in Preset.objects.all():
        if PROVIDER not in (preset.providers or []):
            continue
        snapshot, _ = Snapshot.objects.get_or_create(
            provider=PROVIDER,
            preset=preset,
            version=1,
            defaults={
                "snapshot_id": f"{PROVIDER}_{preset.id}_v1",
                "team": None,
                "provider_ref": BASE_REF,
                "status": "ready",
                "label": "base",
            },
        )
        if not ActiveSnapshot.objects.filter(team=None, provider=PROVIDER, preset=preset).exists():
            ActiveSnapshot.objects.create(
                team=None, provider=PROVIDER, preset=preset, snapshot=snapshot
            )


def unseed(apps, schema_editor):
    Snapshot = apps.get_model("sandboxes", "Snapshot")
    ActiveSnapshot = apps.get_model("sandboxes", "ActiveSnapshot")
    seeded = Snapshot.objects.filter(
        provider=PROVIDER, version=1, team=None, provider_ref=BASE_REF, label="base"
    )
    ActiveSnapshot.objects.filter(team=None, provider=PROVIDER, snapshot__in=seeded).delete()
    # Versions that sandboxes, events or later versions refer to stay (PROTECT would fail).
    seeded.filter(
        children__isnull=True,
        activations__isnull=True,
        sandboxes__isnull=True,
        events__isnull=True,
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("sandboxes", "0003_reservation")]
    operations = [migrations.RunPython(seed, unseed)]
