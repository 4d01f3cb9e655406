"""Teams and their members."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction

from sandboxes.models import Membership, Outcome, Role, Team
from sandboxes.services.actors import Actor
from sandboxes.services.errors import Conflict, InvalidInput, NotAllowed
from sandboxes.services.events import record_event
from sandboxes.services.network import parse_policy

SLUG_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?")


def validate_slug(slug: str) -> None:
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        raise InvalidInput(
            "slug: 1-50 lowercase letters, digits and dashes",
            fields={"slug": ["1-50 lowercase letters, digits and dashes"]},
        )


def create_team(*, slug: str, name: str = "", actor: Actor, owner=None) -> Team:
    """Create a team; ``owner`` (a user) becomes its first owner."""
    if not actor.is_automation and not (actor.user and actor.user.is_superuser):
        raise NotAllowed("only an operator can create teams")
    validate_slug(slug)
    if Team.objects.filter(slug=slug).exists():
        raise InvalidInput(f"team {slug!r} already exists", fields={"slug": ["already exists"]})
    with transaction.atomic():
        team = Team.objects.create(slug=slug, name=name or slug)
        record_event(actor=actor, action="create_team", outcome=Outcome.SUCCEEDED, team=team)
        if owner is not None:
            add_member(team=team, user=owner, role=Role.OWNER, actor=actor)
    return team


#: What an operator may change on a team (the slug names it in URLs and provider metadata).
TEAM_SETTINGS = (
    "name",
    "max_sandboxes",
    "max_vcpus",
    "max_memory_mb",
    "network_policy",
    "network_allow",
    "idle_timeout_seconds",
    "delete_parked_after_seconds",
)


def update_team(*, team: Team, actor: Actor, changes: dict[str, Any]) -> Team:
    """Change a team's name or quotas; one ``update_team`` event lists what changed."""
    if not actor.is_automation and not (actor.user and actor.user.is_superuser):
        raise NotAllowed("only an operator can change a team's name and quotas")
    unknown = set(changes) - set(TEAM_SETTINGS)
    if unknown:
        raise InvalidInput(f"cannot change {', '.join(sorted(unknown))} of a team")
    if "network_policy" in changes or "network_allow" in changes:
        mode = changes.get("network_policy", team.network_policy) or None
        allow = changes.get("network_allow", team.network_allow) or []
        if mode is None:
            changes = {**changes, "network_policy": "", "network_allow": []}
        else:
            policy = parse_policy(mode, allow)
            changes = {**changes, "network_policy": mode, "network_allow": list(policy.allow)}
    with transaction.atomic():
        locked = Team.objects.select_for_update().get(pk=team.pk)
        diff = {
            name: [getattr(locked, name), value]
            for name, value in changes.items()
            if getattr(locked, name) != value
        }
        if diff:
            for name, (_, value) in diff.items():
                setattr(locked, name, value)
            locked.save(update_fields=list(diff))
            record_event(
                actor=actor,
                action="update_team",
                outcome=Outcome.SUCCEEDED,
                team=locked,
                data={"changes": diff},
            )
    return locked


def check_role_change(*, team: Team, user, role: str | None) -> None:
    """Raise if giving ``user`` ``role`` in ``team`` (None: removing them) breaks a rule: an
    unknown role, or a team left without an owner (nobody could manage it but an operator).

    Forms call it to show the refusal before anything is written; the services call it
    again under the team's row lock, so two concurrent demotions cannot both pass.
    """
    if role is not None and role not in Role.values:
        raise InvalidInput(
            f"role must be one of {', '.join(Role.values)}", fields={"role": ["unknown role"]}
        )
    if role == Role.OWNER or user is None or getattr(user, "pk", None) is None:
        return
    owners = Membership.objects.filter(team=team, role=Role.OWNER)
    if owners.filter(user=user).exists() and not owners.exclude(user=user).exists():
        raise Conflict(f"{user.get_username()} is the last owner of {team.slug}; add another first")


def _require_manager(actor: Actor, team: Team, what: str) -> None:
    if not actor.can_manage(team):
        raise NotAllowed(f"only the team's owners and admins can {what}")


def add_member(*, team: Team, user, role: str = Role.MEMBER, actor: Actor) -> Membership:
    """Add ``user`` to ``team`` with ``role`` (or change the role of a member)."""
    if role not in Role.values:
        raise InvalidInput(f"role must be one of {', '.join(Role.values)}")
    _require_manager(actor, team, "add members")
    with transaction.atomic():
        Team.objects.select_for_update().filter(pk=team.pk).first()
        check_role_change(team=team, user=user, role=role)
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


def change_member_role(*, membership: Membership, role: str, actor: Actor) -> Membership:
    """Give a member another role; a ``change_role`` event records the old and the new."""
    team = membership.team
    _require_manager(actor, team, "change roles")
    with transaction.atomic():
        Team.objects.select_for_update().filter(pk=team.pk).first()  # serialise owner checks
        locked = Membership.objects.select_related("user").get(pk=membership.pk)
        check_role_change(team=team, user=locked.user, role=role)
        previous = locked.role
        if previous != role:
            locked.role = role
            locked.save(update_fields=["role"])
            record_event(
                actor=actor,
                action="change_role",
                outcome=Outcome.SUCCEEDED,
                team=team,
                data={"user": locked.user.get_username(), "from": previous, "to": role},
            )
    return locked


def remove_member(*, membership: Membership, actor: Actor) -> None:
    """Take a member out of the team (their tokens in it stop working at once)."""
    team = membership.team
    _require_manager(actor, team, "remove members")
    with transaction.atomic():
        Team.objects.select_for_update().filter(pk=team.pk).first()
        locked = Membership.objects.select_related("user").filter(pk=membership.pk).first()
        if locked is None:
            return  # already gone
        check_role_change(team=team, user=locked.user, role=None)
        locked.delete()
        record_event(
            actor=actor,
            action="remove_member",
            outcome=Outcome.SUCCEEDED,
            team=team,
            data={"user": locked.user.get_username(), "role": locked.role},
        )


def get_or_create_user(username: str):
    """The user called ``username``; a new one has no password (it signs in via a token)."""
    user, created = get_user_model().objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user
