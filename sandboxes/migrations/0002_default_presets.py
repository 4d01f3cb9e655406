"""Seed the default presets (machine sizes). Operators edit or add more in the admin."""

from django.db import migrations

ALL_PROVIDERS = ["local", "docker", "pve-lxc", "pve-vm", "morph"]

PRESETS = [
    # id, label, vcpus, memory_mb, disk_gb
    ("1vcpu_1gb_8gb", "Small", 1, 1024, 8),
    ("2vcpu_2gb_8gb", "Medium", 2, 2048, 8),
    ("2vcpu_4gb_16gb", "Standard", 2, 4096, 16),
    ("4vcpu_6gb_32gb", "Large", 4, 6144, 32),
    ("4vcpu_16gb_48gb", "Large, more memory", 4, 16384, 48),
    ("8vcpu_32gb_64gb", "Extra large", 8, 32768, 64),
]


def seed(apps, schema_editor):
    Preset = apps.get_model("sandboxes", "Preset")
    for preset_id, label, vcpus, memory_mb, disk_gb in PRESETS:
        Preset.objects.get_or_create(
            id=preset_id,
            defaults={
                "label": label,
                "vcpus": vcpus,
                "memory_mb": memory_mb,
                "disk_gb": disk_gb,
                "providers": ALL_PROVIDERS,
            },
        )


def unseed(apps, schema_editor):
    Preset = apps.get_model("sandboxes", "Preset")
    Preset.objects.filter(
        id__in=[p[0] for p in PRESETS], sandboxes__isnull=True, snapshots__isnull=True
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("sandboxes", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
