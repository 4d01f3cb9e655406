"""Who is calling and for which team: Bearer API tokens and (for the dashboard) sessions.

Both authentication classes answer ``(user, Principal)``, so ``request.auth`` is always a
``Principal`` on an authenticated API request: the team every read and write is scoped
to, the caller's role in it, and the ``Actor`` handed to the services.
"""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from sandboxes.api.errors import AuthenticationThrottled
from sandboxes.current_team import team_context
from sandboxes.models import ApiToken, Team, role_can_write
from sandboxes.services import auth_failures
from sandboxes.services.actors import Actor
from sandboxes.services.tokens import authenticate_token

INVALID_TOKEN = "invalid, expired or revoked API token"  # noqa: S105 - a message


@dataclass(frozen=True)
class Principal:
    team: Team
    role: str
    actor: Actor
    token: ApiToken | None = None

    @property
    def read_only_token(self) -> bool:
        return self.token is not None and not self.token.can_write

    @property
    def can_write(self) -> bool:
        return role_can_write(self.role, token=self.token)


def _principal(actor: Actor, team: Team, token: ApiToken | None = None) -> Principal | None:
    role = actor.role_in(team)
    return None if role is None else Principal(team=team, role=role, actor=actor, token=token)


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer sbt_...``: the token's user, in the token's team.

    Against guessing: every refused token counts against the caller's address
    (``sandboxes.services.auth_failures``); an address past ``SANDBOX_API_AUTH_FAILURE_RATE``
    is answered 429 with ``Retry-After`` before its token is even looked at.
    """

    keyword = "Bearer"

    def authenticate(self, request: Request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        address = auth_failures.client_ip(request._request)
        wait = auth_failures.blocked_for(address)
        if wait is not None:
            raise AuthenticationThrottled(wait)
        if len(header) != 2:
            raise self._failed(address, "the Authorization header is Bearer <token>")
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise self._failed(address, INVALID_TOKEN) from None
        token = authenticate_token(raw)
        if token is None:
            raise self._failed(address, INVALID_TOKEN)
        # A token outlives nothing: its user must still belong to its team.
        principal = _principal(Actor.for_token(token), token.team, token)
        if principal is None:
            raise self._failed(address, INVALID_TOKEN)
        return token.user, principal

    @staticmethod
    def _failed(address: str, message: str) -> exceptions.AuthenticationFailed:
        auth_failures.record_failure(address)
        return exceptions.AuthenticationFailed(message)

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


class TeamSessionAuthentication(authentication.SessionAuthentication):
    """The dashboard's own calls: the session's user in the session's current team
    (``sandboxes.current_team``: the session key ``current_team``, else the first team).

    Unsafe methods need the CSRF token, as everywhere on the site.
    """

    def authenticate(self, request: Request):
        result = super().authenticate(request)
        if result is None:
            return None
        user = result[0]
        context = team_context(request._request)  # the dashboard's own choice of team
        if context is None:
            raise exceptions.PermissionDenied("you are not a member of any team")
        return user, Principal(team=context.team, role=context.role, actor=Actor.for_user(user))
