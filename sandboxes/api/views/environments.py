"""``/api/v1/environments``: the team's environments (named recipes for sandboxes) and
starting a sandbox from one in one call."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from sandboxes import selectors
from sandboxes.api import serializers as s
from sandboxes.api.errors import ApiError
from sandboxes.api.views.base import TeamView
from sandboxes.api.views.sandboxes import IDEMPOTENCY_HEADER, accepted
from sandboxes.models import Environment
from sandboxes.services import environments


class EnvironmentView(TeamView):
    serializer_class = s.EnvironmentSerializer

    def get_queryset(self):
        if self.schema_only:
            return Environment.objects.none()
        return selectors.environments(team=self.team)

    def get_environment(self) -> Environment:
        try:
            return selectors.get_environment(team=self.team, ref=self.kwargs["environment_id"])
        except Environment.DoesNotExist:
            raise ApiError(404, "not_found", "no such environment in your team") from None


class EnvironmentListView(mixins.ListModelMixin, EnvironmentView):
    @extend_schema(operation_id="environments_list", summary="The team's environments")
    def get(self, request: Request) -> Response:
        return self.list(request)

    @extend_schema(
        operation_id="environments_create",
        summary="Create an environment (name required)",
        request=s.EnvironmentWriteSerializer,
        responses={201: s.EnvironmentSerializer},
    )
    def post(self, request: Request) -> Response:
        data = dict(self.validated(s.EnvironmentWriteSerializer))
        if "name" not in data:
            raise ApiError(400, "invalid", "name: required", fields={"name": ["required"]})
        environment = environments.create_environment(team=self.team, actor=self.actor, data=data)
        return Response(s.EnvironmentSerializer(environment).data, status=status.HTTP_201_CREATED)


class EnvironmentDetailView(EnvironmentView):
    @extend_schema(operation_id="environments_get", summary="One environment (by id or name)")
    def get(self, request: Request, environment_id: str) -> Response:
        return Response(s.EnvironmentSerializer(self.get_environment()).data)

    @extend_schema(
        operation_id="environments_update",
        summary="Change the fields given",
        request=s.EnvironmentWriteSerializer,
        responses={200: s.EnvironmentSerializer},
    )
    def patch(self, request: Request, environment_id: str) -> Response:
        environment = self.get_environment()
        changes = dict(self.validated(s.EnvironmentWriteSerializer))
        environment = environments.update_environment(
            environment=environment, actor=self.actor, changes=changes
        )
        return Response(s.EnvironmentSerializer(environment).data)

    @extend_schema(
        operation_id="environments_delete",
        summary="Delete an environment (its sandboxes keep running)",
        request=None,
        responses={204: None},
    )
    def delete(self, request: Request, environment_id: str) -> Response:
        environments.delete_environment(environment=self.get_environment(), actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class EnvironmentStartView(EnvironmentView):
    serializer_class = s.SandboxSerializer
    throttle_kind = "create"

    @extend_schema(
        operation_id="environments_start",
        summary="Start a sandbox from the environment",
        request=s.EnvironmentStartSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={202: s.SandboxSerializer, 409: s.ErrorSerializer},
    )
    def post(self, request: Request, environment_id: str) -> Response:
        environment = self.get_environment()
        data = dict(self.validated(s.EnvironmentStartSerializer))
        name = data.pop("name", "")
        sandbox = environments.start_environment(
            environment=environment,
            actor=self.actor,
            name=name,
            idempotency_key=request.headers.get("Idempotency-Key", ""),
            overrides=data,
        )
        return accepted(sandbox)
