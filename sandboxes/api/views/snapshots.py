"""``/api/v1/snapshots`` (every version visible to your team) and ``/api/v1/presets``."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from sandboxes import selectors
from sandboxes.api import serializers as s
from sandboxes.api.errors import ApiError
from sandboxes.api.filtering import FilterBackend
from sandboxes.api.views.base import TeamView
from sandboxes.filters import SnapshotFilter
from sandboxes.models import Preset, Snapshot
from sandboxes.services import backends
from sandboxes.services.snapshots import (
    activate_snapshot,
    delete_snapshot,
    resolve_snapshot,
)

CONFLICT = OpenApiResponse(s.ErrorSerializer, description="In use, active, or not ready.")


class SnapshotListView(mixins.ListModelMixin, TeamView):
    serializer_class = s.SnapshotSerializer
    filter_backends = [FilterBackend]
    filterset_class = SnapshotFilter

    def get_queryset(self):
        if self.schema_only:
            return Snapshot.objects.none()
        wanted = self.request.query_params.getlist("status")
        return selectors.snapshots_for_team(team=self.team, include_deleted="deleted" in wanted)

    def get_serializer_context(self) -> dict:
        context = super().get_serializer_context()
        if not self.schema_only:
            context["active_ids"] = selectors.active_snapshot_ids(team=self.team)
        return context

    @extend_schema(
        operation_id="snapshots_list",
        summary="Every version your team can see: its own and the shared ones",
    )
    def get(self, request: Request) -> Response:
        return self.list(request)


class SnapshotView(TeamView):
    serializer_class = s.SnapshotSerializer

    def get_snapshot(self, *, resolve: bool = False) -> Snapshot:
        snapshot_id = self.kwargs["snapshot_id"]
        try:
            if resolve:
                return resolve_snapshot(team=self.team, snapshot_id=snapshot_id)
            return selectors.get_snapshot(team=self.team, snapshot_id=snapshot_id)
        except Snapshot.DoesNotExist:
            raise ApiError(404, "not_found", "no such snapshot version for your team") from None

    def body(self, snapshot: Snapshot) -> dict:
        context = {"active_ids": selectors.active_snapshot_ids(team=self.team)}
        return s.SnapshotSerializer(snapshot, context=context).data


class SnapshotDetailView(SnapshotView):
    @extend_schema(
        operation_id="snapshots_get",
        summary="One version; the id without _vN reads your team's active version",
    )
    def get(self, request: Request, snapshot_id: str) -> Response:
        return Response(self.body(self.get_snapshot(resolve=True)))

    @extend_schema(
        operation_id="snapshots_delete",
        summary="Delete a version nothing uses (answers 202 with it in deleting)",
        request=None,
        responses={202: s.SnapshotSerializer, 409: CONFLICT},
    )
    def delete(self, request: Request, snapshot_id: str) -> Response:
        snapshot = delete_snapshot(snapshot=self.get_snapshot(), actor=self.actor)
        return Response(self.body(snapshot), status=status.HTTP_202_ACCEPTED)


class SnapshotActivateView(SnapshotView):
    @extend_schema(
        operation_id="snapshots_activate",
        summary="Make this version the one your team starts from (owners and admins)",
        request=s.NoBodySerializer,
        responses={200: s.SnapshotSerializer, 409: CONFLICT},
    )
    def post(self, request: Request, snapshot_id: str) -> Response:
        snapshot = self.get_snapshot()
        self.validated(s.NoBodySerializer)
        activate_snapshot(snapshot=snapshot, actor=self.actor, team=self.team)
        snapshot.refresh_from_db()
        return Response(self.body(snapshot))


class PresetListView(mixins.ListModelMixin, TeamView):
    serializer_class = s.PresetSerializer

    def get_queryset(self):
        if self.schema_only:
            return Preset.objects.none()
        return selectors.presets()

    def get_serializer_context(self) -> dict:
        context = super().get_serializer_context()
        if not self.schema_only:
            context["enabled_providers"] = backends.enabled_provider_names()
        return context

    @extend_schema(
        operation_id="presets_list",
        summary="Machine sizes and the enabled providers each is offered on",
    )
    def get(self, request: Request) -> Response:
        return self.list(request)
