"""Teams and their members."""

from __future__ import annotations

import re

from django.contrib.auth import get_user_model
from django.db import transaction

from sandboxes.models import Membership, Outcome, Role, Team
from sandboxes.services.actors import Actor
from sandboxes.services.errors import InvalidInput, NotAllowed
from sandboxes.services.events import record_event

SLUG_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?")


def create_team(*, slug: str, name: str = "", actor: Actor, owner=None) -> Team:
    """Create a team; ``owner`` (a user) becomes its first owner."""
    if not actor.is_automation and not (actor.user and actor.user.is_superuser):
        raise NotAllowed("only an operator can create teams")
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        raise InvalidInput(
            "slug: 1-50 lowercase letters, digits and dashes",
            fields={"slug": ["1-50 lowercase letters, digits and dashes"]},
        )
    if Team.objects.filter(slug=slug).exists():
        raise InvalidInput(f"team {slug!r} already exists", fields={"slug": ["already exists"]})
    with transaction.atomic():
        team = Team.objects.create(slug=slug, name=name or slug)
        record_event(actor=actor, action="create_team", outcome=Outcome.SUCCEEDED, team=team)
        if owner is not None:
            add_member(team=team, user=owner, role=Role.OWNER, actor=actor)
    return team


def add_member(*, team: Team, user, role: str = Role.MEMBER, actor: Actor) -> Membership:
    """Add ``user`` to ``team`` with ``role`` (or change the role of a member)."""
    if role not in Role.values:
        raise InvalidInput(f"role must be one of {', '.join(Role.values)}")
    if not actor.can_manage(team):
        raise NotAllowed("only the team's owners and admins can add members")
    with transaction.atomic():
        membership, _ = Membership.objects.update_or_create(
            user=user, team=team, defaults={"role": role}
        )
        record_event(
            actor=actor,
            action="add_member",
            outcome=Outcome.SUCCEEDED,
            team=team,
            data={"user": user.get_username(), "role": role},
        )
    return membership


def get_or_create_user(username: str):
    """The user called ``username``; a new one has no password (it signs in via a token)."""
    user, created = get_user_model().objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user
