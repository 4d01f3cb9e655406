"""``/api/v1/secrets``: the team's secrets. Write-only: names and dates are listed, values
are set and replaced but never shown again."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from sandboxes import selectors
from sandboxes.api import serializers as s
from sandboxes.api.errors import ApiError
from sandboxes.api.views.base import TeamView
from sandboxes.models import TeamSecret
from sandboxes.services import team_secrets


class SecretView(TeamView):
    serializer_class = s.SecretSerializer

    def get_queryset(self):
        if self.schema_only:
            return TeamSecret.objects.none()
        return selectors.team_secrets(team=self.team)


class SecretListView(mixins.ListModelMixin, SecretView):
    @extend_schema(operation_id="secrets_list", summary="The team's secrets (names, never values)")
    def get(self, request: Request) -> Response:
        return self.list(request)


class SecretDetailView(SecretView):
    @extend_schema(
        operation_id="secrets_set",
        summary="Set or replace a secret; its value is never shown again",
        request=s.SecretWriteSerializer,
        responses={200: s.SecretSerializer, 201: s.SecretSerializer},
    )
    def put(self, request: Request, name: str) -> Response:
        data = self.validated(s.SecretWriteSerializer)
        secret, created = team_secrets.set_secret(
            team=self.team, actor=self.actor, name=name, value=data["value"]
        )
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(s.SecretSerializer(secret).data, status=code)

    @extend_schema(
        operation_id="secrets_delete",
        summary="Delete a secret",
        request=None,
        responses={204: None},
    )
    def delete(self, request: Request, name: str) -> Response:
        if not self.get_queryset().filter(name=name).exists():
            raise ApiError(404, "not_found", f"your team has no secret {name}")
        team_secrets.delete_secret(team=self.team, actor=self.actor, name=name)
        return Response(status=status.HTTP_204_NO_CONTENT)
