"""``/api/v1/pools``: the team's warm pools (and the shared ones its creates may use)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from sandboxes import selectors
from sandboxes.api import serializers as s
from sandboxes.api.errors import ApiError
from sandboxes.api.views.base import TeamView
from sandboxes.models import Snapshot, WarmPool
from sandboxes.services import pools


class PoolView(TeamView):
    serializer_class = s.PoolSerializer

    def get_queryset(self):
        if self.schema_only:
            return WarmPool.objects.none()
        return selectors.pools_for_team(team=self.team)

    def get_pool(self, pool_id: int) -> WarmPool:
        try:
            return selectors.get_pool(team=self.team, pool_id=pool_id)
        except WarmPool.DoesNotExist:
            raise ApiError(404, "not_found", "no such pool for your team") from None


class PoolListView(mixins.ListModelMixin, PoolView):
    @extend_schema(
        operation_id="pools_list",
        summary="The team's warm pools and the shared ones (size, ready, hit rate, lag)",
    )
    def get(self, request: Request) -> Response:
        return self.list(request)

    @extend_schema(
        operation_id="pools_create",
        summary="Create a pool of one snapshot for the team (owners and admins)",
        request=s.PoolWriteSerializer,
        responses={201: s.PoolSerializer},
    )
    def post(self, request: Request) -> Response:
        data = dict(self.validated(s.PoolWriteSerializer))
        snapshot_id = data.pop("snapshot_id", "")
        if not snapshot_id:
            raise ApiError(
                400, "invalid", "snapshot_id: required", fields={"snapshot_id": ["required"]}
            )
        try:
            snapshot = selectors.get_snapshot(team=self.team, snapshot_id=snapshot_id)
        except Snapshot.DoesNotExist:
            raise ApiError(
                400, "invalid", "no such snapshot", fields={"snapshot_id": ["not found"]}
            ) from None
        pool = pools.create_pool(actor=self.actor, team=self.team, snapshot=snapshot, **data)
        return Response(
            s.PoolSerializer(self.get_pool(pool.pk)).data, status=status.HTTP_201_CREATED
        )


class PoolDetailView(PoolView):
    @extend_schema(operation_id="pools_get", summary="One pool")
    def get(self, request: Request, pool_id: int) -> Response:
        return Response(s.PoolSerializer(self.get_pool(pool_id)).data)

    @extend_schema(
        operation_id="pools_update",
        summary="Change the size, maximum, age or enabled (owners and admins)",
        request=s.PoolWriteSerializer,
        responses={200: s.PoolSerializer},
    )
    def patch(self, request: Request, pool_id: int) -> Response:
        pool = self.get_pool(pool_id)
        changes = dict(self.validated(s.PoolWriteSerializer))
        if "snapshot_id" in changes:
            raise ApiError(
                400,
                "invalid",
                "snapshot_id cannot change: activate a snapshot and the pool follows",
                fields={"snapshot_id": ["read-only"]},
            )
        pools.update_pool(actor=self.actor, pool=pool, **changes)
        return Response(s.PoolSerializer(self.get_pool(pool_id)).data)

    @extend_schema(
        operation_id="pools_delete",
        summary="Delete a pool (its members are removed in the background)",
        request=None,
        responses={204: None},
    )
    def delete(self, request: Request, pool_id: int) -> Response:
        pools.delete_pool(actor=self.actor, pool=self.get_pool(pool_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
