"""PVE's "full clone" moves off the Preset model into the PVE provider's own setting,
``PVE_FULL_CLONE_PRESETS`` (comma-separated preset ids).

Nothing is lost: the ids of the presets that had the box ticked are written to the data
dir's ``provider-settings.env`` (merged with what is there), which config/settings.py
reads under the environment; the migration also prints the line to add to the
environment instead. Going back ticks the box again for the presets that setting names.
"""

import os
from pathlib import Path

from django.conf import settings
from django.db import migrations

KEY = "PVE_FULL_CLONE_PRESETS"
FILE = "provider-settings.env"  # config.localfiles.PROVIDER_SETTINGS_FILE, frozen here


def _path() -> Path:
    return Path(settings.DATA_DIR) / FILE


def _read(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _ids(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def carry_over(apps, schema_editor):
    Preset = apps.get_model("sandboxes", "Preset")
    ticked = sorted(Preset.objects.filter(full_clone=True).values_list("id", flat=True))
    if not ticked:
        return
    path = _path()
    lines = _read(path)
    kept, earlier = [], []
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() == KEY:
            earlier += _ids(value)
        else:
            kept.append(line)
    ids = sorted(set(earlier) | set(ticked))
    text = "\n".join([*kept, f"{KEY}={','.join(ids)}"]) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(temporary, path)
    print(  # noqa: T201 - the operator reads migrate's output
        f"\n  full clone moved to the PVE provider's settings: {KEY}={','.join(ids)} "
        f"(kept in {path}; set it in the environment to override)"
    )


def restore(apps, schema_editor):
    Preset = apps.get_model("sandboxes", "Preset")
    ids = set(_ids(os.environ.get(KEY, "")))
    for line in _read(_path()):
        key, sep, value = line.partition("=")
        if sep and key.strip() == KEY:
            ids |= set(_ids(value))
    Preset.objects.filter(id__in=ids).update(full_clone=True)


class Migration(migrations.Migration):
    dependencies = [("sandboxes", "0017_presets_every_provider")]
    operations = [
        # Reversed, the field comes back first (RemoveField undone), then restore fills it.
        migrations.RunPython(carry_over, restore),
        migrations.RemoveField(model_name="preset", name="full_clone"),
    ]
