"""Every request body and every response of the API has a serializer here.

Request serializers derive from ``StrictSerializer``: a field the serializer does not
know is refused (400, ``fields`` names it) instead of being silently ignored. Semantic
checks (metadata keys, name characters, ...) are the services' job; the bounds written
here are the same ones, so the OpenAPI schema tells clients what will be accepted.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from sandboxes import selectors
from sandboxes.api.fields import (
    CommandField,
    MetadataField,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    StrictRegexField,
    StrictSerializer,
    name_field,
    row_writer,
    seconds_field,
)
from sandboxes.models import NetworkMode, Sandbox, TtlAction
from sandboxes.services import backends, previews
from sandboxes.services.interactive import MAX_EXEC_TIMEOUT
from sandboxes.states import Status

MAX_WAIT_SECONDS = 60


class NoBodySerializer(StrictSerializer):
    """An action without parameters: no body, or ``{}``."""


# --- sandboxes -------------------------------------------------------------------------


class ServiceSerializer(serializers.Serializer):
    name = serializers.CharField()
    port = serializers.IntegerField()
    url = serializers.CharField()
    sharing = serializers.ChoiceField(
        choices=previews.SHARING_LEVELS,
        default=previews.DEFAULT_SHARING,
        help_text="Who may open its preview URL (PATCH .../services/{name} to change).",
    )


# A sandbox's wake-on settings, read from its row (SandboxSerializer nests it with
# source="*"). A comment, not a docstring: a docstring would become the schema's text.
class WakeOnStateSerializer(serializers.Serializer):
    http = serializers.BooleanField(source="wake_on_http")
    ssh = serializers.BooleanField(source="wake_on_ssh")


class NetworkPolicySerializer(serializers.Serializer):
    mode = serializers.ChoiceField(
        choices=NetworkMode.choices,
        help_text="none: loopback only; internet: public addresses only; allowlist: only "
        "the listed CIDRs and host names (public ones).",
    )
    allow = serializers.ListField(child=serializers.CharField())
    source = serializers.ChoiceField(
        choices=["preset", "team", "sandbox"],
        help_text="Where the policy came from: the preset's, the team's override, or the "
        "sandbox's own (asked for at create).",
    )


class RepoSerializer(serializers.Serializer):
    url = serializers.CharField()
    branch = serializers.CharField(help_text="Empty: the repository's default branch.")
    path = serializers.CharField(help_text="The clone's folder, relative to the user's home.")
    credential = serializers.CharField(
        help_text="The name of the team secret it clones with (never its value)."
    )
    username = serializers.CharField()


class RepoInputSerializer(StrictSerializer):
    url = StrictCharField(
        max_length=2000,
        help_text="https://, http://, ssh://, git:// or user@host:path; no credentials in it.",
    )
    branch = StrictCharField(required=False, allow_blank=True, max_length=200)
    path = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=200,
        help_text="A folder inside the home; default: the repository's name.",
    )
    credential = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=64,
        help_text="Name of a team secret: the password or token for http(s) (asked by "
        "git through GIT_ASKPASS), a private key for ssh.",
    )
    username = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=100,
        help_text="The user name sent with the credential; default x-access-token.",
    )


class SandboxSerializer(serializers.Serializer):
    """A sandbox as the API shows it. Reads only columns of the row and its snapshot."""

    id = serializers.CharField()
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=Status.choices)
    transitional = serializers.BooleanField(
        source="is_transitional", help_text="An operation is under way (starting, pausing, ...)."
    )
    operation = serializers.CharField(help_text="The operation under way; empty when settled.")
    provider = serializers.CharField()
    preset = serializers.CharField(source="preset_id")
    snapshot_id = serializers.CharField(source="snapshot_version", allow_null=True, read_only=True)
    vcpus = serializers.IntegerField()
    memory_mb = serializers.IntegerField()
    disk_gb = serializers.IntegerField()
    metadata = serializers.DictField(child=serializers.CharField())
    services = ServiceSerializer(many=True)
    ttl_seconds = serializers.IntegerField(allow_null=True)
    ttl_action = serializers.ChoiceField(choices=TtlAction.choices)
    expires_at = serializers.DateTimeField(allow_null=True)
    idle_timeout_seconds = serializers.IntegerField(allow_null=True)
    delete_parked_after_seconds = serializers.IntegerField(allow_null=True)
    wake_on = WakeOnStateSerializer(source="*", read_only=True)
    network = serializers.SerializerMethodField(
        help_text="The effective outbound network policy, fixed at create."
    )
    env = serializers.DictField(
        child=serializers.CharField(), help_text="Plain variables of its exec and terminals."
    )
    secrets = serializers.ListField(
        child=serializers.CharField(),
        source="secret_names",
        help_text="Names of the team secrets its exec and terminals get (never the values).",
    )
    repo = serializers.SerializerMethodField(
        help_text="The repository cloned at its first start (null: none)."
    )
    setup_status = serializers.ChoiceField(
        choices=["", "pending", "running", "succeeded", "failed"],
        help_text="The clone and setup script: empty when there is none; failed keeps the "
        "sandbox running, with the reason in setup_error and the output in its events.",
    )
    setup_error = serializers.CharField()
    environment = serializers.IntegerField(
        source="environment_id",
        allow_null=True,
        help_text="The id of the team environment it was started from.",
    )
    last_error = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    status_changed_at = serializers.DateTimeField()
    last_activity_at = serializers.DateTimeField()
    deleted_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(NetworkPolicySerializer)
    def get_network(self, row: dict) -> dict:
        return network_view(row["network"])

    @extend_schema_field(RepoSerializer(allow_null=True))
    def get_repo(self, row: dict) -> dict | None:
        return repo_view(row["repo"])

    def to_representation(self, sandbox: Sandbox | dict) -> dict[str, Any]:
        """A row of ``selectors.sandbox_rows`` (or a Sandbox, as ``selectors.sandbox_row``
        gives it) written as the fields above say, by ``row_writer``: the fields' sources
        are the row's keys."""
        row = sandbox if isinstance(sandbox, dict) else selectors.sandbox_row(sandbox)
        return _sandbox_writer()(row, timezone.get_current_timezone())


