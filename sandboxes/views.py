"""The dashboard. Views read through selectors and write through services."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from sandboxes import selectors


@login_required
def home(request: HttpRequest) -> HttpResponse:
    teams = list(selectors.teams_for_user(request.user))
    rows = [(team, list(selectors.sandboxes_for_team(team)[:50])) for team in teams]
    return render(request, "sandboxes/home.html", {"teams": rows})
