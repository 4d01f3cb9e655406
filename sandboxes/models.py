"""The domain model (docs/architecture.md, "Data model" and "Glossary").

Rows change only through ``sandboxes/services``; in particular nothing assigns
``Sandbox.status`` directly: transitions are compare-and-set updates.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from sandboxes.states import Status, is_transitional

SANDBOX_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no 0/o, 1/l: read aloud safely


def new_sandbox_id() -> str:
    """``sbx-`` + 10 random characters: usable as a hostname, a DNS label and a name."""
    return "sbx-" + "".join(secrets.choice(SANDBOX_ID_ALPHABET) for _ in range(10))


class NetworkMode(models.TextChoices):
    """Outbound network policies (providers/network.py; docs/network.md)."""

    NONE = "none", "none (loopback only)"
    INTERNET = "internet", "internet (public addresses only)"
    ALLOWLIST = "allowlist", "allowlist (listed CIDRs and host names)"


class Team(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    # Quotas: blank uses the site default (SANDBOX_TEAM_MAX_*), 0 means unlimited.
    max_sandboxes = models.PositiveIntegerField(null=True, blank=True)
    max_vcpus = models.PositiveIntegerField(null=True, blank=True)
    max_memory_mb = models.PositiveIntegerField(null=True, blank=True)
    #: Outbound network override for the team's sandboxes (blank: the preset's policy).
    network_policy = models.CharField(max_length=10, choices=NetworkMode.choices, blank=True)
    #: CIDRs and host names of the ``allowlist`` override.
    network_allow = models.JSONField(default=list, blank=True)
    # Lifecycle defaults for its new sandboxes: blank uses the site's
    # (SANDBOX_DEFAULT_*), 0 means never.
    idle_timeout_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Park a sandbox idle this long (0: never)."
    )
    delete_parked_after_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Delete a sandbox stopped or paused this long (0: never)."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Role(models.TextChoices):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


def role_can_write(role: str | None, *, token: ApiToken | None = None) -> bool:
    """The one rule for "may change things in the team": a member who is not a viewer,
    acting through no token or a token that may write. Every check asks here (the
    services' ``Actor``, the API's ``Principal``, the dashboard's team context)."""
    if role is None or role == Role.VIEWER:
        return False
    return token is None or token.can_write


def role_can_manage(role: str | None, *, token: ApiToken | None = None) -> bool:
    """Owners and admins manage the team's snapshot versions, settings and members."""
    return role_can_write(role, token=token) and role in (Role.OWNER, Role.ADMIN)


class Membership(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "team"], name="membership_unique_user_team")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"

    @property
    def can_write(self) -> bool:
        return role_can_write(self.role)

    @property
    def can_manage(self) -> bool:
        return role_can_manage(self.role)


class Preset(models.Model):
    """A machine size, e.g. ``4vcpu_16gb_48gb``; its id is derived from the size."""

    id = models.CharField(primary_key=True, max_length=40)
    label = models.CharField(max_length=100, blank=True)
    description = models.TextField(blank=True)
    vcpus = models.PositiveIntegerField()
    memory_mb = models.PositiveIntegerField()
    disk_gb = models.PositiveIntegerField()
    #: Names of the providers this preset is restricted to; empty (the default): every
    #: provider, so a new provider offers every preset with no migration. A provider
    #: still refuses a size beyond its capabilities (services.backends.preset_refusal).
    providers = models.JSONField(
        default=list,
        blank=True,
        help_text='Restrict this preset to these providers, e.g. ["pve-vm"]; empty: every '
        "provider (each still refuses a size beyond what it can make).",
    )
    enabled = models.BooleanField(default=True)
    #: Outbound network of sandboxes of this preset (teams and sandboxes may override).
    network_policy = models.CharField(
        max_length=10, choices=NetworkMode.choices, default=NetworkMode.NONE
    )
    #: CIDRs and host names of the ``allowlist`` policy.
    network_allow = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["vcpus", "memory_mb", "disk_gb"]
        constraints = [
            models.CheckConstraint(
                condition=Q(vcpus__gt=0, memory_mb__gt=0, disk_gb__gt=0),
                name="preset_size_positive",
            )
        ]

    def __str__(self) -> str:
        return self.id

    def offered_on(self, provider: str) -> bool:
        """False only when this preset is restricted to other providers."""
        return not self.providers or provider in self.providers

    def size(self) -> dict[str, int]:
        """What a sandbox of this preset is given: its vCPUs, memory and disk."""
        return {"vcpus": self.vcpus, "memory_mb": self.memory_mb, "disk_gb": self.disk_gb}


