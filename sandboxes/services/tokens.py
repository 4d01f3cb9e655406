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
from collections.abc import Callable
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.db import connection, models, transaction
from django.db.models.expressions import Col
from django.utils import timezone

from sandboxes.models import ApiToken, Membership, Outcome, Role, Team
from sandboxes.services.actors import Actor
from sandboxes.services.errors import InvalidInput, NotAllowed
from sandboxes.services.events import record_event

TOKEN_PREFIX = "sbt_"  # noqa: S105 - the public marker, not a secret
PREFIX_LENGTH = 12
LAST_USED_GRANULARITY = timedelta(minutes=1)


class _TokenLookup:
    """The token, its user, its team and the user's role in that team, in one query.

    This runs on every API request, and Django takes longer to compose the equivalent
    ``select_related`` query than the database takes to answer it, so the SQL is composed
    once from the models' fields. Values go through the same converters the ORM would
    apply, and the instances are built with ``Model.from_db``. The role comes with the
    token: a token stops working when its user leaves the team, and the Actor needs the
    role for every check.

    Why not the ORM: bench/bench_api.py (docs/benchmarks.md, api, PostgreSQL) times both,
    "token lookup ... the SQL services/tokens.py composes once" 0.42 ms against "the same
    lookup through the ORM" 1.58 ms (medians). With the ORM's lookup the list still met
    its 15 ms median, but its throughput under gunicorn fell to 0.35 to 0.45 of the bare
    view's (target: 0.5), against 0.6 to 0.82 with this one.
    """

    def __init__(self) -> None:
        quote = connection.ops.quote_name
        columns: list[str] = []
        self.converters: list[tuple[int, Col, list]] = []
        self.layout: list[tuple[type[models.Model], list[str], slice]] = []
        for model, alias in ((ApiToken, "t"), (get_user_model(), "u"), (Team, "tm")):
            start = len(columns)
            for field in model._meta.concrete_fields:
                col = field.get_col(alias)
                found = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
                if found:
                    self.converters.append((len(columns), col, found))
                columns.append(f"{alias}.{quote(field.column)}")
            names = [field.attname for field in model._meta.concrete_fields]
            self.layout.append((model, names, slice(start, len(columns))))
        self.sql = _lookup_sql(columns, quote)

    def __call__(self, digest: str) -> ApiToken | None:
        with connection.cursor() as cursor:
            cursor.execute(self.sql, [digest])
            row = cursor.fetchone()
        if row is None:
            return None
        row = list(row)
        for index, col, converters in self.converters:
            for converter in converters:
                row[index] = converter(row[index], col, connection)
        token, user, team = (
            model.from_db(connection.alias, names, row[span]) for model, names, span in self.layout
        )
        token.user, token.team = user, team
        token.member_role = row[-1]
        return token


def _lookup_sql(columns: list[str], quote: Callable[[str], str]) -> str:
    """Every name comes from the models; the digest is the only parameter."""
    user_model = get_user_model()

    def table(model) -> str:
        return quote(model._meta.db_table)

    def col(model, name: str) -> str:
        return quote(model._meta.get_field(name).column)

    def pk(model) -> str:
        return quote(model._meta.pk.column)

    user, team = col(ApiToken, "user"), col(ApiToken, "team")
    return (
        f"SELECT {', '.join(columns)}, m.{col(Membership, 'role')}"  # noqa: S608
        f" FROM {table(ApiToken)} t"
        f" JOIN {table(user_model)} u ON u.{pk(user_model)} = t.{user}"
        f" JOIN {table(Team)} tm ON tm.{pk(Team)} = t.{team}"
        f" LEFT JOIN {table(Membership)} m"
        f" ON m.{col(Membership, 'user')} = t.{user} AND m.{col(Membership, 'team')} = t.{team}"
        f" WHERE t.{col(ApiToken, 'digest')} = %s"
    )


_lookups: dict[str, _TokenLookup] = {}


def _lookup_token(digest: str) -> ApiToken | None:
    lookup = _lookups.get(connection.vendor)
    if lookup is None:
        lookup = _lookups[connection.vendor] = _TokenLookup()
    return lookup(digest)


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
    token = _lookup_token(digest)
    if token is None or not hmac.compare_digest(token.digest, digest):
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
