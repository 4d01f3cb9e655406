"""Team quotas: concurrent sandboxes, vCPUs and memory, checked under a row lock."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, Sum

from providers.base import Capacity
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


def check_provider_capacity(
    *, team: Team, provider: str, capacity: Capacity | None, memory_mb: int
) -> None:
    """Raise QuotaExceeded (quota ``provider_memory_mb``) when the provider cannot hold it.

    Refused: a preset bigger than everything the provider can give all sandboxes together,
    and a create that the team's memory quota allows although the provider's total cannot
    hold the team's live sandboxes on it plus this one (a quota set above what the host
    has is a promise nobody can keep). ``capacity`` None (the provider does not say):
    nothing is refused. Call it under the team row lock, like ``check_quota``.
    """
    if capacity is None:
        return
    total = capacity.memory_mb_total
    setting = f" ({capacity.memory_setting})" if capacity.memory_setting else ""
    if memory_mb > total:
        raise QuotaExceeded(
            "provider_memory_mb",
            limit=total,
            used=capacity.memory_mb_used,
            requested=memory_mb,
            message=f"this preset needs {memory_mb} MB of memory but {provider} can give all "
            f"its sandboxes together only {total} MB{setting}: choose a smaller preset",
        )
    team_quota = team_limits(team)["max_memory_mb"]
    if team_quota == 0 or team_quota > total:
        used = (
            Sandbox.objects.filter(team=team, provider=provider, status__in=LIVE).aggregate(
                used=Sum("memory_mb")
            )["used"]
            or 0
        )
        if used + memory_mb > total:
            quota = "unlimited" if team_quota == 0 else f"{team_quota} MB"
            raise QuotaExceeded(
                "provider_memory_mb",
                limit=total,
                used=used,
                requested=memory_mb,
                message=f"the team's memory quota (max_memory_mb: {quota}) is more than "
                f"{provider} can hold: {total} MB for all sandboxes together{setting}; the "
                f"team's live sandboxes there have {used} MB and this needs {memory_mb} MB "
                "more: stop or delete one first",
            )