class SnapshotStatus(models.TextChoices):
    CREATING = "creating"
    READY = "ready"
    FAILED = "failed"
    DELETING = "deleting"
    #: Kept as a row so version numbers are never reused and lineage stays readable.
    DELETED = "deleted"


class Snapshot(models.Model):
    """One version of a preset's image on one provider: ``pvelxc_4vcpu_6gb_32gb_v3``."""

    snapshot_id = models.CharField(max_length=120, unique=True)
    provider = models.CharField(max_length=32)
    preset = models.ForeignKey(Preset, on_delete=models.PROTECT, related_name="snapshots")
    version = models.PositiveIntegerField()
    #: The team whose version this is; blank for a shared version every team can use.
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.PROTECT, related_name="snapshots"
    )
    provider_ref = models.CharField(max_length=255, blank=True)
    status = models.CharField(
        max_length=10, choices=SnapshotStatus.choices, default=SnapshotStatus.CREATING
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    source_sandbox = models.ForeignKey(
        "Sandbox",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="snapshots_taken",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    label = models.CharField(max_length=200, blank=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    #: Ports the image declares (an OCI image's ExposedPorts): every sandbox started from
    #: this snapshot gets them as services (``port-<n>``, private) at its first start.
    exposed_ports = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    # As on Sandbox: the worker making or deleting the image holds the lease.
    lease_token = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider", "preset_id", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "preset", "version"], name="snapshot_unique_version"
            ),
            models.CheckConstraint(condition=Q(version__gte=1), name="snapshot_version_from_1"),
        ]
        indexes = [models.Index(fields=["team", "provider", "preset"], name="snapshot_scope_idx")]

    def __str__(self) -> str:
        return self.snapshot_id


class ActiveSnapshot(models.Model):
    """Which version is active for a (team, provider, preset); team blank = every team.

    Starting from a preset (or an id without ``_vN``) uses the team's own active version
    when it has one, else the shared one. The unique constraint makes a second active
    version for the same scope impossible at the database level.
    """

    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.CASCADE, related_name="active_snapshots"
    )
    provider = models.CharField(max_length=32)
    preset = models.ForeignKey(Preset, on_delete=models.CASCADE, related_name="+")
    snapshot = models.ForeignKey(Snapshot, on_delete=models.PROTECT, related_name="activations")
    activated_at = models.DateTimeField(default=timezone.now)
    activated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                Coalesce(F("team"), Value(0)),
                F("provider"),
                F("preset"),
                name="one_active_snapshot_per_scope",
            )
        ]

    def __str__(self) -> str:
        return f"{self.snapshot} active for {self.team or 'every team'}"


class TtlAction(models.TextChoices):
    PAUSE = "pause"
    STOP = "stop"
    DELETE = "delete"