@cache
def _sandbox_writer():
    return row_writer(SandboxSerializer())


class SandboxCreateSerializer(StrictSerializer):
    preset = StrictCharField(
        required=False, max_length=40, help_text="Preset id, e.g. 2vcpu_4gb_16gb."
    )
    provider = StrictCharField(
        required=False, max_length=32, help_text="Provider name; default: the site's default."
    )
    snapshot_id = StrictCharField(
        required=False,
        max_length=120,
        help_text="A version (local_2vcpu_2gb_8gb_v3) or the id without _vN (the active one).",
    )
    name = name_field()
    ttl_seconds = seconds_field(required=False, allow_null=True)
    ttl_action = serializers.ChoiceField(choices=TtlAction.choices, required=False)
    idle_timeout_seconds = seconds_field(
        required=False,
        allow_null=True,
        help_text="Park it after this long idle; null: never; left out: the team's default.",
    )
    delete_parked_after_seconds = seconds_field(
        required=False,
        allow_null=True,
        help_text="Delete it after this long stopped, paused or hibernated; null: never; "
        "left out: the team's default (14 days unless the team or site sets another).",
    )
    metadata = MetadataField(required=False)
    network_policy = serializers.ChoiceField(
        choices=NetworkMode.choices,
        required=False,
        help_text="Override the team's and the preset's outbound network policy "
        "(see docs/network.md). Refused (409 capability_missing) where the provider "
        "cannot enforce it.",
    )
    network_allow = serializers.ListField(
        child=StrictCharField(max_length=253),
        required=False,
        max_length=64,
        help_text="With network_policy allowlist: public IPv4 CIDRs (93.184.216.0/24) and "
        "host names (pypi.org, resolved when the sandbox starts).",
    )
    env = serializers.DictField(
        child=StrictCharField(max_length=16384, allow_blank=True, trim_whitespace=False),
        required=False,
        help_text="Plain environment variables of every exec and terminal (not for secrets: "
        "they are shown back).",
    )
    secrets = serializers.ListField(
        child=StrictCharField(max_length=64),
        required=False,
        max_length=64,
        help_text="Names of team secrets (PUT /api/v1/secrets/{name}) given to every exec "
        "and terminal as variables of those names.",
    )
    repo = RepoInputSerializer(
        required=False,
        help_text="A repository cloned into the sandbox's home at its first start.",
    )
    setup = StrictCharField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        max_length=65536,
        help_text="A script run once after the first start (after the clone), as the "
        "sandbox's user, in the repository, with its env and secrets (sh -e; bash if present).",
    )


