"""Team quotas: concurrent sandboxes, vCPUs and memory, checked under a row lock."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, Sum

from sandboxes.models import Sandbox, Team
from sandboxes.services.errors import QuotaExceeded
from sandboxes.states import LIVE


@dataclass(frozen=True)
class Usage:
    sandboxes: int
    vcpus: int
    memory_mb: int


def team_limits(team: Team) -> dict[str, int]:
    """The team's limits (0 = unlimited), falling back to the site defaults."""

    def pick(own: int | None, default: int) -> int:
        return default if own is None else own

    return {
        "max_sandboxes": pick(team.max_sandboxes, settings.SANDBOX_TEAM_MAX_SANDBOXES),
        "max_vcpus": pick(team.max_vcpus, settings.SANDBOX_TEAM_MAX_VCPUS),
        "max_memory_mb": pick(team.max_memory_mb, settings.SANDBOX_TEAM_MAX_MEMORY_MB),
    }


def team_usage(team: Team) -> Usage:
    totals = Sandbox.objects.filter(team=team, status__in=LIVE).aggregate(
        sandboxes=Count("pk"), vcpus=Sum("vcpus"), memory_mb=Sum("memory_mb")
    )
    return Usage(totals["sandboxes"], totals["vcpus"] or 0, totals["memory_mb"] or 0)


def check_quota(*, team: Team, vcpus: int, memory_mb: int) -> None:
    """Raise QuotaExceeded if one more sandbox of this size does not fit.

    The caller must hold the team row lock (``select_for_update``) inside the transaction
    that inserts the sandbox, so two creates cannot both see room for one.
    """
    usage = team_usage(team)
    for quota, used, requested in (
        ("max_sandboxes", usage.sandboxes, 1),
        ("max_vcpus", usage.vcpus, vcpus),
        ("max_memory_mb", usage.memory_mb, memory_mb),
    ):
        limit = team_limits(team)[quota]
        if limit and used + requested > limit:
            raise QuotaExceeded(quota, limit=limit, used=used, requested=requested)
