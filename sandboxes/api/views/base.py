"""What every API view shares: the caller's team, actor and role, and object lookups."""

from __future__ import annotations

from typing import Any

from rest_framework.generics import GenericAPIView

from sandboxes import selectors
from sandboxes.api.auth import Principal
from sandboxes.api.errors import ApiError
from sandboxes.models import Sandbox, Team
from sandboxes.services.actors import Actor


class TeamView(GenericAPIView):
    """A view scoped to the caller's team. Another team's objects are simply not found."""

    @property
    def principal(self) -> Principal:
        return self.request.auth

    @property
    def team(self) -> Team:
        return self.principal.team

    @property
    def actor(self) -> Actor:
        return self.principal.actor

    @property
    def schema_only(self) -> bool:
        """drf-spectacular calls views without a request user while building the schema."""
        return getattr(self, "swagger_fake_view", False)

    def get_sandbox(self) -> Sandbox:
        try:
            return selectors.get_sandbox(team=self.team, sandbox_id=self.kwargs["sandbox_id"])
        except Sandbox.DoesNotExist:
            raise ApiError(404, "not_found", "no such sandbox in your team") from None

    def validated(self, serializer_class: type, data: Any = None) -> dict[str, Any]:
        serializer = serializer_class(data=self.request.data if data is None else data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data