def repo_view(record: dict | None) -> dict | None:
    """A sandbox's or environment's repository as the API shows it (null: none)."""
    if not record:
        return None
    return {
        "url": record["url"],
        "branch": record.get("branch", ""),
        "path": record.get("path", ""),
        "credential": record.get("credential", ""),
        "username": record.get("username", ""),
    }


def network_view(record: dict | None) -> dict:
    """A sandbox's stored effective policy as the API shows it (old rows: none)."""
    record = record or {}
    return {
        "mode": record.get("mode") or "none",
        "allow": list(record.get("allow") or []),
        "source": record.get("source") or "preset",
    }


class SandboxUpdateSerializer(StrictSerializer):
    """PATCH: only the fields given change; ``null`` clears a TTL or idle timeout."""

    name = name_field()
    ttl_seconds = seconds_field(required=False, allow_null=True)
    ttl_action = serializers.ChoiceField(choices=TtlAction.choices, required=False)
    idle_timeout_seconds = seconds_field(required=False, allow_null=True)
    metadata = MetadataField(required=False)


class WaitQuerySerializer(serializers.Serializer):
    wait = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_WAIT_SECONDS,
        help_text="Wait up to this many seconds for a settled status (not starting, ...).",
    )


class ExecSerializer(StrictSerializer):
    command = CommandField()
    timeout_seconds = StrictIntegerField(
        required=False, default=60, min_value=1, max_value=MAX_EXEC_TIMEOUT
    )


class ExecResultSerializer(serializers.Serializer):
    exit_code = serializers.IntegerField()
    stdout = serializers.CharField()
    stderr = serializers.CharField()
    stdout_truncated = serializers.BooleanField()
    stderr_truncated = serializers.BooleanField()
    timed_out = serializers.BooleanField()


class TakeSnapshotSerializer(StrictSerializer):
    label = StrictCharField(required=False, allow_blank=True, max_length=200)


class ExposeServiceSerializer(StrictSerializer):
    name = StrictRegexField(
        r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$",
        help_text="1-32 lowercase letters, digits and dashes, not at either end.",
    )
    port = StrictIntegerField(min_value=1, max_value=65535)


class WakeOnSerializer(StrictSerializer):
    http = StrictBooleanField(help_text="HTTP to an exposed service wakes the sandbox.")
    ssh = StrictBooleanField(help_text="An SSH connection wakes the sandbox.")


class EventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    action = serializers.CharField()
    outcome = serializers.CharField()
    actor_kind = serializers.CharField()
    actor = serializers.CharField(source="actor_label")
    from_status = serializers.CharField()
    to_status = serializers.CharField()
    message = serializers.CharField()
    data = serializers.DictField()
    sandbox = serializers.CharField(source="sandbox_id", allow_null=True)
    created_at = serializers.DateTimeField()


