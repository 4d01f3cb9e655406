"""Every read, scoped to the caller's team. Views, the API and the admin read through here.

A sandbox or snapshot of another team is simply not found (``DoesNotExist``), never
"forbidden": callers cannot learn that it exists.

Every selector is keyword-only, as the services are
(``get_sandbox(team=..., sandbox_id=...)``); only ``storable`` (a check of text) and
``sandbox_rows``/``sandbox_row`` (shapes of what they are given) take their one argument
positionally.

Selectors read the database only. A read that must ask a provider (capabilities, health,
metrics) or parse what a provider defines (snapshot ids) is a service
(``services.backends``, ``services.interactive``, ``services.snapshots``); the import
contracts in pyproject.toml keep services and providers out of here.
"""

from __future__ import annotations

from django.db.models import (
    BooleanField,
    Count,
    ExpressionWrapper,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
)

from sandboxes.models import (
    ActiveSnapshot,
    ApiToken,
    Environment,
    ImageBuild,
    Membership,
    MemberState,
    Preset,
    Sandbox,
    SandboxEvent,
    Snapshot,
    SnapshotStatus,
    SshKey,
    Team,
    TeamSecret,
    WarmPool,
)
from sandboxes.states import TRANSITIONAL, Status


def storable(text: str) -> bool:
    """Whether ``text`` can be looked up at all: PostgreSQL refuses text with NUL in it."""
    return "\x00" not in text


def membership(*, user, team: Team) -> Membership | None:
    return Membership.objects.filter(user=user, team=team).first()


def memberships_for_user(*, user) -> QuerySet[Membership]:
    """The user's memberships with their teams, by team slug (one query)."""
    return Membership.objects.filter(user=user).select_related("team").order_by("team__slug")


def sandboxes_for_team(*, team: Team, include_deleted: bool = False) -> QuerySet[Sandbox]:
    queryset = Sandbox.objects.filter(team=team)
    if not include_deleted:
        queryset = queryset.exclude(status=Status.DELETED)
    # pk breaks ties between rows made in the same instant, so pages never overlap.
    return queryset.select_related("preset", "snapshot").order_by("-created_at", "-pk")


#: The columns a list page shows (the API's SandboxSerializer), besides the version's id
#: (``snapshot_version``); nothing else is loaded.
SANDBOX_LIST_COLUMNS = (
    "id",
    "name",
    "status",
    "operation",
    "provider",
    "preset_id",
    "vcpus",
    "memory_mb",
    "disk_gb",
    "metadata",
    "services",
    "ttl_seconds",
    "ttl_action",
    "expires_at",
    "idle_timeout_seconds",
    "delete_parked_after_seconds",
    "wake_on_http",
    "wake_on_ssh",
    "network",
    "env",
    "secret_names",
    "repo",
    "setup_status",
    "setup_error",
    "environment_id",
    "last_error",
    "created_at",
    "started_at",
    "status_changed_at",
    "last_activity_at",
    "deleted_at",
)


def sandbox_rows(sandboxes: QuerySet[Sandbox]) -> QuerySet[dict]:
    """``sandboxes`` (filtered, ordered, perhaps sliced to a page) as list-page rows.

    No model objects are built for a page. The version's id is a subquery rather than a
    join, so counting the sandboxes stays a plain (index-only) count of the team's rows.
    Beside the columns: ``snapshot_version`` (that id) and ``is_transitional``.
    """
    version = Snapshot.objects.filter(pk=OuterRef("snapshot_id")).order_by()
    return sandboxes.values(
        *SANDBOX_LIST_COLUMNS,
        snapshot_version=Subquery(version.values("snapshot_id")[:1]),
        is_transitional=ExpressionWrapper(Q(status__in=TRANSITIONAL), output_field=BooleanField()),
    )


def sandbox_row(sandbox: Sandbox) -> dict:
    """One sandbox as ``sandbox_rows`` gives its rows."""
    row = {name: getattr(sandbox, name) for name in SANDBOX_LIST_COLUMNS}
    row["snapshot_version"] = sandbox.snapshot.snapshot_id if sandbox.snapshot_id else None
    row["is_transitional"] = sandbox.is_transitional
    return row


