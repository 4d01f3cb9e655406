"""Who is acting: a signed-in user, an API token, the scheduler or the system itself."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from sandboxes.models import ActorKind, Membership, Role, Team, role_can_manage, role_can_write
from sandboxes.services.errors import NotAllowed

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from sandboxes.models import ApiToken


@dataclass(frozen=True)
class Actor:
    kind: ActorKind
    user: AbstractBaseUser | None = None
    token: ApiToken | None = None

    @classmethod
    def for_user(cls, user: AbstractBaseUser) -> Actor:
        return cls(ActorKind.USER, user=user)

    @classmethod
    def for_token(cls, token: ApiToken) -> Actor:
        actor = cls(ActorKind.TOKEN, user=token.user, token=token)
        role = getattr(token, "member_role", None)  # annotated by authenticate_token
        if role is not None:
            actor.__dict__["_roles"] = {token.team_id: role}  # a token acts in its team only
        return actor

    @classmethod
    def scheduler(cls) -> Actor:
        return cls(ActorKind.SCHEDULER)

    @classmethod
    def system(cls) -> Actor:
        return cls(ActorKind.SYSTEM)

    @property
    def label(self) -> str:
        if self.kind == ActorKind.TOKEN and self.token is not None:
            return f"{self.user.get_username()} (token {self.token.prefix})"
        if self.user is not None:
            return self.user.get_username()
        return str(self.kind)

    @property
    def is_automation(self) -> bool:
        """The scheduler and the system act on every team's sandboxes."""
        return self.kind in (ActorKind.SCHEDULER, ActorKind.SYSTEM)

    @cached_property
    def _roles(self) -> dict[int, str]:
        if self.user is None:
            return {}
        return dict(Membership.objects.filter(user=self.user).values_list("team_id", "role"))

    def role_in(self, team: Team) -> str | None:
        if self.is_automation:
            return Role.OWNER
        if (
            self.kind == ActorKind.TOKEN
            and self.token is not None
            and self.token.team_id != team.pk
        ):
            return None
        role = self._roles.get(team.pk)
        if role is None and self.user is not None and self.user.is_superuser:
            return Role.OWNER  # operators act through the admin on every team
        return role

    def can_read(self, team: Team) -> bool:
        return self.role_in(team) is not None

    def can_write(self, team: Team) -> bool:
        return role_can_write(self.role_in(team), token=self.token)

    def require_write(self, team: Team, what: str) -> None:
        """Raise NotAllowed ("your role in this team cannot <what>") unless this actor may write."""
        if not self.can_write(team):
            raise NotAllowed(f"your role in this team cannot {what}")

    def can_manage(self, team: Team) -> bool:
        return role_can_manage(self.role_in(team), token=self.token)
