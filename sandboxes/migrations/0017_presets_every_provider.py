"""Presets apply to every provider unless restricted: an empty ``providers`` list now
means every provider (a new provider needs no migration of its own to offer them).

A preset listing every built-in provider (what 0002 seeded) becomes unrestricted; a
preset listing fewer keeps its list, which is now an explicit restriction. Going back
writes the built-in providers into the unrestricted presets again."""

from django.db import migrations, models

#: The built-in providers when presets had to list them (0002's ALL_PROVIDERS), copied:
#: migrations stay frozen in time.
BUILTIN = ["local", "docker", "pve-lxc", "pve-vm", "morph"]


def unrestrict(apps, schema_editor):
    Preset = apps.get_model("sandboxes", "Preset")
    for preset in Preset.objects.all():
        if set(BUILTIN) <= set(preset.providers or []):
            preset.providers = []
            preset.save(update_fields=["providers"])


def restrict(apps, schema_editor):
    Preset = apps.get_model("sandboxes", "Preset")
    for preset in Preset.objects.all():
        if not preset.providers:
            preset.providers = list(BUILTIN)
            preset.save(update_fields=["providers"])


class Migration(migrations.Migration):
    dependencies = [("sandboxes", "0016_ssh_gateway")]
    operations = [
        migrations.AlterField(
            model_name="preset",
            name="providers",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text='Restrict this preset to these providers, e.g. ["pve-vm"]; empty: every provider (each still refuses a size beyond what it can make).',
            ),
        ),
        migrations.RunPython(unrestrict, restrict),
    ]
