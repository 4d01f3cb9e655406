"""Dashboard forms: shape and parse what people type; the services decide what is valid.

A ``ServiceError`` with ``fields`` is put back on the form (``add_service_error``), so a
refusal shows next to the field it is about.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django import forms
from django.utils import timezone

from sandboxes.models import NetworkMode, TtlAction
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
        if target is None and field.replace(".", "_") in form.fields:
            target = field.replace(".", "_")  # repo.url: the form's repo_url
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
    repo_url = forms.CharField(
        label="Repository",
        required=False,
        max_length=2000,
        help_text="cloned into the home at the first start (https://, ssh://, user@host:path)",
    )
    repo_branch = forms.CharField(label="Branch", required=False, max_length=200)
    setup = forms.CharField(
        label="Setup script",
        required=False,
        max_length=65536,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4, "class": "mono"}),
        help_text="run once after the first start, in the repository (sh -e)",
    )
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


class SshKeyForm(forms.Form):
    name = forms.CharField(label="Name", required=False, max_length=100)
    public_key = forms.CharField(
        label="Public key",
        max_length=16384,
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": "ssh-ed25519 AAAA... you@laptop", "class": "mono"}
        ),
    )


class SecretForm(forms.Form):
    """Set or replace a team secret. The value field is never filled back in."""

    name = forms.CharField(label="Name", max_length=64)
    value = forms.CharField(
        label="Value",
        max_length=65536,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )


class LinesField(forms.CharField):
    """One entry per line, as a list."""

    widget = forms.Textarea(attrs={"rows": 2})

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, list) else value

    def to_python(self, value):
        text = super().to_python(value) or ""
        return [line.strip() for line in text.splitlines() if line.strip()]


class EnvironmentForm(forms.Form):
    """A team environment; the service checks it (``services/environments.py``)."""

    name = forms.CharField(
        label="Name", max_length=64, help_text="lowercase letters, digits and dashes"
    )
    description = forms.CharField(label="Description", required=False, max_length=200)
    preset = forms.ChoiceField(label="Preset", required=False)
    provider = forms.ChoiceField(label="Provider", required=False)
    snapshot_id = forms.CharField(
        label="Snapshot version",
        required=False,
        max_length=120,
        help_text="blank: the active version of the preset on the provider",
    )
    repo_url = forms.CharField(label="Repository", required=False, max_length=2000)
    repo_branch = forms.CharField(label="Branch", required=False, max_length=200)
    repo_path = forms.CharField(
        label="Folder", required=False, max_length=200, help_text="inside the home"
    )
    repo_credential = forms.ChoiceField(
        label="Git credential", required=False, help_text="a team secret (token or SSH key)"
    )
    env = MetadataField(label="Variables", help_text="one NAME=value per line")
    secrets = forms.MultipleChoiceField(
        label="Secrets", required=False, widget=forms.CheckboxSelectMultiple
    )
    setup = forms.CharField(
        label="Setup script",
        required=False,
        max_length=65536,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 5, "class": "mono"}),
        help_text="run once after the first start, in the repository (sh -e)",
    )
    services = LinesField(label="Services to expose", help_text="one name=port per line")
    network_policy = forms.ChoiceField(label="Outbound network", required=False)
    network_allow = LinesField(label="Allowlist", help_text="CIDRs and host names, one a line")
    idle_timeout = DurationField(
        label="Hibernate when idle for", help_text="blank: the team's default"
    )
    delete_parked = DurationField(
        label="Delete when stopped or paused for", help_text="blank: the team's default"
    )
    ttl = DurationField(label="Time to live")

    def __init__(self, *args, presets, providers, secret_names, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["preset"].choices = [("", "—")] + [(p.pk, _preset_label(p)) for p in presets]
        self.fields["provider"].choices = [("", "the site's default")] + [
            (name, name) for name in providers
        ]
        self.fields["repo_credential"].choices = [("", "none (a public repository)")] + [
            (name, name) for name in secret_names
        ]
        self.fields["secrets"].choices = [(name, name) for name in secret_names]
        self.fields["network_policy"].choices = [
            ("", "the team's, else the preset's"),
            *list(NetworkMode.choices),
        ]

    def clean_services(self) -> list[dict]:
        services = []
        for line in self.cleaned_data["services"]:
            name, sep, port = line.partition("=")
            if not sep or not port.strip().isdigit():
                raise forms.ValidationError(f"{line}: write name=port")
            services.append({"name": name.strip(), "port": int(port)})
        return services

    def as_data(self) -> dict:
        """The cleaned form as ``environments.create_environment`` takes it."""
        data = self.cleaned_data
        repo = None
        if data["repo_url"]:
            repo = {
                "url": data["repo_url"],
                "branch": data["repo_branch"],
                "path": data["repo_path"],
                "credential": data["repo_credential"],
            }
        return {
            "name": data["name"],
            "description": data["description"],
            "preset": data["preset"] or None,
            "provider": data["provider"],
            "snapshot_id": data["snapshot_id"],
            "repo": repo,
            "env": data["env"],
            "secrets": data["secrets"],
            "setup": data["setup"],
            "services": data["services"],
            "network_policy": data["network_policy"],
            "network_allow": data["network_allow"],
            "idle_timeout_seconds": data["idle_timeout"],
            "delete_parked_after_seconds": data["delete_parked"],
            "ttl_seconds": data["ttl"],
        }

    @staticmethod
    def initial_of(environment) -> dict:
        repo = environment.repo or {}
        return {
            "name": environment.name,
            "description": environment.description,
            "preset": environment.preset_id or "",
            "provider": environment.provider,
            "snapshot_id": environment.snapshot_id,
            "repo_url": repo.get("url", ""),
            "repo_branch": repo.get("branch", ""),
            "repo_path": repo.get("path", ""),
            "repo_credential": repo.get("credential", ""),
            "env": environment.env,
            "secrets": environment.secret_names,
            "setup": environment.setup,
            "services": [f"{s['name']}={s['port']}" for s in environment.services],
            "network_policy": environment.network_policy,
            "network_allow": environment.network_allow,
            "idle_timeout": environment.idle_timeout_seconds,
            "delete_parked": environment.delete_parked_after_seconds,
            "ttl": environment.ttl_seconds,
        }


class PoolForm(forms.Form):
    """A warm pool for the team (docs/pools.md): which snapshot, how many kept ready."""

    snapshot = forms.ChoiceField(label="Snapshot", choices=())
    target_size = forms.IntegerField(label="Target size", min_value=0, initial=2)
    maximum = forms.IntegerField(label="Maximum", min_value=0, initial=4)
    max_age_seconds = forms.IntegerField(
        label="Max member age (s)", min_value=60, initial=24 * 3600
    )

    def __init__(self, *args, snapshot_ids: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["snapshot"].choices = [(s, s) for s in snapshot_ids]