def get_sandbox(*, team: Team, sandbox_id: str) -> Sandbox:
    """The team's sandbox; ``Sandbox.DoesNotExist`` for anything else."""
    if not storable(sandbox_id):
        raise Sandbox.DoesNotExist(sandbox_id)
    return Sandbox.objects.select_related("team", "preset", "snapshot").get(
        team=team, pk=sandbox_id
    )


#: What the service proxy reads of a sandbox on every request (anything else it may need on
#: a rarer path, a wake or a moved service, is loaded then).
PROXY_COLUMNS = (
    "id",
    "team_id",
    "status",
    "provider",
    "provider_ref",
    "services",
    "wake_on_http",
    "last_activity_at",
)


def proxy_target(*, team: Team, sandbox_id: str) -> Sandbox | None:
    """The team's sandbox as the service proxy needs it: one narrow query, no joins (the
    proxy's per-request cost); None for anything else."""
    if not storable(sandbox_id):
        return None
    sandbox = Sandbox.objects.only(*PROXY_COLUMNS).filter(team=team, pk=sandbox_id).first()
    if sandbox is not None:
        sandbox.team = team  # the caller's, already loaded
    return sandbox


def preview_target(*, sandbox_id: str) -> Sandbox | None:
    """A live sandbox by id with its team, whichever team it is, as a preview host needs
    it (``services/previews.authorize`` decides who may see it); None for anything else."""
    if not storable(sandbox_id):
        return None
    return (
        Sandbox.objects.select_related("team")
        .only(*PROXY_COLUMNS, "team__id", "team__name")
        .filter(pk=sandbox_id)
        .exclude(status=Status.DELETED)
        .first()
    )


def sandbox_status(*, team: Team, sandbox_id: str) -> str | None:
    """Only the status column (cheap enough to poll); None when the team has no such sandbox."""
    if not storable(sandbox_id):
        return None
    return Sandbox.objects.filter(team=team, pk=sandbox_id).values_list("status", flat=True).first()


def sandbox_status_counts(*, team: Team) -> dict[str, int]:
    """How many of the team's sandboxes are in each status (one grouped query)."""
    rows = Sandbox.objects.filter(team=team).values_list("status").annotate(n=Count("pk"))
    return dict(rows.order_by())


def sandboxes_using(*, team: Team, snapshot: Snapshot) -> QuerySet[Sandbox]:
    """The team's sandboxes (not deleted) started from ``snapshot``; never other teams'."""
    return sandboxes_for_team(team=team).filter(snapshot=snapshot)


