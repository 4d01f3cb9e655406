"""The current team of a signed-in (session) user: the one place that decides it.

The session key ``"current_team"`` holds the team's slug. The dashboard's team switcher
sets it; API calls made with session authentication read the same key. When it is unset
or names a team the user is no longer in, the user's first team by slug is used.
Only memberships count: an operator (superuser) sees teams in the admin, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest

from sandboxes import selectors
from sandboxes.models import Membership, Role, Team

SESSION_KEY = "current_team"
_CACHE_ATTR = "_sandboxes_team_context"


@dataclass(frozen=True)
class TeamContext:
    """The current team, the user's role in it, and every team the user may switch to."""

    membership: Membership
    memberships: tuple[Membership, ...]

    @property
    def team(self) -> Team:
        return self.membership.team

    @property
    def role(self) -> str:
        return self.membership.role

    @property
    def can_write(self) -> bool:
        return self.membership.can_write

    @property
    def can_manage(self) -> bool:
        return self.membership.can_manage

    @property
    def read_only_reason(self) -> str:
        return (
            "" if self.can_write else f"your role in {self.team.slug} ({Role.VIEWER}) is read-only"
        )

    @property
    def teams(self) -> list[Team]:
        return [m.team for m in self.memberships]


def team_context(request: HttpRequest) -> TeamContext | None:
    """The current team context of ``request`` (None: not signed in or in no team).

    One query (memberships with their teams), computed once per request.
    """
    if hasattr(request, _CACHE_ATTR):
        return getattr(request, _CACHE_ATTR)
    context = None
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        memberships = tuple(selectors.memberships_for_user(user=user))
        if memberships:
            wanted = request.session.get(SESSION_KEY)
            chosen = next((m for m in memberships if m.team.slug == wanted), memberships[0])
            if wanted != chosen.team.slug:
                request.session[SESSION_KEY] = chosen.team.slug
            context = TeamContext(membership=chosen, memberships=memberships)
    setattr(request, _CACHE_ATTR, context)
    return context


def current_team(request: HttpRequest) -> Team | None:
    context = team_context(request)
    return context.team if context else None


def switch_team(request: HttpRequest, slug: str) -> Team:
    """Make ``slug`` the current team; ``Team.DoesNotExist`` unless the user is a member."""
    membership = None
    if selectors.storable(slug):
        membership = (
            selectors.memberships_for_user(user=request.user).filter(team__slug=slug).first()
        )
    if membership is None:
        raise Team.DoesNotExist(slug)
    request.session[SESSION_KEY] = membership.team.slug
    if hasattr(request, _CACHE_ATTR):
        delattr(request, _CACHE_ATTR)
    return membership.team