class SshInfoSerializer(serializers.Serializer):
    host = serializers.CharField()
    port = serializers.IntegerField()
    username = serializers.CharField()
    command = serializers.CharField(help_text="A command line that connects.")


class SshTokenSerializer(serializers.Serializer):
    token = serializers.CharField(
        help_text="The user name to log in with (shown once; only its digest is kept)."
    )
    expires_at = serializers.DateTimeField()
    host = serializers.CharField(help_text="The SSH gateway's public host.")
    port = serializers.IntegerField()
    command = serializers.CharField(help_text="The ssh command line that logs in with it.")


class SshKeySerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    public_key = serializers.CharField(
        max_length=16384, help_text="One line, as in ~/.ssh/id_ed25519.pub."
    )
    fingerprint = serializers.CharField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    last_used_at = serializers.DateTimeField(read_only=True, allow_null=True)


# --- presets and snapshot versions -----------------------------------------------------


class PresetSerializer(serializers.Serializer):
    id = serializers.CharField()
    label = serializers.CharField()
    description = serializers.CharField()
    vcpus = serializers.IntegerField()
    memory_mb = serializers.IntegerField()
    disk_gb = serializers.IntegerField()
    providers = serializers.SerializerMethodField(
        help_text="The enabled providers this preset is offered on."
    )

    def get_providers(self, preset) -> list[str]:
        enabled = self.context.get("enabled_providers")
        if enabled is None:
            return list(preset.providers)
        return backends.offered_providers(preset, enabled)


class SnapshotSerializer(serializers.Serializer):
    snapshot_id = serializers.CharField()
    provider = serializers.CharField()
    preset = serializers.CharField(source="preset_id")
    version = serializers.IntegerField()
    status = serializers.CharField(help_text="creating, ready, failed, deleting (or deleted).")
    active = serializers.SerializerMethodField(
        help_text="The version your team starts from for this provider and preset."
    )
    shared = serializers.SerializerMethodField(help_text="Shared by every team (not your own).")
    parent = serializers.SerializerMethodField(help_text="The version this one was taken from.")
    source_sandbox = serializers.CharField(source="source_sandbox_id", allow_null=True)
    created_by = serializers.SerializerMethodField()
    label = serializers.CharField()
    size_bytes = serializers.IntegerField(allow_null=True)
    exposed_ports = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="Ports the image declares: each sandbox started from it exposes them as "
        "services named port-<n> (private) at its first start.",
    )
    error = serializers.CharField()
    created_at = serializers.DateTimeField()

    def get_active(self, snapshot) -> bool:
        return snapshot.pk in self.context.get("active_ids", ())

    def get_shared(self, snapshot) -> bool:
        return snapshot.team_id is None

    def get_parent(self, snapshot) -> str | None:
        return snapshot.parent.snapshot_id if snapshot.parent_id else None

    def get_created_by(self, snapshot) -> str | None:
        return snapshot.created_by.get_username() if snapshot.created_by_id else None


# --- tokens ----------------------------------------------------------------------------


class TokenSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The token's first characters, to recognise it.")
    can_write = serializers.BooleanField()
    active = serializers.BooleanField(source="is_usable")
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class TokenCreatedSerializer(TokenSerializer):
    token = serializers.CharField(help_text="The secret. Shown in this response only.")