def snapshot_usage(*, team: Team) -> dict[int, int]:
    """Snapshot pk -> how many of the team's live (not deleted) sandboxes use it."""
    rows = (
        Sandbox.objects.filter(team=team, snapshot__isnull=False)
        .exclude(status=Status.DELETED)
        .values_list("snapshot_id")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return dict(rows)


def active_pointers(*, team: Team) -> list[ActiveSnapshot]:
    """The team's own active-version pointers and the shared ones."""
    return list(
        ActiveSnapshot.objects.filter(Q(team=team) | Q(team__isnull=True)).select_related(
            "activated_by"
        )
    )


def sandbox_events(*, sandbox: Sandbox) -> QuerySet[SandboxEvent]:
    return sandbox.events.order_by("created_at", "id")


def team_events(*, team: Team) -> QuerySet[SandboxEvent]:
    return SandboxEvent.objects.filter(team=team).select_related("sandbox", "snapshot")


def presets(*, enabled_only: bool = True) -> QuerySet[Preset]:
    queryset = Preset.objects.all()
    return queryset.filter(enabled=True) if enabled_only else queryset


def visible_to(*, team: Team | None) -> Q:
    """Versions a team may see and start from: its own and the shared ones."""
    return Q(team__isnull=True) | Q(team=team) if team is not None else Q(team__isnull=True)


def active_snapshot(*, team: Team | None, provider: str, preset_id: str) -> Snapshot | None:
    """The team's own active snapshot of the pair, else the shared one."""
    pointers = ActiveSnapshot.objects.filter(provider=provider, preset_id=preset_id).filter(
        Q(team__isnull=True) | Q(team=team)
    )
    chosen = sorted(pointers.select_related("snapshot"), key=lambda p: p.team_id is None)
    return chosen[0].snapshot if chosen else None


def snapshots_for_team(*, team: Team, include_deleted: bool = False) -> QuerySet[Snapshot]:
    queryset = Snapshot.objects.filter(visible_to(team=team)).select_related(
        "preset", "parent", "created_by", "team"
    )
    if not include_deleted:
        queryset = queryset.exclude(status=SnapshotStatus.DELETED)
    return queryset.order_by("provider", "preset_id", "-version")


def image_builds_for_team(*, team: Team, limit: int = 10) -> list[ImageBuild]:
    """The latest image builds the team sees: its own and the shared ones."""
    queryset = ImageBuild.objects.filter(Q(team=team) | Q(team__isnull=True))
    return list(queryset.select_related("created_by").order_by("-created_at")[:limit])


def get_snapshot(*, team: Team, snapshot_id: str) -> Snapshot:
    if not storable(snapshot_id):
        raise Snapshot.DoesNotExist(snapshot_id)
    return snapshots_for_team(team=team, include_deleted=True).get(snapshot_id=snapshot_id)


def snapshot_by_provider_ref(*, team: Team, ref: str) -> Snapshot | None:
    """The newest ready version visible to ``team`` whose provider image is ``ref``."""
    return (
        Snapshot.objects.filter(
            visible_to(team=team), provider_ref=ref, status=SnapshotStatus.READY
        )
        .order_by("-version")
        .first()
    )


def active_snapshot_ids(*, team: Team) -> set[int]:
    """Primary keys of the versions ``team`` starts from (its own pointer, else the shared)."""
    chosen: dict[tuple[str, str], tuple[bool, int]] = {}
    pointers = ActiveSnapshot.objects.filter(Q(team=team) | Q(team__isnull=True)).values_list(
        "team_id", "provider", "preset_id", "snapshot_id"
    )
    for team_id, provider, preset_id, snapshot_pk in pointers:
        own = team_id is not None
        current = chosen.get((provider, preset_id))
        if current is None or (own and not current[0]):
            chosen[(provider, preset_id)] = (own, snapshot_pk)
    return {pk for _, pk in chosen.values()}


def api_tokens(*, team: Team, user=None) -> QuerySet[ApiToken]:
    """The team's tokens (only ``user``'s when given), newest first."""
    queryset = ApiToken.objects.filter(team=team).select_related("user")
    return queryset.filter(user=user) if user is not None else queryset


def get_api_token(*, team: Team, token_id: int, user=None) -> ApiToken:
    """The team's token (only ``user``'s when given); ``ApiToken.DoesNotExist`` otherwise."""
    queryset = ApiToken.objects.select_related("user", "team").filter(team=team)
    if user is not None:
        queryset = queryset.filter(user=user)
    return queryset.get(pk=token_id)


def team_secrets(*, team: Team) -> QuerySet[TeamSecret]:
    """The team's secrets, for listing: names and dates (the value is never read here)."""
    return TeamSecret.objects.filter(team=team).defer("ciphertext").order_by("name")


def environments(*, team: Team) -> QuerySet[Environment]:
    """The team's environments, by name."""
    return Environment.objects.filter(team=team).select_related("team").order_by("name")


def get_environment(*, team: Team, ref: str | int) -> Environment:
    """The team's environment by id or name; ``Environment.DoesNotExist`` otherwise."""
    queryset = environments(team=team)
    text = str(ref)
    if text.isdigit() and len(text) < 18:
        return queryset.get(pk=int(text))
    if not storable(text) or len(text) > 64:
        raise Environment.DoesNotExist(text)
    return queryset.get(name=text)


def pools_for_team(*, team: Team) -> QuerySet[WarmPool]:
    """The team's own warm pools and the shared ones its creates may take from, with
    their members counted by state (``ready``, ``creating``)."""
    return (
        WarmPool.objects.filter(Q(team=team) | Q(team__isnull=True))
        .select_related("snapshot", "team")
        .annotate(
            ready=Count("members", filter=Q(members__state=MemberState.READY)),
            creating=Count("members", filter=Q(members__state=MemberState.CREATING)),
        )
        .order_by("team_id", "provider", "snapshot__snapshot_id")
    )


def get_pool(*, team: Team, pool_id: int) -> WarmPool:
    """One of the team's pools (or a shared one); DoesNotExist otherwise."""
    return pools_for_team(team=team).get(pk=pool_id)


def ssh_keys(*, user) -> QuerySet[SshKey]:
    """The user's registered SSH public keys (keys are the user's, not a team's)."""
    return SshKey.objects.filter(user=user).order_by("name", "pk")
