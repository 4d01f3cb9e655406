"""``/api/v1/tokens``: your own API tokens in this team. The secret is shown once."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from sandboxes import selectors
from sandboxes.api import serializers as s
from sandboxes.api.errors import ApiError
from sandboxes.api.views.base import TeamView
from sandboxes.models import ApiToken
from sandboxes.services.tokens import create_api_token, revoke_api_token

MAX_ID = 2**63 - 1


class TokenView(TeamView):
    serializer_class = s.TokenSerializer
    #: Viewers manage their own tokens (which can only ever read); read-only tokens cannot.
    viewers_may_write = True

    def get_queryset(self):
        if self.schema_only:
            return ApiToken.objects.none()
        # Ordered to the row, so pages never overlap.
        return selectors.api_tokens(team=self.team, user=self.request.user).order_by(
            "-created_at", "-pk"
        )


class TokenListView(mixins.ListModelMixin, TokenView):
    @extend_schema(
        operation_id="tokens_list",
        summary="Your tokens in this team (revoked and expired ones included)",
    )
    def get(self, request: Request) -> Response:
        return self.list(request)

    @extend_schema(
        operation_id="tokens_create",
        summary="Create a token; the response is the only place its secret is shown",
        request=s.TokenCreateSerializer,
        responses={201: s.TokenCreatedSerializer},
    )
    def post(self, request: Request) -> Response:
        data = self.validated(s.TokenCreateSerializer)
        expires_at = data.get("expires_at")
        if data.get("expires_in_seconds"):
            expires_at = timezone.now() + timedelta(seconds=data["expires_in_seconds"])
        token, secret = create_api_token(
            user=request.user,
            team=self.team,
            actor=self.actor,
            name=data.get("name", ""),
            can_write=data["can_write"],  # a viewer's tokens are read-only whatever this says
            expires_at=expires_at,
        )
        body = {**s.TokenSerializer(token).data, "token": secret}
        return Response(body, status=status.HTTP_201_CREATED)


class TokenDetailView(TokenView):
    def get_token(self, token_id: int) -> ApiToken:
        token = None
        if 0 < token_id <= MAX_ID:  # a larger number cannot be a row (and overflows the DB)
            token = self.get_queryset().select_related("team", "user").filter(pk=token_id).first()
        if token is None:
            raise ApiError(404, "not_found", "you have no such token in this team")
        return token

    @extend_schema(operation_id="tokens_get", summary="One of your tokens (never its secret)")
    def get(self, request: Request, token_id: int) -> Response:
        return Response(s.TokenSerializer(self.get_token(token_id)).data)

    @extend_schema(
        operation_id="tokens_revoke",
        summary="Revoke one of your tokens",
        request=None,
        responses={204: None},
    )
    def delete(self, request: Request, token_id: int) -> Response:
        revoke_api_token(token=self.get_token(token_id), actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)