class Sandbox(models.Model):
    id = models.CharField(primary_key=True, max_length=32, default=new_sandbox_id, editable=False)
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="sandboxes")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    name = models.CharField(max_length=100, blank=True)
    provider = models.CharField(max_length=32)
    preset = models.ForeignKey(Preset, on_delete=models.PROTECT, related_name="sandboxes")
    snapshot = models.ForeignKey(
        Snapshot, null=True, blank=True, on_delete=models.PROTECT, related_name="sandboxes"
    )
    # Copied from the preset at creation: quotas count what was granted, even if the
    # preset is edited later.
    vcpus = models.PositiveIntegerField()
    memory_mb = models.PositiveIntegerField()
    disk_gb = models.PositiveIntegerField()

    provider_ref = models.CharField(max_length=255, blank=True)
    node = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    status_changed_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)

    metadata = models.JSONField(default=dict, blank=True)
    #: Exposed HTTP services: [{"name", "port", "url"}], as the provider reported them.
    services = models.JSONField(default=list, blank=True)
    ttl_seconds = models.PositiveIntegerField(null=True, blank=True)
    ttl_action = models.CharField(max_length=8, choices=TtlAction.choices, default=TtlAction.STOP)
    expires_at = models.DateTimeField(null=True, blank=True)
    idle_timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    #: Deleted by the sweep after this long stopped, paused or hibernated (null: never).
    delete_parked_after_seconds = models.PositiveIntegerField(null=True, blank=True)
    wake_on_http = models.BooleanField(default=False)
    wake_on_ssh = models.BooleanField(default=False)
    last_activity_at = models.DateTimeField(default=timezone.now)
    idempotency_key = models.CharField(max_length=200, blank=True)
    #: Outbound network override asked for at create (blank: the team's, else the preset's).
    network_policy = models.CharField(max_length=10, choices=NetworkMode.choices, blank=True)
    network_allow = models.JSONField(default=list, blank=True)
    #: The effective policy, computed once at create (services/network.py) and handed to
    #: the provider: ``{"mode": ..., "allow": [...], "source": "preset|team|sandbox"}``.
    network = models.JSONField(default=dict, blank=True)
    #: Plain environment variables of every exec and terminal process (asked for at create).
    env = models.JSONField(default=dict, blank=True)
    #: Names of team secrets handed to those processes as variables (values: TeamSecret).
    secret_names = models.JSONField(default=list, blank=True)
    #: The repository cloned at first start: {"url", "branch", "path", "credential"}
    #: (``services/workspaces.py``); empty: none.
    repo = models.JSONField(default=dict, blank=True)
    #: A script run once after the first start, as the sandbox's user, in the repository.
    setup = models.TextField(blank=True)
    #: Where the clone and setup are: "" (nothing to do), pending, running, succeeded, failed.
    setup_status = models.CharField(max_length=10, blank=True)
    setup_error = models.TextField(blank=True)
    #: When the running setup began (the sweep fails one whose worker died).
    setup_started_at = models.DateTimeField(null=True, blank=True)
    #: The team environment it was started from (its recipe was copied at create).
    environment = models.ForeignKey(
        "Environment", null=True, blank=True, on_delete=models.SET_NULL, related_name="sandboxes"
    )

    #: The operation a transitional status stands for (pausing may end paused or
    #: hibernated), so a worker or the reconciler knows what to carry out.
    operation = models.CharField(max_length=12, blank=True)
    # The worker carrying out the current operation holds the lease; another worker may
    # take the operation over only after the lease expired (the first one died).
    lease_token = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["team", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="sandbox_unique_idempotency_key",
            ),
        ]
        indexes = [
            # The list pages: a team's sandboxes, newest first, optionally by status.
            # Partial: deleted sandboxes pile up forever and no list shows them by default,
            # and the page's COUNT(*) becomes an index-only scan of live rows only.
            models.Index(
                fields=["team", "-created_at"],
                condition=~Q(status=Status.DELETED),
                name="sandbox_team_recent_idx",
            ),
            models.Index(fields=["team", "status"], name="sandbox_team_status_idx"),
            # The schedules: expired TTLs, idle sandboxes, stuck transitions.
            models.Index(fields=["status", "expires_at"], name="sandbox_ttl_idx"),
            models.Index(fields=["status", "last_activity_at"], name="sandbox_idle_idx"),
            models.Index(fields=["status", "status_changed_at"], name="sandbox_stuck_idx"),
            models.Index(fields=["provider", "provider_ref"], name="sandbox_provider_ref_idx"),
        ]

    def __str__(self) -> str:
        return self.name or self.id

    @property
    def is_transitional(self) -> bool:
        return is_transitional(self.status)


class ActorKind(models.TextChoices):
    USER = "user"
    TOKEN = "token"  # noqa: S105 - an actor kind, not a secret
    SCHEDULER = "scheduler"
    SYSTEM = "system"


class Outcome(models.TextChoices):
    REQUESTED = "requested"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REFUSED = "refused"


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise TypeError("audit events are append-only")

    def delete(self):
        raise TypeError("audit events are append-only")


