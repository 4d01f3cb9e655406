"""``/api/v1/ssh-keys``: your SSH public keys for the gateway (docs/ssh.md).

Keys are the user's, whatever team the token is of: which sandboxes a key opens is the
user's role in each team (writers only)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from sandboxes import selectors
from sandboxes.api import serializers as s
from sandboxes.api.errors import ApiError
from sandboxes.api.views.base import TeamView
from sandboxes.models import SshKey
from sandboxes.services import ssh as ssh_service

MAX_ID = 2**63 - 1


class SshKeyView(TeamView):
    serializer_class = s.SshKeySerializer
    #: A viewer may keep keys (they open nothing where the user cannot write).
    viewers_may_write = True

    def get_queryset(self):
        if self.schema_only:
            return SshKey.objects.none()
        return selectors.ssh_keys(user=self.request.user)


class SshKeyListView(mixins.ListModelMixin, SshKeyView):
    @extend_schema(operation_id="ssh_keys_list", summary="Your SSH public keys")
    def get(self, request: Request) -> Response:
        return self.list(request)

    @extend_schema(
        operation_id="ssh_keys_add",
        summary="Register an SSH public key for the gateway",
        request=s.SshKeySerializer,
        responses={201: s.SshKeySerializer},
    )
    def post(self, request: Request) -> Response:
        data = self.validated(s.SshKeySerializer)
        key = ssh_service.add_key(
            actor=self.actor, name=data.get("name", ""), public_key=data["public_key"]
        )
        return Response(s.SshKeySerializer(key).data, status=status.HTTP_201_CREATED)


class SshKeyDetailView(SshKeyView):
    @extend_schema(
        operation_id="ssh_keys_delete",
        summary="Remove one of your SSH keys",
        request=None,
        responses={204: None},
    )
    def delete(self, request: Request, key_id: int) -> Response:
        if not 0 < key_id <= MAX_ID or not self.get_queryset().filter(pk=key_id).exists():
            raise ApiError(404, "not_found", "you have no such SSH key")
        ssh_service.delete_key(actor=self.actor, key_id=key_id)
        return Response(status=status.HTTP_204_NO_CONTENT)