class TokenCreateSerializer(StrictSerializer):
    name = StrictCharField(required=False, allow_blank=True, max_length=100)
    can_write = StrictBooleanField(
        required=False, default=True, help_text="false: a read-only token (writes get 403)."
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    expires_in_seconds = seconds_field(
        required=False, allow_null=True, help_text="Instead of expires_at."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("expires_at") and attrs.get("expires_in_seconds"):
            raise serializers.ValidationError(
                {"expires_in_seconds": ["give expires_at or expires_in_seconds, not both"]}
            )
        return attrs


# --- team secrets ----------------------------------------------------------------------


class SecretSerializer(serializers.Serializer):
    name = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    updated_by = serializers.CharField()


class SecretWriteSerializer(StrictSerializer):
    value = StrictCharField(
        max_length=65536,
        trim_whitespace=False,
        write_only=True,
        help_text="The secret's value; never shown again, never logged.",
    )


# --- config and health -----------------------------------------------------------------


class ProviderConfigSerializer(serializers.Serializer):
    name = serializers.CharField()
    default = serializers.BooleanField()
    capabilities = serializers.DictField(child=serializers.BooleanField())
    reasons = serializers.DictField(
        child=serializers.CharField(), help_text="Why each missing capability is missing."
    )


class TeamInfoSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    role = serializers.CharField()
    quotas = serializers.DictField(child=serializers.IntegerField(), help_text="0 = unlimited")
    usage = serializers.DictField(child=serializers.IntegerField())


class LimitsSerializer(serializers.Serializer):
    max_wait_seconds = serializers.IntegerField()
    max_exec_timeout_seconds = serializers.IntegerField()
    metadata_max_keys = serializers.IntegerField()
    metadata_max_key_length = serializers.IntegerField()
    metadata_max_value_length = serializers.IntegerField()
    rate = serializers.CharField(allow_null=True)
    create_rate = serializers.CharField(allow_null=True)


class ConfigSerializer(serializers.Serializer):
    default_provider = serializers.CharField(allow_null=True)
    providers = ProviderConfigSerializer(many=True)
    presets = PresetSerializer(many=True)
    team = TeamInfoSerializer()
    limits = LimitsSerializer()


class ProviderCapacitySerializer(serializers.Serializer):
    memory_mb_total = serializers.IntegerField(
        help_text="Memory all sandboxes of the provider may be given together."
    )
    memory_mb_used = serializers.IntegerField(
        help_text="Memory given to running and paused sandboxes (their presets' memory)."
    )
    memory_mb_free = serializers.IntegerField(
        help_text="What a create or start may still take; more is refused."
    )
    pids_total = serializers.IntegerField(
        allow_null=True, help_text="Processes all sandboxes together may have (null: no cap)."
    )
    pids_used = serializers.IntegerField(
        allow_null=True, help_text="Processes they have now (null: not known)."
    )
    sandboxes_running = serializers.IntegerField(help_text="Running and paused sandboxes.")


class ProviderHealthSerializer(serializers.Serializer):
    name = serializers.CharField()
    reachable = serializers.BooleanField()
    latency_ms = serializers.FloatField(allow_null=True)
    detail = serializers.CharField()
    capacity = ProviderCapacitySerializer(
        allow_null=True, help_text="What the provider can still hold (null: it does not say)."
    )


class WorkerLivenessSerializer(serializers.Serializer):
    host = serializers.CharField()
    pid = serializers.IntegerField()
    state = serializers.CharField(help_text="starting, running, busy or restarting")
    alive = serializers.BooleanField(
        help_text="Its cluster ran a heartbeat task within WORKER_STALL_SECONDS, or every "
        "one of its worker processes is on a task."
    )
    seen_seconds_ago = serializers.FloatField(help_text="Since its supervisor last reported.")
    beat_seconds_ago = serializers.FloatField(
        allow_null=True, help_text="Since its cluster last ran a heartbeat task."
    )
    restarts = serializers.IntegerField(help_text="Clusters it restarted (died or stalled).")
    last_restart_reason = serializers.CharField()


class BackgroundHealthSerializer(serializers.Serializer):
    mode = serializers.CharField(help_text="cluster (manage.py worker) or inline (Q_SYNC)")
    ok = serializers.BooleanField()
    detail = serializers.CharField()
    workers = WorkerLivenessSerializer(many=True)
    last_sweep_seconds_ago = serializers.FloatField(
        allow_null=True, help_text="Since the last sweep finished (null: none has yet)."
    )


class HealthSerializer(serializers.Serializer):
    ok = serializers.BooleanField(
        help_text="Every enabled provider is reachable and the background worker runs tasks."
    )
    providers = ProviderHealthSerializer(many=True)
    background = BackgroundHealthSerializer()


# --- team environments -----------------------------------------------------------------


class EnvironmentServiceSerializer(StrictSerializer):
    name = StrictCharField(max_length=32)
    port = StrictIntegerField(min_value=1, max_value=65535)


class EnvironmentSerializer(serializers.Serializer):
    """A team environment: the recipe of sandboxes started from it."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    snapshot_id = serializers.CharField(help_text="Empty: the active version of preset.")
    preset = serializers.CharField(source="preset_id", allow_null=True)
    provider = serializers.CharField()
    repo = serializers.SerializerMethodField()
    env = serializers.DictField(child=serializers.CharField())
    secrets = serializers.ListField(child=serializers.CharField(), source="secret_names")
    setup = serializers.CharField()
    services = serializers.ListField(child=serializers.DictField())
    network_policy = serializers.CharField(help_text="Empty: the team's, else the preset's.")
    network_allow = serializers.ListField(child=serializers.CharField())
    idle_timeout_seconds = serializers.IntegerField(
        allow_null=True, help_text="null: the team's default; 0: never."
    )
    delete_parked_after_seconds = serializers.IntegerField(
        allow_null=True, help_text="null: the team's default; 0: never."
    )
    ttl_seconds = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    updated_by = serializers.CharField()

    @extend_schema_field(RepoSerializer(allow_null=True))
    def get_repo(self, environment) -> dict | None:
        return repo_view(environment.repo)


def _lifecycle_field() -> serializers.IntegerField:
    return StrictIntegerField(
        required=False, allow_null=True, min_value=0, max_value=365 * 24 * 3600
    )


class EnvironmentWriteSerializer(StrictSerializer):
    """Create (name required) or change (only the fields given) an environment."""

    name = StrictRegexField(
        r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$",
        max_length=64,
        required=False,
        help_text="Lowercase letters, digits and dashes; unique in the team.",
    )
    description = StrictCharField(required=False, allow_blank=True, max_length=200)
    snapshot_id = StrictCharField(required=False, allow_blank=True, max_length=120)
    preset = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=40)
    provider = StrictCharField(required=False, allow_blank=True, max_length=32)
    repo = RepoInputSerializer(required=False, allow_null=True)
    env = serializers.DictField(
        child=StrictCharField(max_length=16384, allow_blank=True, trim_whitespace=False),
        required=False,
    )
    secrets = serializers.ListField(
        child=StrictCharField(max_length=64), required=False, max_length=64
    )
    setup = StrictCharField(
        required=False, allow_blank=True, trim_whitespace=False, max_length=65536
    )
    services = EnvironmentServiceSerializer(many=True, required=False)
    network_policy = serializers.ChoiceField(
        choices=[("", "the team's or preset's"), *NetworkMode.choices], required=False
    )
    network_allow = serializers.ListField(
        child=StrictCharField(max_length=253), required=False, max_length=64
    )
    idle_timeout_seconds = _lifecycle_field()
    delete_parked_after_seconds = _lifecycle_field()
    ttl_seconds = _lifecycle_field()


class EnvironmentStartSerializer(StrictSerializer):
    """Start a sandbox from an environment; every field is optional."""

    name = name_field()
    branch = StrictCharField(
        required=False, max_length=200, help_text="Another branch of its repository."
    )
    ttl_seconds = seconds_field(required=False, allow_null=True)
    idle_timeout_seconds = seconds_field(required=False, allow_null=True)
    delete_parked_after_seconds = seconds_field(required=False, allow_null=True)
    metadata = MetadataField(required=False)


# --- cmux compatibility ----------------------------------------------------------------


class CmuxStartSerializer(StrictSerializer):
    """The body of cmux's ``POST /api/sandboxes/start``, mapped onto create."""

    snapshotId = StrictCharField(
        required=False,
        max_length=255,
        help_text="A snapshot version or id without _vN, or a provider's image reference "
        "(required unless environmentId is given).",
    )
    ttlSeconds = seconds_field(required=False, allow_null=True)
    metadata = MetadataField(required=False)
    teamSlugOrId = StrictCharField(
        required=False, max_length=50, help_text="Must be the team of your token if given."
    )
    repoUrl = StrictCharField(
        required=False,
        max_length=2000,
        help_text="A repository cloned into the sandbox at its first start.",
    )
    branch = StrictCharField(required=False, max_length=200, help_text="Its branch.")
    environmentId = StrictCharField(
        required=False,
        max_length=64,
        help_text="A team environment (its id or name) to start from; snapshotId is then optional.",
    )


class CmuxStartedSerializer(serializers.Serializer):
    instanceId = serializers.CharField()
    provider = serializers.CharField()
    status = serializers.CharField()
    snapshotId = serializers.CharField()
    vscodeUrl = serializers.CharField(allow_null=True)
    workerUrl = serializers.CharField(allow_null=True)


# --- errors ----------------------------------------------------------------------------


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, machine-readable; see docs/api.md.")
    message = serializers.CharField()
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Request field -> what is wrong with it.",
    )
    capability = serializers.CharField(required=False, help_text="capability_missing only.")
    reason = serializers.CharField(required=False, help_text="capability_missing only.")
    quota = serializers.CharField(required=False, help_text="quota_* only.")
    limit = serializers.IntegerField(required=False, help_text="quota_* only.")
    used = serializers.IntegerField(required=False, help_text="quota_* only.")
    requested = serializers.IntegerField(required=False, help_text="quota_* only.")
    retry_after = serializers.IntegerField(required=False, help_text="throttled only.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


class PoolSerializer(serializers.Serializer):
    """A warm pool: started instances of one snapshot kept for creates (docs/pools.md)."""

    id = serializers.IntegerField()
    provider = serializers.CharField()
    snapshot_id = serializers.CharField(source="snapshot.snapshot_id")
    shared = serializers.SerializerMethodField(
        help_text="True: every team's creates may take from it (operators manage it)."
    )
    target_size = serializers.IntegerField()
    maximum = serializers.IntegerField(help_text="Members there may ever be at once.")
    max_age_seconds = serializers.IntegerField(help_text="Older ready members are replaced.")
    enabled = serializers.BooleanField()
    ready = serializers.IntegerField(help_text="Members ready to be claimed now.")
    creating = serializers.IntegerField(help_text="Members being made.")
    hits = serializers.IntegerField()
    misses = serializers.IntegerField()
    hit_rate = serializers.SerializerMethodField(help_text="hits / (hits + misses); null: none.")
    refill_lag_seconds = serializers.SerializerMethodField(
        help_text="How long fewer than target_size members have been ready (0: full)."
    )
    created_at = serializers.DateTimeField()

    def get_shared(self, pool) -> bool:
        return pool.team_id is None

    def get_hit_rate(self, pool) -> float | None:
        total = pool.hits + pool.misses
        return round(pool.hits / total, 4) if total else None

    def get_refill_lag_seconds(self, pool) -> float:
        if pool.short_since is None:
            return 0.0
        return round((timezone.now() - pool.short_since).total_seconds(), 1)


class PoolWriteSerializer(StrictSerializer):
    """Create (snapshot_id required) or change (the fields given) a team's pool."""

    snapshot_id = StrictCharField(
        required=False, max_length=120, help_text="A version, e.g. local_2vcpu_2gb_8gb_v3."
    )
    target_size = StrictIntegerField(required=False, min_value=0)
    maximum = StrictIntegerField(required=False, min_value=0)
    max_age_seconds = StrictIntegerField(required=False, min_value=60)
    enabled = StrictBooleanField(required=False)