class SandboxEvent(models.Model):
    """The audit trail: one row per action or state change. Never updated or deleted."""

    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )
    sandbox = models.ForeignKey(
        Sandbox, null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )
    snapshot = models.ForeignKey(
        Snapshot, null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )
    actor_kind = models.CharField(max_length=10, choices=ActorKind.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_token = models.ForeignKey(
        "ApiToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    #: Who, in words, kept even when the user or token is gone.
    actor_label = models.CharField(max_length=150)
    action = models.CharField(max_length=32)
    from_status = models.CharField(max_length=12, blank=True)
    to_status = models.CharField(max_length=12, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    message = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["sandbox", "created_at"], name="event_sandbox_idx"),
            models.Index(fields=["team", "-created_at"], name="event_team_recent_idx"),
            models.Index(fields=["action", "-created_at"], name="event_action_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.outcome} by {self.actor_label}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise TypeError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("audit events are append-only")


class ApiToken(models.Model):
    """A per-user, per-team API token. Only a SHA-256 digest and a short prefix are stored."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, db_index=True)
    digest = models.CharField(max_length=64, unique=True)
    can_write = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user} in {self.team})"

    @property
    def is_usable(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class Reservation(models.Model):
    """A key claimed by one worker, atomically across all of them (e.g. a PVE VMID).

    Providers ask for these through ``providers.base.ReservationStore`` (the service layer
    hands them ``sandboxes.services.reservations.DbReservationStore``); the unique
    constraint is what makes two simultaneous claims of one key impossible.
    """

    namespace = models.CharField(max_length=100)
    key = models.CharField(max_length=100)
    owner = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["namespace", "key"]
        constraints = [
            models.UniqueConstraint(fields=["namespace", "key"], name="reservation_unique_key")
        ]

    def __str__(self) -> str:
        return f"{self.namespace}:{self.key} ({self.owner})"


class ThrottleCounter(models.Model):
    """The API's request count of one team and scope in the current throttle window.

    Used when no Redis is configured. One row per (team, scope, period), reset when a new
    window starts, so the table never grows beyond a few rows per team. Written only by
    ``sandboxes.services.throttling`` (one upsert per request).
    """

    key = models.CharField(max_length=100, unique=True)
    window = models.BigIntegerField()
    count = models.PositiveIntegerField()

    def __str__(self) -> str:
        return f"{self.key}: {self.count} in window {self.window}"


class WorkerState(models.TextChoices):
    STARTING = "starting", "starting"
    RUNNING = "running", "running"
    BUSY = "busy", "busy: every worker process is on a task"
    RESTARTING = "restarting", "restarting a stalled cluster"
    STOPPED = "stopped", "stopped"


class Worker(models.Model):
    """One ``manage.py worker`` process: a supervisor and the django-q2 cluster it runs.

    Written only by ``sandboxes.services.workers``. ``beat_at`` moves when a heartbeat
    task addressed to this worker's current cluster has been taken from the queue, run
    and acknowledged by that cluster: proof that its whole pipeline works, not just that
    its processes exist.
    """

    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    seen_at = models.DateTimeField(default=timezone.now)
    beat_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=WorkerState.choices)
    #: The current cluster's generation; the cluster's processes carry it (lease tokens).
    generation = models.PositiveIntegerField(default=0)
    restarts = models.PositiveIntegerField(default=0)
    last_restart_at = models.DateTimeField(null=True, blank=True)
    last_restart_reason = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["host", "pid"]

    def __str__(self) -> str:
        return f"worker {self.host}:{self.pid} ({self.state})"


class LongCallSlot(models.Model):
    """One held slot for a long call (exec, ``?wait``, the service proxy, wake).

    Used when no Redis is configured. A team has ``SANDBOX_LONG_CALLS_PER_TEAM`` slot
    keys and the site ``SANDBOX_LONG_CALLS_TOTAL``; a call holds one of each while it
    runs. A row is a held slot until ``expires_at`` (seconds since the epoch): a process
    that dies holding one frees it then. Written only by
    ``sandboxes.services.long_calls``.
    """

    key = models.CharField(max_length=100, primary_key=True)
    holder = models.CharField(max_length=64)
    expires_at = models.FloatField()

    def __str__(self) -> str:
        return f"{self.key}: {self.holder} until {self.expires_at}"


class TeamSecret(models.Model):
    """A team's secret, encrypted at rest (``sandboxes.services.secrets``; MultiFernet with
    ``SANDBOX_SECRET_KEYS``). Write-only: nothing shows the value again; it reaches a
    sandbox only as an environment variable of its exec and terminal processes."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=64)
    ciphertext = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["team", "name"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="team_secret_name_unique")
        ]

    def __str__(self) -> str:
        return f"{self.team}:{self.name}"  # never the value


class Environment(models.Model):
    """A team's named recipe for sandboxes (``services/environments.py``): what to start
    from, the repository and its setup, variables and secrets, services, network and
    lifecycle. A sandbox started from it copies the recipe at create."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="environments")
    name = models.SlugField(max_length=64)
    description = models.CharField(max_length=200, blank=True)
    #: A snapshot id (a version, or the active version without ``_vN``); blank: the
    #: active version of ``preset`` on ``provider``.
    snapshot_id = models.CharField(max_length=128, blank=True)
    preset = models.ForeignKey(
        Preset, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    provider = models.CharField(max_length=32, blank=True)
    repo = models.JSONField(default=dict, blank=True)
    env = models.JSONField(default=dict, blank=True)
    secret_names = models.JSONField(default=list, blank=True)
    setup = models.TextField(blank=True)
    #: Services exposed once it runs: [{"name", "port"}].
    services = models.JSONField(default=list, blank=True)
    network_policy = models.CharField(max_length=10, choices=NetworkMode.choices, blank=True)
    network_allow = models.JSONField(default=list, blank=True)
    #: Lifecycle: null takes the team's default (0 is never), as on create.
    idle_timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    delete_parked_after_seconds = models.PositiveIntegerField(null=True, blank=True)
    ttl_seconds = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["team", "name"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="environment_name_unique")
        ]

    def __str__(self) -> str:
        return f"{self.team}:{self.name}"


class ImageBuildStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ImageBuild(models.Model):
    """Making a real root filesystem a snapshot version (``sandboxes.services.images``):
    a Debian build (mmdebstrap) or an OCI import (skopeo), registered as the next version
    of one or more presets on one provider (stored once). The worker runs it; its progress
    and the tail of its log (``SANDBOX_IMAGE_LOG_BYTES``) show on the versions page."""

    KIND_DEBIAN = "debian"
    KIND_OCI = "oci"

    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.CASCADE, related_name="image_builds"
    )
    provider = models.CharField(max_length=32)
    kind = models.CharField(max_length=10, default=KIND_DEBIAN)
    #: Preset ids to register the image for.
    presets = models.JSONField(default=list)
    suite = models.CharField(max_length=40, blank=True)
    packages = models.JSONField(default=list, blank=True)
    mirror = models.CharField(max_length=255, blank=True)
    #: The source of an OCI import (``oci-archive:PATH``, ``docker://...``).
    ref = models.CharField(max_length=255, blank=True)
    label = models.CharField(max_length=200, blank=True)
    activate = models.BooleanField(default=False)
    status = models.CharField(
        max_length=10, choices=ImageBuildStatus.choices, default=ImageBuildStatus.QUEUED
    )
    #: The current step, for people ("downloading packages", "storing layers").
    progress = models.CharField(max_length=200, blank=True)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    #: The snapshot ids registered, one per preset.
    snapshot_ids = models.JSONField(default=list, blank=True)
    bytes_written = models.BigIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["team", "created_at"], name="image_build_team_idx")]

    def __str__(self) -> str:
        return f"image build {self.pk} ({self.kind}, {self.provider})"

    @property
    def source(self) -> str:
        if self.kind == self.KIND_OCI:
            return self.ref
        return f"debian {self.suite}: {', '.join(self.packages)}"


class WarmPool(models.Model):
    """Started instances of one snapshot kept ready for creates (docs/pools.md).

    A create that matches (same provider and snapshot, the pool's team or a shared pool)
    takes a ready member instead of cloning. Members are ``PoolMember`` rows, not
    sandboxes: nothing that lists, counts or bills a team's sandboxes ever sees them.
    """

    provider = models.CharField(max_length=32)
    snapshot = models.ForeignKey(Snapshot, on_delete=models.PROTECT, related_name="pools")
    #: Blank: a shared pool, claimed by any team's create after the team's own pool.
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.CASCADE, related_name="pools"
    )
    #: Members kept (ready or being made) when nothing else limits it.
    target_size = models.PositiveIntegerField(default=2)
    #: Members there may ever be at once (the pool's budget), whatever the demand.
    maximum = models.PositiveIntegerField(default=4)
    #: Ready members older than this are replaced (fresh packages, no stale caches).
    max_age_seconds = models.PositiveIntegerField(default=24 * 3600)
    enabled = models.BooleanField(default=True)
    hits = models.PositiveBigIntegerField(default=0)
    misses = models.PositiveBigIntegerField(default=0)
    #: Since when fewer members than ``target_size`` were ready (None: full): the refill lag.
    short_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider", "snapshot_id", "team_id"]
        constraints = [
            models.UniqueConstraint(
                Coalesce(F("team"), Value(0)), F("snapshot"), name="one_pool_per_snapshot_scope"
            ),
            models.CheckConstraint(
                condition=Q(maximum__gte=F("target_size")), name="pool_maximum_at_least_target"
            ),
        ]

    def __str__(self) -> str:
        return f"pool of {self.snapshot_id} for {self.team or 'every team'}"


class MemberState(models.TextChoices):
    CREATING = "creating"
    READY = "ready"
    DELETING = "deleting"


class PoolMember(models.Model):
    """One instance of a pool. Its id is the sandbox id in the instance's metadata (with
    ``pool``) until a claim hands the instance to a sandbox and the row is deleted."""

    id = models.CharField(primary_key=True, max_length=32, default=new_sandbox_id, editable=False)
    #: Null once its pool was deleted: then it is only waiting to be removed.
    pool = models.ForeignKey(
        WarmPool, null=True, blank=True, on_delete=models.SET_NULL, related_name="members"
    )
    provider = models.CharField(max_length=32)
    snapshot = models.ForeignKey(Snapshot, on_delete=models.PROTECT, related_name="+")
    preset = models.ForeignKey(Preset, on_delete=models.PROTECT, related_name="+")
    #: The outbound policy it was made with (``services/network.as_record``): a create
    #: whose effective policy differs does not take it.
    network = models.JSONField(default=dict, blank=True)
    provider_ref = models.CharField(max_length=255, blank=True)
    state = models.CharField(
        max_length=10, choices=MemberState.choices, default=MemberState.CREATING
    )
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    ready_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["pool", "state", "ready_at"], name="pool_member_claim_idx")]

    def __str__(self) -> str:
        return f"{self.id} ({self.state})"


class SshKey(models.Model):
    """A public key a user registered for the SSH gateway (``services/ssh.py``): it lets
    them in to the sandboxes of the teams where they may write. Keys belong to the user,
    not to a team (as on GitHub); who may reach which sandbox is the membership's."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ssh_keys"
    )
    name = models.CharField(max_length=100)
    #: The key in OpenSSH's one-line form, without its comment ("ssh-ed25519 AAAA...").
    public_key = models.TextField()
    #: ``SHA256:...`` as ``ssh-keygen -l`` shows it; unique: one key, one owner.
    fingerprint = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["user", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"


class SshToken(models.Model):
    """A short-lived SSH login for one sandbox (``POST /api/v1/sandboxes/{id}/ssh``): the
    user name of ``ssh <token>@host``. Only its SHA-256 digest is stored; it acts as the
    user who asked for it (their role is checked again at each login)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ssh_tokens"
    )
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="ssh_tokens")
    sandbox = models.ForeignKey(Sandbox, on_delete=models.CASCADE, related_name="ssh_tokens")
    digest = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… for {self.sandbox_id}"
