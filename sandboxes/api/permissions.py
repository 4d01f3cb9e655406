"""Who may do what: a team member reads; writes need a writing role and a writing token."""

from __future__ import annotations

from rest_framework import permissions
from rest_framework.request import Request

from sandboxes.api.auth import Principal
from sandboxes.api.errors import ApiError


class TeamMember(permissions.BasePermission):
    """Authenticated as a member of a team (every API route but the schema and docs).

    Writes (any method but GET/HEAD/OPTIONS) are refused with 403 for read-only tokens
    (code ``read_only_token``) and for viewers (code ``forbidden``). A view that lets
    viewers manage something of their own sets ``viewers_may_write = True``.
    """

    def has_permission(self, request: Request, view) -> bool:
        principal = request.auth
        if not isinstance(principal, Principal):
            return False  # -> 401 (no credentials) via permission_denied
        if request.method in permissions.SAFE_METHODS:
            return True
        if principal.read_only_token:
            raise ApiError(403, "read_only_token", "this API token is read-only")
        if not principal.can_write and not getattr(view, "viewers_may_write", False):
            raise ApiError(403, "forbidden", "your role in this team (viewer) cannot change things")
        return True
