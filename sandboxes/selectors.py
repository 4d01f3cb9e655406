"""Every read, scoped to the caller's team. Views, the API and the admin read through here.

A sandbox or snapshot of another team is simply not found (``DoesNotExist``), never
"forbidden": callers cannot learn that it exists.
"""

from __future__ import annotations

from django.db.models import QuerySet

from providers.base import Capabilities, Health
from providers.errors import ProviderError
from sandboxes.models import Membership, Preset, Sandbox, SandboxEvent, Snapshot, Team
from sandboxes.services import backends
from sandboxes.services.snapshots import active_version, visible_to
from sandboxes.states import Status


def teams_for_user(user) -> QuerySet[Team]:
    return Team.objects.filter(memberships__user=user).order_by("slug")


def membership(user, team: Team) -> Membership | None:
    return Membership.objects.filter(user=user, team=team).first()


def sandboxes_for_team(team: Team, *, include_deleted: bool = False) -> QuerySet[Sandbox]:
    queryset = Sandbox.objects.filter(team=team)
    if not include_deleted:
        queryset = queryset.exclude(status=Status.DELETED)
    return queryset.select_related("preset", "snapshot").order_by("-created_at")


def get_sandbox(team: Team, sandbox_id: str) -> Sandbox:
    """The team's sandbox; ``Sandbox.DoesNotExist`` for anything else."""
    return Sandbox.objects.select_related("team", "preset", "snapshot").get(
        team=team, pk=sandbox_id
    )


def sandbox_events(sandbox: Sandbox) -> QuerySet[SandboxEvent]:
    return sandbox.events.order_by("created_at", "id")


def team_events(team: Team) -> QuerySet[SandboxEvent]:
    return SandboxEvent.objects.filter(team=team).select_related("sandbox", "snapshot")


def presets(*, enabled_only: bool = True) -> QuerySet[Preset]:
    queryset = Preset.objects.all()
    return queryset.filter(enabled=True) if enabled_only else queryset


def snapshots_for_team(team: Team, *, include_deleted: bool = False) -> QuerySet[Snapshot]:
    queryset = Snapshot.objects.filter(visible_to(team)).select_related(
        "preset", "parent", "created_by", "team"
    )
    if not include_deleted:
        queryset = queryset.exclude(status="deleted")
    return queryset.order_by("provider", "preset_id", "-version")


def get_snapshot(team: Team, snapshot_id: str) -> Snapshot:
    return snapshots_for_team(team, include_deleted=True).get(snapshot_id=snapshot_id)


def active_snapshot(team: Team, provider: str, preset_id: str) -> Snapshot | None:
    return active_version(team=team, provider=provider, preset_id=preset_id)


def enabled_providers() -> list[str]:
    return backends.enabled_provider_names()


def default_provider() -> str | None:
    return backends.default_provider()


def provider_capabilities(name: str) -> Capabilities:
    return backends.capabilities(name)


def provider_health(name: str) -> Health:
    try:
        return backends.get_provider(name).health()
    except ProviderError as exc:
        return Health(reachable=False, detail=exc.message)
