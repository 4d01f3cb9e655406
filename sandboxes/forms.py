"""Dashboard forms: shape and parse what people type; the services decide what is valid.

A ``ServiceError`` with ``fields`` is put back on the form (``add_service_error``), so a
refusal shows next to the field it is about.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django import forms
from django.utils import timezone

from sandboxes.models import TtlAction
from sandboxes.services.errors import ServiceError
from sandboxes.ui.durations import format_duration, parse_duration

DURATION_HELP = "e.g. 90s, 15m, 2h, 1d or 1h30m; blank for none"


class DurationField(forms.CharField):
    """Seconds, written as a duration (``2h``); blank is None."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", DURATION_HELP)
        kwargs.setdefault("widget", forms.TextInput(attrs={"maxlength": 40}))
        super().__init__(**kwargs)

    def prepare_value(self, value):
        return format_duration(value) if isinstance(value, int) else value

    def to_python(self, value):
        text = super().to_python(value)
        if len(text) > 40:
            raise forms.ValidationError("a duration is at most 40 characters")
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


class MetadataField(forms.CharField):
    """``key=value`` per line, as a dict."""

    widget = forms.Textarea(attrs={"rows": 3})

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", "one key=value per line")
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, dict):
            return "\n".join(f"{k}={v}" for k, v in value.items())
        return value

    def to_python(self, value):
        result: dict[str, str] = {}
        for number, line in enumerate((super().to_python(value) or "").splitlines(), 1):
            if not line.strip():
                continue
            key, sep, val = line.partition("=")
            if not sep or not key.strip():
                raise forms.ValidationError(f"line {number}: write key=value")
            result[key.strip()] = val.strip()
        return result


def add_service_error(form: forms.Form, error: ServiceError) -> None:
    """Show a service refusal on the fields it names, or on the whole form."""
    placed = False
    for field, problems in error.fields.items():
        target = field if field in form.fields else None
        if target is None and field == "snapshot_id" and "snapshot" in form.fields:
            target = "snapshot"
        for problem in problems:
            form.add_error(target, problem)
            placed = True
    if not placed:
        form.add_error(None, error.message)


class NewSandboxForm(forms.Form):
    preset = forms.ChoiceField(label="Preset")
    provider = forms.ChoiceField(label="Provider")
    snapshot = forms.ChoiceField(
        label="Snapshot version",
        required=False,
        help_text="the active version unless you pick another",
    )
    name = forms.CharField(label="Name", required=False, max_length=100)
    ttl = DurationField(label="Time to live")
    ttl_action = forms.ChoiceField(
        label="When the time is up", choices=TtlAction.choices, initial=TtlAction.STOP
    )
    idle_timeout = DurationField(label="Hibernate when idle for")
    delete_parked = DurationField(label="Delete when stopped or paused for")
    #: One per rendered form: a double submit (or a retried POST) makes one sandbox.
    idempotency_key = forms.CharField(widget=forms.HiddenInput, max_length=64)

    def __init__(self, *args, presets, providers, versions, active=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["preset"].choices = [(p.pk, _preset_label(p)) for p in presets]
        self.fields["provider"].choices = [(name, name) for name in providers]
        default = f"Active version ({active.snapshot_id})" if active else "No active version"
        self.fields["snapshot"].choices = [("", default)] + [
            (v.snapshot_id, _version_label(v)) for v in versions
        ]
        if not self.is_bound:
            self.initial.setdefault("idempotency_key", uuid.uuid4().hex)


def _preset_label(preset) -> str:
    size = f"{preset.vcpus} vCPU, {preset.memory_mb // 1024 or preset.memory_mb} "
    size += "GiB" if preset.memory_mb >= 1024 else "MiB"
    return f"{preset.pk} ({size}, {preset.disk_gb} GB disk)"


def _version_label(version) -> str:
    parts = [version.snapshot_id]
    if version.label:
        parts.append(f"“{version.label}”")
    if version.team_id is None:
        parts.append("shared")
    return " · ".join(parts)


class SettingsForm(forms.Form):
    name = forms.CharField(label="Name", required=False, max_length=100)
    ttl = DurationField(label="Time to live (from start)")
    ttl_action = forms.ChoiceField(label="When the time is up", choices=TtlAction.choices)
    idle_timeout = DurationField(label="Hibernate when idle for")
    metadata = MetadataField(label="Metadata")


class ExecForm(forms.Form):
    command = forms.CharField(
        label="Command", max_length=64 * 1024, strip=False, widget=forms.TextInput
    )
    timeout = forms.IntegerField(
        label="Timeout (seconds)", min_value=1, max_value=3600, initial=60, required=False
    )


class ServiceForm(forms.Form):
    name = forms.CharField(label="Service name", max_length=32)
    port = forms.IntegerField(label="Port", min_value=1, max_value=65535)


class SnapshotForm(forms.Form):
    label = forms.CharField(label="Label", required=False, max_length=200)


class WakeOnForm(forms.Form):
    http = forms.BooleanField(label="Wake on HTTP", required=False)
    ssh = forms.BooleanField(label="Wake on SSH", required=False)


EXPIRY_CHOICES = [("", "Never"), ("7", "7 days"), ("30", "30 days"), ("90", "90 days")]
EXPIRY_CHOICES.append(("365", "1 year"))


class TokenForm(forms.Form):
    name = forms.CharField(label="Name", required=False, max_length=100)
    read_only = forms.BooleanField(label="Read-only", required=False)
    expires_in = forms.ChoiceField(label="Expires", choices=EXPIRY_CHOICES, required=False)

    def expires_at(self):
        days = self.cleaned_data.get("expires_in")
        return timezone.now() + timedelta(days=int(days)) if days else None


class SecretForm(forms.Form):
    """Set or replace a team secret. The value field is never filled back in."""

    name = forms.CharField(label="Name", max_length=64)
    value = forms.CharField(
        label="Value",
        max_length=65536,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )
