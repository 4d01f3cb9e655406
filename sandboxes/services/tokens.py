"""API tokens: hashed at rest, shown once, scoped to one user in one team.

A token is ``sbt_`` followed by 40 random URL-safe characters (240 bits). Only its SHA-256
digest and its first 12 characters (for recognising it in lists) are stored; a stolen
database therefore yields no usable token. Lookups go by digest and the final comparison
is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models.expressions import RawSQL
from django.utils import timezone

from sandboxes.models import ApiToken, Membership, Outcome, Role, Team
from sandboxes.services.actors import Actor
from sandboxes.services.errors import InvalidInput, NotAllowed
from sandboxes.services.events import record_event

TOKEN_PREFIX = "sbt_"  # noqa: S105 - the public marker, not a secret
PREFIX_LENGTH = 12
LAST_USED_GRANULARITY = timedelta(minutes=1)


#: The token user's role in the token's team, fetched with the token: a token stops
#: working when its user leaves the team, and the Actor needs the role for every check.
#: Raw SQL because this runs on every API request and the ORM takes longer to build the
#: equivalent correlated Subquery than the database takes to run it.
MEMBER_ROLE = RawSQL(
    "SELECT m.role FROM sandboxes_membership m"
    " WHERE m.user_id = sandboxes_apitoken.user_id AND m.team_id = sandboxes_apitoken.team_id",
    (),
)


def digest_of(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create_api_token(
    *,
    user,
    team: Team,
    actor: Actor,
    name: str = "",
    can_write: bool = True,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Make a token for ``user`` in ``team``; returns the row and the secret (shown once)."""
    if actor.user != user and not actor.is_automation and not actor.can_manage(team):
        raise NotAllowed("you can only create tokens for yourself")
    if actor.token is not None and not actor.token.can_write:
        raise NotAllowed("a read-only token cannot create tokens")
    role = Membership.objects.filter(user=user, team=team).values_list("role", flat=True).first()
    if role is None:
        raise NotAllowed(f"{user.get_username()} is not a member of {team.slug}")
    # A viewer's token is read-only for good: promoting the viewer later must not silently
    # turn old tokens into writing ones.
    can_write = can_write and role != Role.VIEWER
    if not isinstance(name, str) or len(name) > 100:
        raise InvalidInput("name: at most 100 characters", fields={"name": ["100 at most"]})
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput(
            "expires_at must be in the future", fields={"expires_at": ["in the past"]}
        )
    raw = TOKEN_PREFIX + secrets.token_urlsafe(30)
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            team=team,
            name=name,
            prefix=raw[:PREFIX_LENGTH],
            digest=digest_of(raw),
            can_write=can_write,
            expires_at=expires_at,
        )
        record_event(
            actor=actor,
            action="create_token",
            outcome=Outcome.SUCCEEDED,
            team=team,
            data={"prefix": token.prefix, "user": user.get_username(), "can_write": can_write},
        )
    return token, raw


def authenticate_token(raw: str) -> ApiToken | None:
    """The usable token for a raw secret, or None (unknown, revoked or expired)."""
    if not isinstance(raw, str) or not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    digest = digest_of(raw)
    try:
        token = (
            ApiToken.objects.select_related("user", "team")
            .annotate(member_role=MEMBER_ROLE)
            .get(digest=digest)
        )
    except ApiToken.DoesNotExist:
        return None
    if not hmac.compare_digest(token.digest, digest):
        return None
    if not token.is_usable or not token.user.is_active or token.member_role is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or token.last_used_at < now - LAST_USED_GRANULARITY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def revoke_api_token(*, token: ApiToken, actor: Actor) -> ApiToken:
    if actor.user != token.user and not actor.can_manage(token.team):
        raise NotAllowed("you can only revoke your own tokens")
    if token.revoked_at is None:
        with transaction.atomic():
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            record_event(
                actor=actor,
                action="revoke_token",
                outcome=Outcome.SUCCEEDED,
                team=token.team,
                data={"prefix": token.prefix},
            )
    return token
