"""Template context for every dashboard page: the current team (cached per request)."""

from __future__ import annotations

from django.http import HttpRequest

from sandboxes.current_team import team_context


def team(request: HttpRequest) -> dict:
    return {"team_ctx": team_context(request)}
